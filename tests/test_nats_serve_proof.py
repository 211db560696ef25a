"""Issue 29's must-shows 5, 7 and 8 through real `logferry serve` processes on the NATS
backend, and two defects fixed with them (a transient JetStream publish answer ended as 503; a
registry write while NATS is down answered 500 after 10 s).

Every case asserts outcomes a sender or a customer sees: status codes, lines in the bucket by
content (exactly once), records in KV, S3 responses counted per delivery node by a recording
proxy. Timing is printed, never asserted (figures: docs/scale-out.md, bench/).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import nats.js.errors
import pytest

from e2e_helpers import (
    assert_exactly_once,
    body_of,
    bucket_content,
    decode_key,
    make_lines,
)
from kinesis_helpers import kinesis_role, lines_of, make_stream, read_stream
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from logferry.spool.nats.publish import publish_refusal
from logferry.spool.nats.wire import H_ID
from nats_helpers import (  # noqa: F401 - nats_server is a fixture
    MIB,
    KvRecorder,
    Poster,
    Sender,
    nats_node,
    nats_server,
    owner_of,
    proxied_nats_node,
    put_more_endpoint,
    recording_proxy,
    s3_endpoint,
    send,
    wait_delivered,
    wait_endpoint,
)
from nats_spool_helpers import backend, settings
from s3_helpers import make_s3_role, pending_uploads, read_objects
from service_helpers import NodeProcess, nats_owned, reap_all, wait_for


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


# -- defect a: a transient publish answer is retried with the same Nats-Msg-Id --------------


def test_a_publish_answered_10158_is_retried_with_the_same_id_and_stored_once(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The sequence a leader change produces: the first try reaches the stream but its ack
    is lost (timeout), the retry is answered 10158 "duplicate message id is in process" (the
    first try is still in the Raft log), the next gets the duplicate ack. Before the fix the
    10158 (HTTP 409, below 500) ended the append: 503 to a sender whose line was stored."""

    async def run() -> None:
        s = settings(nats_server, shards=1)
        async with backend(s, "n1", tmp_path, deliver=False) as b:
            spool = await asyncio.to_thread(b.provider.open, "k")
            real_publish = b.js.publish
            tries: list[str] = []

            async def flaky(subject: str, payload: bytes, **kw: Any) -> Any:
                tries.append(kw["headers"][H_ID])
                if len(tries) == 1:
                    await real_publish(subject, payload, **kw)
                    raise nats.errors.TimeoutError
                if len(tries) in (2, 3):
                    raise nats.js.errors.APIError(
                        code=409, err_code=10158, description="duplicate message id is in process"
                    )
                return await real_publish(subject, payload, **kw)

            b.js.publish = flaky  # type: ignore[method-assign]
            await spool.append(b"once\n", 1)
            assert len(tries) == 4 and len(set(tries)) == 1, tries
            info = await asyncio.wrap_future(b.run(b.js.stream_info(spool.stream)))
            assert info.state.messages == 1  # the retries were dropped as duplicates

    asyncio.run(run())


@pytest.mark.parametrize(
    ("code", "err_code", "description", "verdict"),
    [
        (409, 10158, "duplicate message id is in process", None),
        (429, 10167, "too many requests", None),
        (503, 10008, "JetStream system temporarily unavailable", None),
        (500, 10009, "JetStream cluster can not handle request", None),
        (503, 10077, "store is closed", None),
        (503, 10077, "maximum bytes exceeded", "full"),
        (400, 10054, "message size exceeds maximum allowed", "refused"),
        (404, 10059, "stream not found", "refused"),
        (400, 10201, "atomic publish batch contains duplicate message id", "stored"),
        (400, 10176, "atomic publish batch is incomplete", None),
    ],
)
def test_publish_answers_are_classified_by_what_a_retry_can_change(
    code: int, err_code: int, description: str, verdict: str | None
) -> None:
    exc = nats.js.errors.APIError(code=code, err_code=err_code, description=description)
    assert publish_refusal(exc) == verdict


# -- defect b: a registry write while NATS is down answers 503 + Retry-After at once ------


def test_a_registry_write_while_nats_is_down_answers_503_with_retry_after(
    emulator: Emulator, tmp_path: Path, unique: Any
) -> None:
    """Before the fix the write waited CALL_TIMEOUT (10 s) for a connection that was not
    there, then answered 500 (no handler for RegistryUnavailable). Now: 503, Retry-After, an
    error body naming NATS and the fix, nothing written; the same call succeeds once NATS is
    back."""
    cluster = NatsCluster(tmp_path / "nats", nodes=1).start()
    try:
        serve = nats_node(emulator, cluster, tmp_path, "all-1", "all", "RD").start()
        customer = unique("cust")
        role = make_s3_role(emulator, unique, external_id=customer)
        endpoint = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
        other = unique("cust")
        with serve.admin() as admin:
            r = admin.put(f"/v1/customers/{customer}", json={"external_id": customer})
            assert r.status_code == 201, r.text
            cluster.kill(cluster.nodes[0])
            wait_for(lambda: httpx.get(f"{serve.url}/readyz").status_code == 503, timeout=30)
            answers = []
            for method, path, body in (
                ("PUT", f"/v1/customers/{other}", None),
                ("PUT", f"/v1/customers/{customer}/endpoints/s3?verify=false", endpoint),
                ("POST", f"/v1/customers/{customer}/tokens", None),
            ):
                began = time.monotonic()
                r = admin.request(method, path, json=body, timeout=60)
                answers.append((path, r.status_code, round(time.monotonic() - began, 2)))
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert int(r.headers["Retry-After"]) >= 1
                problem = r.json()
                assert "NATS" in problem["error"] and problem["fix"], problem
                assert problem["retry_after"] == int(r.headers["Retry-After"])
            print(f"registry writes while NATS is down (path, status, seconds): {answers}")
            cluster.start_node(cluster.nodes[0])
            wait_for(lambda: httpx.get(f"{serve.url}/readyz").status_code == 200, timeout=60)
            r = wait_for(
                lambda: (
                    r if (r := admin.put(f"/v1/customers/{other}")).status_code != 503 else None
                ),
                timeout=60,
            )
            assert r.status_code == 201, r.text  # nothing was half-written while down
            r = admin.put(f"/v1/customers/{customer}/endpoints/s3?verify=false", json=endpoint)
            assert r.status_code == 201, r.text
            lines = make_lines("back", 100)
            r = admin.post(f"/v1/ingest/{customer}/s3", content=body_of(lines))
            assert r.status_code == 202, r.text
            want = set(lines)
            wait_for(lambda: want <= set(bucket_content(emulator, role.bucket).lines), timeout=120)
        assert serve.terminate() == 0
    finally:
        cluster.stop()


# -- must-show 5: a paused owner (SIGSTOP past its lease, then SIGCONT) -------------------


@pytest.mark.slow
def test_a_paused_owner_writes_nothing_to_s3_or_kv_after_it_resumes(
    emulator: Emulator,
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
    unique: Any,
) -> None:
    """The owner is paused with a multipart upload open, its lease runs out, the other node
    takes over and goes on; then the paused node resumes. Each delivery node's AWS traffic goes
    through its own recording proxy, and the test watches the endpoint's KV record.

    From SIGCONT until the new owner releases the endpoint back to it (rendezvous hashing
    prefers it again once its heartbeat is back: a legitimate, fenced handover with a new
    epoch), the resumed node's S3 writes that succeed must be none; no record write in the
    stale epoch may follow the takeover; every acknowledged line is in the bucket once."""
    prefix = "PA" + unique("x")[-6:].upper()
    ingester = nats_node(emulator, nats_server, tmp_path, "ingest-1", "ingest", prefix).start()
    with recording_proxy(emulator) as (p1, log1), recording_proxy(emulator) as (p2, log2):
        d1 = proxied_nats_node(
            emulator, nats_server, tmp_path, "deliver-1", "deliver", prefix, p1.url
        ).start()
        d2 = proxied_nats_node(
            emulator, nats_server, tmp_path, "deliver-2", "deliver", prefix, p2.url
        ).start()
        calls = {id(d1): log1, id(d2): log2}
        names = {id(d1): "deliver-1", id(d2): "deliver-2"}
        customer = unique("cust")
        role = make_s3_role(emulator, unique, external_id=customer)
        # 32 MiB files: 8 MiB parts, an upload open for a while
        s3_endpoint(ingester, customer, role.bucket, role.role_arn, file_max_bytes=32 * MIB)
        wait_endpoint(d1, customer)
        wait_endpoint(d2, customer)
        owner, other = owner_of(d1, d2)
        owner_id, other_id = names[id(owner)], names[id(other)]
        with KvRecorder(nats_server.urls, f"{prefix}_endpoints") as kv:
            sent = send(ingester, customer, "first", 20, 10_000)  # ~20 MiB: parts, no file yet
            wait_for(lambda: pending_uploads(emulator, role.bucket), timeout=120)
            stale = [e for e in kv.snapshot() if e.doc and e.doc["owner"] == owner_id][-1]
            os.kill(owner.pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                wait_for(lambda: nats_owned(other) == 1, timeout=120)
                took = time.monotonic() - paused
                sent += send(ingester, customer, "while-paused", 5, 10_000)
                # the new owner delivers while the old one is still stopped
                wait_for(
                    lambda: any(c.status < 300 for c in calls[id(other)].writes(paused)),
                    timeout=120,
                )
            finally:
                os.kill(owner.pid, signal.SIGCONT)
            resumed = time.monotonic()
            sent += send(ingester, customer, "after", 5, 10_000)
            wait_delivered(emulator, role.bucket, sent, timeout=300)
            wait_for(lambda: pending_uploads(emulator, role.bucket) == [], timeout=120)
            entries = kv.snapshot()
        takeover = next(
            e
            for e in entries
            if e.doc and e.doc["owner"] == other_id and e.doc["epoch"] > stale.doc["epoch"]
        )
        # the stale window ends when the new owner hands the endpoint back (owner "")
        handed_back = next(
            (
                e.seen
                for e in entries
                if e.seen > resumed and e.doc is not None and e.doc["owner"] != other_id
            ),
            float("inf"),
        )
        stale_calls = calls[id(owner)].writes(resumed, handed_back)
        succeeded = [c for c in stale_calls if 200 <= c.status < 300]
        print(
            f"paused owner {owner_id}: takeover by {other_id} {took:.1f} s after SIGSTOP; "
            f"S3 writes it attempted between SIGCONT and the handover: "
            f"{[(c.op, c.status) for c in stale_calls]}; handover "
            f"{handed_back - resumed:.1f} s after SIGCONT"
        )
        assert succeeded == [], succeeded
        after_takeover = [e for e in entries if e.revision > takeover.revision and e.doc]
        stale_writes = [e for e in after_takeover if e.doc["epoch"] <= stale.doc["epoch"]]
        assert stale_writes == [], stale_writes  # every later write is a newer epoch's
        assert "lease may have expired" in owner.all_logs()  # it gave up by its own clock
        found = bucket_content(emulator, role.bucket, "logs/")
        assert_exactly_once(found.lines, sent)
        for node in (d1, d2, ingester):
            assert node.terminate() == 0


# -- must-show 8: everything killed, NATS restarted node by node; a 16 MiB request ---------

KINESIS_IN_FLIGHT = 1
KINESIS_DUP_BOUND = 2 * KINESIS_IN_FLIGHT * 500
"""docs/reliability.md: Kinesis duplicates after a kill ≤ 2 × max_in_flight_calls × 500."""


def sixteen_mib_body() -> bytes:
    """Exactly 16 MiB (server.max_body_bytes' default) of ASCII lines, two of them over
    1 MiB (NATS max_payload: they travel as continuation fragments)."""
    rng = random.Random(29)

    def line(size: int) -> bytes:
        return rng.randbytes(size // 2).hex().encode()[: size - 1] + b"\n"

    parts = [line(1_600_000)]
    parts += [line(1000) for _ in range(6000)]
    parts.append(line(1_300_000))
    parts += [line(1000) for _ in range(6000)]
    used = sum(map(len, parts))
    parts.append(line(16 * MIB - used))
    body = b"".join(parts)
    assert len(body) == 16 * MIB and body.endswith(b"\n")
    return body


def test_a_16_mib_request_with_lines_over_1_mib_arrives_byte_identical(
    emulator: Emulator,
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
    unique: Any,
) -> None:
    prefix = "BG" + unique("x")[-6:].upper()
    ingester = nats_node(
        emulator,
        nats_server,
        tmp_path,
        "ingest-1",
        "ingest",
        prefix,
        server={"max_line_bytes": "2MiB"},
    ).start()
    deliver = nats_node(emulator, nats_server, tmp_path, "deliver-1", "deliver", prefix).start()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    s3_endpoint(ingester, customer, role.bucket, role.role_arn, file_max_bytes=64 * MIB)
    wait_endpoint(deliver, customer)
    body = sixteen_mib_body()
    with ingester.admin() as admin:
        r = admin.post(f"/v1/ingest/{customer}/s3", content=body, timeout=300)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == body.count(b"\n")
    wait_for(lambda: read_objects(emulator, role.bucket, "logs/"), timeout=300)
    wait_for(lambda: pending_uploads(emulator, role.bucket) == [], timeout=120)
    objects = read_objects(emulator, role.bucket, "logs/")
    assert len(objects) == 1, sorted(objects)
    [(key, obj)] = objects.items()
    assert decode_key(key, obj.body) == body  # byte for byte, fragments joined
    assert deliver.terminate() == 0
    assert ingester.terminate() == 0


@pytest.mark.slow
def test_everything_killed_then_nats_restarted_node_by_node_resumes_from_the_kv_cursors(
    emulator: Emulator, tmp_path: Path, unique: Any
) -> None:
    """kill -9 of every serve process under load, then of all three NATS servers; NATS
    restarted one node at a time (each waited for), then the serve processes. Delivery goes on
    from the KV cursors: every 202'd S3 line exactly once; Kinesis, where every line was
    delivered before the kill, gets at most the documented bound of duplicates (a restart from
    the start of the subject would deliver all of them again)."""
    cluster = NatsCluster(tmp_path / "nats", nodes=3).start()
    try:
        prefix = "KA" + unique("x")[-6:].upper()

        def make(name: str, role_: str) -> NodeProcess:
            return nats_node(emulator, cluster, tmp_path, name, role_, prefix, replicas=3)

        ingester = make("ingest-1", "ingest").start()
        d1 = make("deliver-1", "deliver").start()
        d2 = make("deliver-2", "deliver").start()
        customer = unique("cust")
        role = make_s3_role(emulator, unique, external_id=customer)
        stream = make_stream(emulator, unique("stream"))
        kinesis_arn = kinesis_role(emulator, unique("krole"), stream, customer)
        s3_endpoint(ingester, customer, role.bucket, role.role_arn, file_max_bytes=4 * MIB)
        put_more_endpoint(
            ingester,
            customer,
            "kin",
            {
                "type": "kinesis",
                "topic": stream.name,
                "region": stream.region,
                "iam_role": kinesis_arn,
                "max_in_flight_calls": KINESIS_IN_FLIGHT,
            },
        )
        for serve in (d1, d2):
            wait_endpoint(serve, customer)
        kin_sent: list[bytes] = []
        with ingester.admin() as admin:
            for i in range(10):
                lines = make_lines(f"kin-{i}", 500, 100)
                r = admin.post(f"/v1/ingest/{customer}/kin", content=body_of(lines))
                assert r.status_code == 202, r.text
                kin_sent += lines

        def kinesis_lines() -> list[bytes]:
            return lines_of(read_stream(emulator, stream))

        wait_for(lambda: set(kinesis_lines()) >= set(kin_sent), timeout=180)
        with Sender(ingester, customer, "s3") as sender:
            wait_for(lambda: len(sender.acked) >= 20_000, timeout=180)
            wait_for(lambda: bucket_content(emulator, role.bucket, "logs/").lines, timeout=120)
            for serve in (ingester, d1, d2):
                serve.kill9()
        for node in cluster.nodes:
            cluster.kill(node)
        delivered_at_kill = sum(bucket_content(emulator, role.bucket, "logs/").lines.values())
        began = time.monotonic()
        for node in cluster.nodes:  # one at a time, each up before the next
            cluster.start_node(node, wait=True, timeout=60)
        nats_up = time.monotonic() - began
        for serve in (ingester, d1, d2):
            serve.start()
        ready = time.monotonic() - began
        acked = list(sender.acked)
        acked += send(ingester, customer, "after", 5, 2_000)
        wait_delivered(emulator, role.bucket, acked, timeout=300)
        wait_for(lambda: pending_uploads(emulator, role.bucket) == [], timeout=120)
        print(
            f"kill-all: {len(sender.acked)} S3 lines 202'd before the kill, "
            f"{delivered_at_kill} in the bucket at the kill; NATS back node by node in "
            f"{nats_up:.1f} s, serve nodes ready {ready:.1f} s after the first NATS start"
        )
        found = bucket_content(emulator, role.bucket, "logs/").lines
        assert all(found[line] == 1 for line in acked)  # nothing acknowledged lost or doubled
        assert set(found) <= set(sender.sent) | set(acked)  # a cut request: at most once
        assert max(found.values()) == 1
        got = kinesis_lines()
        duplicates = len(got) - len(set(got))
        print(f"Kinesis after the kill-all: {duplicates} duplicates (bound {KINESIS_DUP_BOUND})")
        assert set(got) == set(kin_sent)
        assert duplicates <= KINESIS_DUP_BOUND
        for serve in (ingester, d1, d2):
            assert serve.terminate() == 0
    finally:
        cluster.stop()


# -- must-show 7: one tenant floods with its role denied; the others are unaffected --------

FLOOD_QUOTA = 2 * MIB


@pytest.mark.slow
def test_a_tenant_flooding_with_its_role_denied_gets_429_alone(
    emulator: Emulator,
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
    unique: Any,
) -> None:
    """NATS backend, two ingest nodes and a delivery node in separate processes. Flooder A's
    role trusts another external ID (AssumeRole denied), so its backlog only grows. Each ingest
    node counts A's quota as the backlog the owner last published in the endpoint record plus
    what it appended itself since, so A gets 202 up to its quota, then 429 + Retry-After on
    both nodes, and all A's 202s together stay within INGEST_NODES x quota (the documented
    bound of the lag: a node does not see the other's appends until the owner publishes).
    B and C, sending meanwhile, get only 202 and every line of theirs lands once. (Their
    latency is a figure: bench/noisy_neighbour_nats.py, docs/scale-out.md.)"""
    prefix = "NN" + unique("x")[-6:].upper()
    ingesters = [
        nats_node(emulator, nats_server, tmp_path, f"ingest-{i}", "ingest", prefix).start()
        for i in (1, 2)
    ]
    deliver = nats_node(emulator, nats_server, tmp_path, "deliver-1", "deliver", prefix).start()
    flooder, quiet = unique("flood"), [unique("quiet"), unique("quiet")]
    denied = make_s3_role(emulator, unique, external_id="someone-else")
    s3_endpoint(ingesters[0], flooder, denied.bucket, denied.role_arn)
    with ingesters[0].admin() as admin:
        r = admin.put(f"/v1/customers/{flooder}", json={"spool_max_bytes": FLOOD_QUOTA})
        assert r.status_code == 200, r.text
    roles = {}
    for customer in quiet:
        roles[customer] = make_s3_role(emulator, unique, external_id=customer)
        s3_endpoint(ingesters[0], customer, roles[customer].bucket, roles[customer].role_arn)
    for serve in (*ingesters, deliver):
        for customer in (flooder, *quiet):
            wait_endpoint(serve, customer)

    def quota_on(serve: NodeProcess) -> int | None:
        with serve.admin() as admin:
            return admin.get(f"/v1/customers/{flooder}").json()["spool_max_bytes"]

    wait_for(lambda: all(quota_on(serve) == FLOOD_QUOTA for serve in ingesters), timeout=30)
    stop = threading.Event()
    floods = [Poster(serve, flooder, 2_500, 0.0, stop=stop) for serve in ingesters]  # 250 KB
    others = [
        Poster(ingesters[i % 2], customer, 100, 0.1, stop=stop) for i, customer in enumerate(quiet)
    ]
    for poster in (*floods, *others):
        poster.thread.start()
    try:
        for a in floods:
            wait_for(lambda a=a: sum(s == 429 for s, _ in a.answers) >= 20, timeout=180)
        wait_for(lambda: all(len(p.answers) >= 50 for p in others), timeout=180)
    finally:
        stop.set()
        for poster in (*floods, *others):
            poster.thread.join(90)
    request = len(body_of(make_lines("x", 2_500, 100)))
    accepted = sum(a.acked_bytes for a in floods)
    print(
        f"flooder on {len(floods)} ingest nodes: {accepted} bytes 202'd in all (quota "
        f"{FLOOD_QUOTA}, one request {request}); per node "
        f"{[(a.bytes_before_first_429, Counter(s for s, _ in a.answers)) for a in floods]}"
    )
    for a in floods:
        assert a.statuses() == {202, 429}, Counter(s for s, _ in a.answers)
        assert all(int(retry or 0) >= 1 for s, retry in a.answers if s == 429)
    assert accepted <= len(floods) * (FLOOD_QUOTA + request)
    for poster in others:
        assert poster.statuses() == {202}, Counter(s for s, _ in poster.answers)
    for poster in others:
        bucket = roles[poster.customer].bucket
        wait_delivered(emulator, bucket, poster.acked, timeout=120)
        assert_exactly_once(bucket_content(emulator, bucket, "logs/").lines, poster.acked)
    assert deliver.terminate() == 0
    for serve in ingesters:
        assert serve.terminate() == 0
