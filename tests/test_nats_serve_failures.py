"""Scale-out failures through real processes (issue 29): NATS down, an ingest node killed -9
under load, a delivery node killed -9 (3 NATS nodes for the kills).

Each case asserts what a sender and a customer rely on: a 202 only with a quorum ack (503 +
Retry-After and /readyz false while NATS is unreachable, 202 again once it is back), and every
acknowledged line in the bucket exactly once whichever process died.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e_helpers import assert_exactly_once, body_of, bucket_content, make_lines, wait_pending_zero
from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import Forward, LatencyProxy, ProxyRequest, ProxyResponse
from logferry.local.nats_cluster import NatsCluster
from nats_helpers import (
    Sender,
    nats_node,
    owner_of,
    proxied_nats_node,
    recording_proxy,
    s3_endpoint,
    s3_operation,
    send,
    wait_delivered,
    wait_endpoint,
)
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import (
    NodeProcess,
    nats_owned,
    reap_all,
    wait_for,
)

pytest_plugins = ["tests.nats_helpers"]

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


node = nats_node


@pytest.mark.slow  # kill -9 / restart: CI runs it; `make test-fast` stays under 5 min
def test_nats_down_means_503_and_not_ready_then_202_again(
    emulator: Emulator, tmp_path: Path, unique: Any
) -> None:
    nats = NatsCluster(tmp_path / "nats", nodes=1).start()
    try:
        serve = node(emulator, nats, tmp_path, "all-1", "all", "DOWN").start()
        customer = unique("cust")
        role = make_s3_role(emulator, unique, external_id=customer)
        s3_endpoint(serve, customer, role.bucket, role.role_arn)
        acked: list[bytes] = []
        with serve.admin() as admin:
            first = make_lines("before", 1000)
            r = admin.post(f"/v1/ingest/{customer}/s3", content=body_of(first))
            assert r.status_code == 202, r.text
            acked += first
            # steady state first; this also proves an endpoint made through this node's own API
            # reaches its ownership (it once did not: only the watch told the backend)
            wait_for(lambda: nats_owned(serve) == 1, timeout=30)
            nats.kill(nats.nodes[0])
            wait_for(lambda: httpx.get(f"{serve.url}/readyz").status_code == 503, timeout=30)
            assert httpx.get(f"{serve.url}/readyz").json()["status"] == "nats_unreachable"
            refused = admin.post(f"/v1/ingest/{customer}/s3", content=b"while-down\n")
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            nats.start_node(nats.nodes[0])
            wait_for(lambda: httpx.get(f"{serve.url}/readyz").status_code == 200, timeout=60)
            after = make_lines("after", 1000)
            wait_for(
                lambda: (
                    admin.post(f"/v1/ingest/{customer}/s3", content=body_of(after)).status_code
                    == 202
                ),
                timeout=60,
            )
            acked += after
        wait_delivered(emulator, role.bucket, acked, timeout=120)
        found = bucket_content(emulator, role.bucket, "logs/").lines
        assert b"while-down" not in found
        # "after" may have been retried by wait_for: each try that got its 202 counts once
        assert all(found[line] == 1 for line in first)
        assert serve.terminate() == 0
    finally:
        nats.stop()


@pytest.mark.slow
def test_an_ingest_node_killed_under_load_loses_no_acknowledged_line(
    emulator: Emulator, nats_cluster3: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    prefix = "KI" + unique("x")[-6:].upper()
    deliver = node(emulator, nats_cluster3, tmp_path, "deliver-1", "deliver", prefix, replicas=3)
    deliver.start()
    a = node(emulator, nats_cluster3, tmp_path, "ingest-a", "ingest", prefix, replicas=3).start()
    b = node(emulator, nats_cluster3, tmp_path, "ingest-b", "ingest", prefix, replicas=3).start()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    s3_endpoint(a, customer, role.bucket, role.role_arn)
    wait_endpoint(b, customer)
    wait_endpoint(deliver, customer)
    with Sender(a, customer, "a") as on_a, Sender(b, customer, "b") as on_b:
        wait_for(lambda: len(on_a.acked) >= 20_000, timeout=120)
        a.kill9()
        at_kill = len(on_b.acked)
        wait_for(lambda: on_a.answers and on_a.answers[-1] == 0, timeout=30)
        wait_for(lambda: len(on_b.acked) >= at_kill + 10_000, timeout=120)  # b goes on
    acked = on_a.acked + on_b.acked
    assert on_b.acked and 202 in on_a.answers
    wait_delivered(emulator, role.bucket, acked, timeout=240)
    found = bucket_content(emulator, role.bucket, "logs/").lines
    # nothing acknowledged lost, nothing doubled; lines of the request cut by the kill may
    # or may not be there (never acknowledged), each at most once
    assert all(found[line] == 1 for line in acked)
    assert set(found) <= set(on_a.sent + on_b.sent)
    assert max(found.values()) == 1
    assert pending_uploads(emulator, role.bucket) == []
    assert deliver.terminate() == 0


@pytest.mark.slow
def test_a_delivery_node_killed_mid_upload_is_taken_over_without_loss_or_duplicate(
    emulator: Emulator, nats_cluster3: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    prefix = "KD" + unique("x")[-6:].upper()
    spool = {"replicas": 3}
    ingester = node(emulator, nats_cluster3, tmp_path, "ingest-1", "ingest", prefix, **spool)
    ingester.start()
    d1 = node(emulator, nats_cluster3, tmp_path, "deliver-1", "deliver", prefix, **spool).start()
    d2 = node(emulator, nats_cluster3, tmp_path, "deliver-2", "deliver", prefix, **spool).start()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    # 32 MiB files: each is a multipart upload of 8 MiB parts, open for a while
    s3_endpoint(ingester, customer, role.bucket, role.role_arn, file_max_bytes=32 * MIB)
    wait_endpoint(d1, customer)
    wait_endpoint(d2, customer)
    owner, other = wait_for(
        lambda: (d1, d2) if nats_owned(d1) == 1 else (d2, d1) if nats_owned(d2) == 1 else None,
        timeout=30,
    )
    sent: list[bytes] = []
    with ingester.admin() as admin:
        for i in range(20):  # ~20 MiB: parts uploaded, the file not yet complete
            lines = make_lines(f"first-{i}", 10_000, 100)
            r = admin.post(f"/v1/ingest/{customer}/s3", content=body_of(lines))
            assert r.status_code == 202, r.text
            sent += lines
    # Mid upload: a data file's upload with a part in it (not the write probe's, which is
    # the first upload listed and is aborted a round trip later).
    wait_for(lambda: uploads_with_parts(emulator, role.bucket), timeout=60)
    owner.kill9()
    killed = time.monotonic()
    wait_for(lambda: nats_owned(other) == 1, timeout=60)
    print(f"takeover after kill -9 of the owner: {time.monotonic() - killed:.1f} s")
    with ingester.admin() as admin:
        for i in range(5):
            lines = make_lines(f"second-{i}", 10_000, 100)
            r = admin.post(f"/v1/ingest/{customer}/s3", content=body_of(lines))
            assert r.status_code == 202, r.text
            sent += lines
    wait_delivered(emulator, role.bucket, sent, timeout=240)
    found = bucket_content(emulator, role.bucket, "logs/")
    assert_exactly_once(found.lines, sent)
    wait_for(lambda: pending_uploads(emulator, role.bucket) == [], timeout=60)
    assert other.terminate() == 0
    assert ingester.terminate() == 0


@pytest.mark.slow
def test_a_node_killed_right_after_its_write_probe_does_not_probe_again(
    emulator: Emulator, nats_server: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    """The worker's write probe (CreateMultipartUpload, then Abort) is proven once per
    endpoint setting and day, and the proof is saved at once: a node killed in the seconds
    after its probe does not probe again in its next life. Each probe is an upload that a
    kill during its Create round trip leaves open, so a crash loop must not multiply them."""
    prefix = "PR" + unique("x")[-6:].upper()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    sent: list[bytes] = []
    with recording_proxy(emulator) as (proxy, calls):
        serve = proxied_nats_node(
            emulator, nats_server, tmp_path, "all-1", "all", prefix, proxy.url
        )
        serve.start()
        s3_endpoint(serve, customer, role.bucket, role.role_arn)  # no role check: the worker probes
        wait_endpoint(serve, customer)

        def aborts() -> int:
            return sum(1 for c in calls.writes(0) if c.op == "AbortMultipartUpload")

        for life in ("first", "second"):
            with serve.admin() as admin:
                lines = make_lines(life, 100, 100)
                r = admin.post(f"/v1/ingest/{customer}/s3", content=body_of(lines))
                assert r.status_code == 202, r.text
                sent += lines
            if life == "first":
                wait_for(lambda: aborts() == 1, timeout=60)  # the probe is done
                serve.kill9()  # well within the stats batch (2 s)
                serve.start()
        wait_delivered(emulator, role.bucket, sent, timeout=120)
        assert aborts() == 1, [c.op for c in calls.calls]
        assert pending_uploads(emulator, role.bucket) == []
        assert serve.terminate() == 0


@pytest.mark.slow
def test_the_node_taking_an_endpoint_over_does_not_probe_it_again(
    emulator: Emulator, nats_server: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    """The owner's write probe proves the endpoint's settings for a day, and the proof is in
    the endpoint's KV record: the node that takes it over after a kill -9 does not probe again
    (two calls to the customer's account, and one more chance of an upload left open)."""
    prefix = "TP" + unique("x")[-6:].upper()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    ingester = nats_node(emulator, nats_server, tmp_path, "ingest-1", "ingest", prefix).start()
    with recording_proxy(emulator) as (p1, log1), recording_proxy(emulator) as (p2, log2):
        d1 = proxied_nats_node(emulator, nats_server, tmp_path, "d-1", "deliver", prefix, p1.url)
        d2 = proxied_nats_node(emulator, nats_server, tmp_path, "d-2", "deliver", prefix, p2.url)
        d1.start()
        d2.start()
        calls = {id(d1): log1, id(d2): log2}
        s3_endpoint(ingester, customer, role.bucket, role.role_arn)  # no role check at the API
        wait_endpoint(d1, customer)
        wait_endpoint(d2, customer)
        owner, other = owner_of(d1, d2)

        def probes(node: NodeProcess) -> int:
            return sum(1 for c in calls[id(node)].writes(0) if c.op == "AbortMultipartUpload")

        sent = send(ingester, customer, "first", 1, 100)
        wait_delivered(emulator, role.bucket, sent, timeout=120)
        assert probes(owner) == 1
        owner.kill9()
        wait_for(lambda: nats_owned(other) == 1, timeout=60)
        sent += send(ingester, customer, "second", 1, 100)
        wait_delivered(emulator, role.bucket, sent, timeout=120)
        assert probes(other) == 0, [c.op for c in calls[id(other)].calls]
        assert other.terminate() == 0
    assert ingester.terminate() == 0


class RefuseCompletions:
    """Proxy middleware: CompleteMultipartUpload answered 503 (not forwarded) while armed."""

    def __init__(self) -> None:
        self.armed = True
        self.refused = 0

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        if self.armed and s3_operation(request) == "CompleteMultipartUpload":
            self.refused += 1
            body = b"<Error><Code>ServiceUnavailable</Code><Message>refused</Message></Error>"
            return ProxyResponse(503, {"Content-Type": "application/xml"}, body)
        return await forward()


@pytest.mark.slow
def test_an_upload_left_completing_with_no_line_after_it_is_completed_by_the_next_life(
    emulator: Emulator, nats_server: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    """Every part of a file is uploaded and journaled, so the spool has released its lines,
    and the owner dies before CompleteMultipartUpload succeeds. No line follows. The next owner
    has nothing to read, yet it must complete the upload: those lines exist nowhere else."""
    prefix = "CO" + unique("x")[-6:].upper()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    refuse = RefuseCompletions()
    proxy = LatencyProxy(emulator.url, None, [refuse], rewrite_token=emulator.rewrite_token)
    proxy.start()
    try:
        serve = proxied_nats_node(
            emulator, nats_server, tmp_path, "all-1", "all", prefix, proxy.url
        ).start()
        # stored gzip (level 0): ~10 MiB is an upload of an 8 MiB part, and the idle flush
        # (1 s) closes the file with a last part of ~2 MiB and its completion
        s3_endpoint(
            serve, customer, role.bucket, role.role_arn, file_max_bytes=32 * MIB, gzip_level=0
        )
        wait_endpoint(serve, customer)
        sent = send(serve, customer, "c", 10, 10_000)
        wait_for(lambda: refuse.refused >= 2, timeout=120)
        # every line is in a journaled part: the spool has released them all
        wait_pending_zero(serve, customer, "s3", timeout=120, stall=120)
        assert not bucket_content(emulator, role.bucket, "logs/").lines
        serve.kill9()
        refuse.armed = False
        serve.start()
        wait_delivered(emulator, role.bucket, sent, timeout=120)
        found = bucket_content(emulator, role.bucket, "logs/")
        assert_exactly_once(found.lines, sent)
        wait_for(lambda: pending_uploads(emulator, role.bucket) == [], timeout=60)
        assert serve.terminate() == 0
    finally:
        proxy.stop()


def uploads_with_parts(emulator: Emulator, bucket: str) -> list[str]:
    """Keys of the open data uploads (not write probes) holding at least one part."""
    s3 = emulator.client("s3")
    return [
        u["Key"]
        for u in pending_uploads(emulator, bucket)
        if ".logferry-healthcheck-" not in u["Key"]
        and s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
    ]


class TimedSender(Sender):
    """A Sender that also keeps (time, status) of every answer, for the 503 window."""

    def __init__(self, serve: NodeProcess, customer: str, tag: str) -> None:
        super().__init__(serve, customer, tag)
        self.timeline: list[tuple[float, int]] = []
        self.durations: list[tuple[float, float]] = []

    def slowest_after(self, since: float) -> float:
        """The longest answer to a request sent within 10 s after `since` (an append waits
        for the new leader instead of failing when the election is quick)."""
        return max((d for t, d in self.durations if since - 1 <= t <= since + 10), default=0.0)

    def _run(self) -> None:
        with self.serve.admin() as client:
            i = 0
            while not self.stop.is_set():
                lines = make_lines(f"{self.tag}-{i}", 200, 100)
                i += 1
                self.sent += lines
                began = time.monotonic()
                try:
                    r = client.post(
                        f"/v1/ingest/{self.customer}/s3", content=body_of(lines), timeout=30
                    )
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                self.timeline.append((time.monotonic(), status))
                self.durations.append((began, time.monotonic() - began))
                self.answers.append(status)
                if status == 202:
                    self.acked += lines
                else:
                    time.sleep(0.1)

    def refused_window(self, since: float) -> float:
        """Seconds from the first answer other than 202 after `since` to the next 202."""
        start = next((t for t, s in self.timeline if t >= since and s != 202), None)
        if start is None:
            return 0.0
        end = next((t for t, s in self.timeline if t > start and s == 202), None)
        return (end or self.timeline[-1][0]) - start


@pytest.mark.slow
def test_killing_the_stream_leader_then_the_kv_leader_loses_nothing_acknowledged(
    emulator: Emulator, tmp_path: Path, unique: Any
) -> None:
    nats = NatsCluster(tmp_path / "nats", nodes=3).start()
    try:
        prefix = "LK" + unique("x")[-6:].upper()
        spool = {"replicas": 3, "shards": 1}
        ingester = node(emulator, nats, tmp_path, "ingest-1", "ingest", prefix, **spool).start()
        deliver = node(emulator, nats, tmp_path, "deliver-1", "deliver", prefix, **spool).start()
        customer = unique("cust")
        role = make_s3_role(emulator, unique, external_id=customer)
        s3_endpoint(ingester, customer, role.bucket, role.role_arn)
        wait_endpoint(deliver, customer)
        windows = {}
        with TimedSender(ingester, customer, "lk") as sender:
            for what, stream in (("stream", f"{prefix}_00"), ("kv", f"KV_{prefix}_endpoints")):
                wait_for(lambda: len(sender.acked) >= 4000, timeout=60)
                leader = wait_for(lambda stream=stream: nats.stream_leader(stream), timeout=30)
                killed = time.monotonic()
                nats.kill(leader)
                at_kill = len(sender.acked)
                wait_for(lambda at_kill=at_kill: len(sender.acked) > at_kill + 2000, timeout=120)
                windows[what] = {
                    "refused_s": round(sender.refused_window(killed), 2),
                    "slowest_202_s": round(sender.slowest_after(killed), 2),
                }
                nats.start_node(leader)
                sender.acked, sender.sent = list(sender.acked), list(sender.sent)
        print(f"503 window after kill -9 of the leader: {windows}")
        acked = sender.acked
        wait_delivered(emulator, role.bucket, acked, timeout=240)
        found = bucket_content(emulator, role.bucket, "logs/").lines
        assert all(found[line] == 1 for line in acked)  # nothing acknowledged lost or doubled
        assert set(found) <= set(sender.sent)
        assert set(sender.answers) <= {202, 503, 0}, Counter(sender.answers)
        assert deliver.terminate() == 0
    finally:
        nats.stop()
