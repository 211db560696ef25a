"""Clients of different customer roles share their service's ruleset and class, nothing else.

The sharing (logferry.aws.client_sharing) saves memory and CPU per active customer; these tests
pin what must stay per identity: the credentials a call is signed with, the event hooks, and
the endpoint resolver's own settings. Real calls against the emulator with IAM enforcement on.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from logferry.aws import client_sharing
from logferry.aws.clients import AwsClients
from logferry.local.emulator import Emulator
from s3_helpers import S3Role, make_s3_role, role_clients


def two_customers(
    emulator: Emulator, unique: Callable[[str], str]
) -> list[tuple[S3Role, BaseClient]]:
    """Two customer roles (own bucket each) and an S3 client acting as each."""
    roles = [make_s3_role(emulator, unique) for _ in range(2)]
    return [(role, role_clients(emulator, role).client("s3", "us-east-1")) for role in roles]


def test_sharing_is_active_on_the_installed_botocore() -> None:
    AwsClients()  # the model session installs it
    from logferry.aws.clients import model_session

    model_session()
    assert client_sharing.sharing_active()


def test_two_roles_share_ruleset_and_class_but_sign_with_their_own_credentials(
    emulator: Emulator, unique: Callable[[str], str]
) -> None:
    (role_a, s3_a), (role_b, s3_b) = two_customers(emulator, unique)

    assert type(s3_a) is type(s3_b)
    assert s3_a._ruleset_resolver._provider is s3_b._ruleset_resolver._provider
    assert s3_a.meta.service_model is s3_b.meta.service_model
    assert s3_a._request_signer is not s3_b._request_signer
    assert s3_a.meta.events is not s3_b.meta.events

    s3_a.put_object(Bucket=role_a.bucket, Key="a.log", Body=b"a\n")
    s3_b.put_object(Bucket=role_b.bucket, Key="b.log", Body=b"b\n")
    # Each role may write only its own bucket: a call signed with the other's keys is refused.
    with pytest.raises(ClientError) as refused:
        s3_a.put_object(Bucket=role_b.bucket, Key="a-in-b.log", Body=b"x\n")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        s3_b.put_object(Bucket=role_a.bucket, Key="b-in-a.log", Body=b"x\n")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    admin = emulator.client("s3")
    assert [o["Key"] for o in admin.list_objects_v2(Bucket=role_a.bucket)["Contents"]] == ["a.log"]
    assert [o["Key"] for o in admin.list_objects_v2(Bucket=role_b.bucket)["Contents"]] == ["b.log"]


def test_a_hook_on_one_client_never_fires_for_another(
    emulator: Emulator, unique: Callable[[str], str]
) -> None:
    (role_a, s3_a), (role_b, s3_b) = two_customers(emulator, unique)
    seen: list[str] = []
    s3_a.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: seen.append(request.url)
    )
    s3_b.put_object(Bucket=role_b.bucket, Key="b.log", Body=b"b\n")
    assert seen == []
    s3_a.put_object(Bucket=role_a.bucket, Key="a.log", Body=b"a\n")
    assert len(seen) == 1 and role_a.bucket in seen[0]


def test_clients_with_other_endpoint_settings_keep_their_own_resolution(
    emulator: Emulator, unique: Callable[[str], str]
) -> None:
    """The shared provider resolves from each client's own parameters (region, URL)."""
    role = make_s3_role(emulator, unique)
    clients = role_clients(emulator, role)
    east = clients.client("s3", "us-east-1")
    west = clients.client("s3", "us-west-2")
    elsewhere = clients.make_client("s3", "us-east-1", endpoint_url="http://127.0.0.1:9")
    assert east._ruleset_resolver._provider is west._ruleset_resolver._provider
    assert east.meta.region_name == "us-east-1" and west.meta.region_name == "us-west-2"
    assert elsewhere.meta.endpoint_url == "http://127.0.0.1:9"
    assert east.meta.endpoint_url == emulator.url
    west.put_object(Bucket=role.bucket, Key="west.log", Body=b"w\n")  # signed for us-west-2
    got = emulator.client("s3").get_object(Bucket=role.bucket, Key="west.log")["Body"].read()
    assert got == b"w\n"


def test_a_proxy_in_the_environment_is_still_used(
    monkeypatch: pytest.MonkeyPatch, emulator: Emulator
) -> None:
    """Clients skip botocore's per-client environment scan only when no proxy is set: with
    HTTP_PROXY set, the call goes through the proxy (a recording socket here)."""
    import socket
    import threading

    from botocore.config import Config
    from botocore.credentials import Credentials

    from logferry.aws import clients as clients_module
    from logferry.aws.clients import AwsTarget

    seen: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()  # one call: total_max_attempts=1 below
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            seen.append(head)
            conn.sendall(
                b"HTTP/1.1 500 Proxy Says No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=5)
    creds = Credentials("AKIAEXAMPLE", "secret")
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    clients_module._environment_has_proxies.cache_clear()
    try:
        client = AwsClients(creds, AwsTarget(endpoint_url=emulator.url), config=config)
        with pytest.raises(ClientError):
            client.client("s3", "us-east-1").list_buckets()
        thread.join(timeout=10)
        assert seen and seen[0].startswith(f"GET {emulator.url}/ HTTP/1.1".encode()), seen

        monkeypatch.delenv("HTTP_PROXY")
        clients_module._environment_has_proxies.cache_clear()
        direct = AwsClients(creds, AwsTarget(endpoint_url=emulator.url), config=config)
        with pytest.raises(ClientError) as denied:  # the emulator itself answers
            direct.client("s3", "us-east-1").list_buckets()
        assert denied.value.response["Error"]["Code"] != "500", denied.value.response
        assert len(seen) == 1
    finally:
        server.close()
        clients_module._environment_has_proxies.cache_clear()


def test_shared_alias_names_and_user_agent_are_what_botocore_alone_sends(
    emulator: Emulator, unique: Callable[[str], str]
) -> None:
    """The model session shares its event-name alias cache and the User-Agent's static parts
    between clients: a hook registered under an old (aliased) event name still fires, and the
    header a call sends is what a plain botocore session's client sends, apart from the set of
    feature ids (`m/…`), whose order botocore does not fix."""
    import botocore.session

    role_a, role_b = (make_s3_role(emulator, unique) for _ in range(2))
    ours = [role_clients(emulator, role).client("s3", "us-east-1") for role in (role_a, role_b)]
    plain = botocore.session.Session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=emulator.url,
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="secret",
    )
    agents: list[list[bytes]] = []
    aliased: list[str] = []
    for client in (*ours, plain):
        seen: list[bytes] = []
        agents.append(seen)
        client.meta.events.register(
            "before-send.s3.PutObject",
            lambda request, seen=seen, **_: seen.append(request.headers["User-Agent"]),
        )
    # A hook under an old service name ("autoscaling") is registered under botocore's new
    # one, on both of our clients (the second reads the cache the first filled) as on botocore's.
    for client in (*ours, plain):
        client.meta.events.register(
            "before-call.autoscaling.DescribeAutoScalingGroups", lambda **_: None
        )
        aliased.append(
            client.meta.events._alias_event_name(
                "before-call.autoscaling.DescribeAutoScalingGroups"
            )
        )
    for client, role in zip(ours, (role_a, role_b), strict=True):
        client.put_object(Bucket=role.bucket, Key="a.log", Body=b"a\n")
    with pytest.raises(ClientError):  # static keys the emulator does not know
        plain.put_object(Bucket=role_a.bucket, Key="p.log", Body=b"p\n")

    def without_features(agent: bytes) -> list[bytes]:
        return [part for part in agent.split() if not part.startswith(b"m/")]

    assert all(len(seen) >= 1 for seen in agents)
    expected = without_features(agents[2][0])
    assert [without_features(seen[0]) for seen in agents[:2]] == [expected, expected]
    assert aliased == ["before-call.auto-scaling.DescribeAutoScalingGroups"] * 3


def test_every_bucket_resolves_to_its_own_endpoint_past_botocores_cache_size() -> None:
    """The shared provider's resolution cache (larger than botocore's 100 entries): each of
    300 buckets, asked twice in turn, resolves to its own URL (virtual-hosted for AWS, the
    bucket in the path for the vendor's URL), as botocore computes it."""
    from botocore.credentials import Credentials

    from logferry.aws.clients import DELIVERY_CONFIG, AwsTarget

    class Stop(Exception):
        pass

    def clients(url: str | None) -> BaseClient:
        identity = AwsClients(Credentials("AKIAEXAMPLE", "secret"), AwsTarget(endpoint_url=url))
        return identity.make_client("s3", "eu-west-1", config=DELIVERY_CONFIG)

    urls: list[str] = []

    def stop(request: object, **_: object) -> None:
        urls.append(request.url)  # type: ignore[attr-defined]
        raise Stop

    aws, vendor = clients(None), clients("http://127.0.0.1:9")
    for client in (aws, vendor):
        client.meta.events.register("before-send.s3.PutObject", stop)
    buckets = [f"bucket-{i:04d}" for i in range(300)]
    for _ in range(2):
        for bucket in buckets:
            for client in (aws, vendor):
                with pytest.raises(Stop):
                    client.put_object(Bucket=bucket, Key="k.log", Body=b"x\n")
    expected = [
        url
        for bucket in buckets
        for url in (
            f"https://{bucket}.s3.eu-west-1.amazonaws.com/k.log",
            f"http://127.0.0.1:9/{bucket}/k.log",
        )
    ]
    assert urls == expected * 2


def test_a_handler_without_kwargs_is_still_refused_on_every_client() -> None:
    """The emitter checks each handler function's signature once per process: a handler that
    takes no **kwargs is refused on every client (not only the first), a good one accepted."""
    from botocore.credentials import Credentials

    from logferry.aws.clients import AwsTarget

    def no_kwargs(request: object) -> None:
        pass

    def good(**_: object) -> None:
        pass

    for i in range(2):
        identity = AwsClients(Credentials(f"AKIAEXAMPLE{i}", "secret"), AwsTarget())
        client = identity.make_client("s3", "us-east-1")
        with pytest.raises(ValueError, match="must accept keyword"):
            client.meta.events.register("before-send.s3", no_kwargs)
        client.meta.events.register("before-send.s3", good)
