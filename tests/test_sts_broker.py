"""Credential broker: regional failover, refresh ahead of expiry, one AssumeRole per role."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ParamValidationError

from aws_helpers import REGION_DISABLED_BODY, canned_server, free_port, make_s3_role
from logferry.aws.sts_broker import CredentialBroker, role_session_name
from logferry.errors import InputError, SetupError, TransientError
from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import Forward, LatencyProxy, ProxyRequest, ProxyResponse


def _broker(emulator: Emulator, endpoints: dict[str, str], **kwargs) -> CredentialBroker:
    return CredentialBroker(
        vendor_name="acme-cdn",
        vendor_account_id=emulator.vendor.account_id,
        regions=list(endpoints),
        sts_endpoints=endpoints,
        target=emulator.target,
        vendor_credentials=emulator.vendor.credentials(),
        **kwargs,
    )


def _calls(broker: CredentialBroker) -> int:
    return sum(broker.outcomes.values())


def test_failover_past_dead_and_disabled_regions(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    role = make_s3_role(emulator, unique("role"), bucket, "cust-1")
    dead = f"http://127.0.0.1:{free_port()}"
    with canned_server(403, REGION_DISABLED_BODY) as disabled:
        broker = _broker(
            emulator,
            {"us-east-1": dead, "us-east-2": disabled, "us-west-2": emulator.url},
        )
        creds = broker.credentials(role, "cust-1", customer_id="cust-1")
        frozen = creds.get_frozen_credentials()
        assert frozen.access_key.startswith("ASIA")
        # The credentials work for the customer's bucket.
        clients = broker.clients(role, "cust-1", customer_id="cust-1")
        clients.client("s3", "us-east-1").put_object(Bucket=bucket, Key="x.log", Body=b"a\n")
        assert emulator.client("s3").get_object(Bucket=bucket, Key="x.log")["Body"].read() == b"a\n"

    assert broker.outcomes[("us-east-1", "unreachable")] == 1
    assert broker.outcomes[("us-east-2", "region_disabled")] == 1
    assert broker.outcomes[("us-west-2", "ok")] == 1
    health = broker.region_health()
    assert health["us-east-1"]["healthy"] is False
    assert "RegionDisabledException" in str(health["us-east-2"]["last_error"])
    assert health["us-west-2"]["healthy"] is True
    # Cooling regions go to the back of the line: the next call starts with the healthy one.
    assert broker.region_order()[0] == "us-west-2"


def test_all_regions_down_is_transient_with_every_reason(emulator: Emulator, unique) -> None:
    role = make_s3_role(emulator, unique("role"), unique("bkt"), "cust-1")
    with canned_server(403, REGION_DISABLED_BODY) as disabled:
        broker = _broker(
            emulator, {"us-east-1": f"http://127.0.0.1:{free_port()}", "us-west-1": disabled}
        )
        with pytest.raises(TransientError) as info:
            broker.credentials(role, "cust-1")
    text = str(info.value)
    assert "us-east-1: Unreachable" in text and "us-west-1: RegionDisabledException" in text
    assert "activate STS in us-west-1" in str(info.value.fix)


def test_access_denied_is_not_retried_across_regions(emulator: Emulator, unique) -> None:
    role = make_s3_role(emulator, unique("role"), unique("bkt"), "cust-1")
    broker = _broker(emulator, {"us-east-1": emulator.url, "us-east-2": emulator.url})
    with pytest.raises(SetupError) as info:
        broker.credentials(role, "wrong-id", customer_id="cust-1")
    assert info.value.code == "AccessDenied"
    assert "external ID 'wrong-id'" in str(info.value.fix)
    assert emulator.vendor.account_id in str(info.value.fix)
    assert _calls(broker) == 1
    # A second caller within the negative-cache window does not call STS again.
    with pytest.raises(SetupError):
        broker.credentials(role, "wrong-id", customer_id="cust-1")
    assert _calls(broker) == 1


def test_fifty_concurrent_callers_cause_one_assume_role(emulator: Emulator, unique) -> None:
    role = make_s3_role(emulator, unique("role"), unique("bkt"), "cust-1")
    broker = _broker(emulator, {"us-east-1": emulator.url})
    start = threading.Barrier(50)
    seen: list[object] = []

    def worker() -> None:
        start.wait()
        seen.append(broker.credentials(role, "cust-1", customer_id="cust-1"))

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 50 and len({id(c) for c in seen}) == 1
    assert _calls(broker) == 1
    # The per-role lock lives only while a first AssumeRole is wanted: none is kept after.
    assert broker._key_locks == {}


def test_no_lock_is_kept_per_role_after_success_or_failure(emulator: Emulator, unique) -> None:
    """One entry per role ever seen would grow for as long as the service runs."""
    broker = _broker(emulator, {"us-east-1": emulator.url})
    for n in range(5):
        role = make_s3_role(emulator, unique(f"role{n}"), unique("bkt"), "cust-1")
        broker.credentials(role, "cust-1", customer_id="cust-1")
        with pytest.raises(SetupError):
            broker.credentials(role, "wrong-id", customer_id="cust-1")
    assert broker._key_locks == {}


def test_refresh_ahead_of_expiry_while_clients_keep_working(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    role = make_s3_role(emulator, unique("role"), bucket, "cust-1")
    now = [time.time()]
    broker = _broker(
        emulator, {"us-east-1": emulator.url}, duration_seconds=900, clock=lambda: now[0]
    )
    clients = broker.clients(role, "cust-1", customer_id="cust-1")
    s3 = clients.client("s3", "us-east-1")
    first = broker.credentials(role, "cust-1", customer_id="cust-1")
    key_before = first.get_frozen_credentials().access_key
    s3.put_object(Bucket=bucket, Key="before.log", Body=b"1\n")
    assert _calls(broker) == 1
    now[0] += 300  # well before the refresh windows: no new AssumeRole
    s3.put_object(Bucket=bucket, Key="still.log", Body=b"2\n")
    assert _calls(broker) == 1
    now[0] += 500  # 100 s before expiry: inside the mandatory window → refreshed before use
    s3.put_object(Bucket=bucket, Key="after.log", Body=b"3\n")
    assert _calls(broker) == 2
    assert first.get_frozen_credentials().access_key != key_before
    keys = {o["Key"] for o in emulator.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"before.log", "still.log", "after.log"}


class _ShortExpiry:
    """Proxy middleware: every AssumeRole answer says the key expires `lifetime` s after `now()`.

    STS can grant less than the DurationSeconds asked for (moto honours it, and AWS refuses
    less than 900 s), so the proxy shortens the Expiration, as the chaos suite's 30-s keys do."""

    def __init__(self, now: Callable[[], float], lifetime: float) -> None:
        self.now, self.lifetime, self.issued = now, lifetime, 0

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        answer = await forward()
        if b"Action=AssumeRole" not in request.body or answer.status != 200:
            return answer
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now() + self.lifetime))
        body, n = re.subn(
            rb"<Expiration>[^<]+</Expiration>",
            b"<Expiration>" + stamp.encode() + b"</Expiration>",
            answer.body,
        )
        assert n == 1
        self.issued += 1
        return ProxyResponse(answer.status, answer.headers, body)


def test_refresh_follows_the_expiration_sts_returned(emulator: Emulator, unique) -> None:
    """Asked for an hour, granted 30 s: the windows follow the 30 s, so AssumeRole runs about
    once per three quarters of a lifetime — not before every call (the requested duration's
    15-minute window would cover the whole 30-s life) — and no key is used after it expired."""
    bucket = unique("bkt")
    role = make_s3_role(emulator, unique("role"), bucket, "cust-1")
    now = [float(int(time.time()))]
    lifetime, minutes = 30, 2
    short = _ShortExpiry(lambda: now[0], lifetime)
    proxy = LatencyProxy(emulator.url, middlewares=[short], rewrite_token=emulator.rewrite_token)
    proxy.start()
    try:
        broker = _broker(emulator, {"us-east-1": proxy.url}, clock=lambda: now[0])
        assert broker.duration_seconds == 3600
        creds = broker.credentials(role, "cust-1", customer_id="cust-1")
        s3 = broker.clients(role, "cust-1", customer_id="cust-1").client("s3", "us-east-1")
        expires: dict[str, float] = {}
        for second in range(minutes * 60):  # one signed call per simulated second
            frozen = creds.get_frozen_credentials()
            expires.setdefault(frozen.access_key, now[0] + creds.lifetime)
            assert now[0] < expires[frozen.access_key], "a key was used after it expired"
            if second % 20 == 0:  # the keys really work (every call would be slow here)
                s3.put_object(Bucket=bucket, Key=f"{second}.log", Body=b"x\n")
            now[0] += 1
    finally:
        proxy.stop()
    calls = broker.outcomes[("us-east-1", "ok")]
    assert calls == short.issued == len(expires) == creds.refreshes + 1
    assert creds.lifetime == pytest.approx(lifetime, abs=1)
    # A refresh at most every lifetime - advisory window (3/4 of it), at least one per lifetime.
    assert minutes * 60 / lifetime <= calls <= 1 + math.ceil(minutes * 60 / (lifetime * 3 / 4))
    listed = emulator.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert len(listed) == minutes * 3


def test_expired_token_forces_a_refresh_inside_the_lifetime(emulator: Emulator, unique) -> None:
    """AWS may call a key expired before our clock does (skew, a key cut short): the sink's
    `force_refresh` fetches a new one at once, and later uses keep the new one."""
    role = make_s3_role(emulator, unique("role"), unique("bkt"), "cust-1")
    broker = _broker(emulator, {"us-east-1": emulator.url})
    creds = broker.credentials(role, "cust-1", customer_id="cust-1")
    first = creds.get_frozen_credentials().access_key
    assert not creds.refresh_needed()
    creds.force_refresh()
    second = creds.get_frozen_credentials().access_key
    assert second != first and creds.get_frozen_credentials().access_key == second
    assert _calls(broker) == 2 and creds.refreshes == 1 and not creds.refresh_needed()


def test_identities_keep_their_own_credentials_on_shared_models(emulator: Emulator, unique) -> None:
    """Clients of every identity come from one model session: each must still sign as its own
    role (role A cannot write to B's bucket), and cached clients are reused until released."""
    bucket_a, bucket_b = unique("bkt"), unique("bkt")
    role_a = make_s3_role(emulator, unique("role"), bucket_a, "cust-a")
    role_b = make_s3_role(emulator, unique("role"), bucket_b, "cust-b")
    now = [time.time()]
    broker = _broker(
        emulator, {"us-east-1": emulator.url}, client_idle_seconds=60, clock=lambda: now[0]
    )
    a = broker.clients(role_a, "cust-a", customer_id="cust-a")
    b = broker.clients(role_b, "cust-b", customer_id="cust-b")
    a.client("s3", "us-east-1").put_object(Bucket=bucket_a, Key="a.log", Body=b"a\n")
    b.client("s3", "us-east-1").put_object(Bucket=bucket_b, Key="b.log", Body=b"b\n")
    with pytest.raises(ClientError) as denied:
        a.client("s3", "us-east-1").put_object(Bucket=bucket_b, Key="x.log", Body=b"x\n")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # Delivery clients leave request validation to AWS (the sinks check their own limits);
    # clients for anything else (the CLI, the role check) keep botocore's.
    with pytest.raises(ClientError):  # the service answered: it was sent
        a.client("kinesis", "us-east-1").put_records(StreamName="none", Records=[])
    with pytest.raises(ParamValidationError):  # refused before sending
        emulator.client("kinesis").put_records(StreamName="none", Records=[])
    # Reused while in use; released on demand; expired after the idle time; no new AssumeRole.
    assert broker.clients(role_a, "cust-a", customer_id="cust-a") is a
    assert broker.cached_clients() == 2
    assert broker.release(role_a, "cust-a") == 1
    again = broker.clients(role_a, "cust-a", customer_id="cust-a")
    assert again is not a
    again.client("s3", "us-east-1").put_object(Bucket=bucket_a, Key="a2.log", Body=b"a\n")
    now[0] += 61
    assert broker.cached_clients() == 0
    assert _calls(broker) == 2
    keys = {o["Key"] for o in emulator.client("s3").list_objects_v2(Bucket=bucket_a)["Contents"]}
    assert keys == {"a.log", "a2.log"}


def test_session_name_and_duration_limits() -> None:
    name = role_session_name("acme cdn", "customer/with:odd chars" * 5, "arn:aws:iam::1:role/r")
    assert len(name) <= 64 and name.startswith("acme-cdn-customer-with")
    with pytest.raises(InputError, match="duration_seconds"):
        CredentialBroker(duration_seconds=600)


def test_caller_identity_fails_over_like_assume_role(emulator: Emulator) -> None:
    """The start-up check shares AssumeRole's failover: dead and disabled regions are skipped,
    each attempt carries its fix, and region health follows (delivery then starts healthy)."""
    with canned_server(403, REGION_DISABLED_BODY) as disabled:
        broker = _broker(
            emulator,
            {
                "us-east-1": f"http://127.0.0.1:{free_port()}",
                "us-west-1": disabled,
                "us-west-2": emulator.url,
            },
        )
        identity = broker.caller_identity()
    assert identity.account == emulator.vendor.account_id
    assert identity.region == "us-west-2"
    assert [(a.region, a.outcome) for a in identity.attempts] == [
        ("us-east-1", "unreachable"),
        ("us-west-1", "region_disabled"),
        ("us-west-2", "ok"),
    ]
    assert "activate STS in us-west-1" in str(identity.attempts[1].fix)
    assert broker.region_order()[0] == "us-west-2"


def test_caller_identity_with_bad_vendor_credentials_is_a_setup_error(emulator: Emulator) -> None:
    broker = CredentialBroker(
        regions=["us-east-1", "us-west-2"],
        sts_endpoints={"us-east-1": emulator.url, "us-west-2": emulator.url},
        target=emulator.target,
        vendor_credentials=Credentials("AKIAFAKEFAKEFAKEFAKE", "not-a-secret"),
    )
    with pytest.raises(SetupError) as info:
        broker.caller_identity()
    assert "credentials" in str(info.value.fix)
    assert [a.region for a in info.value.attempts] == ["us-east-1"]  # no failover: not regional
