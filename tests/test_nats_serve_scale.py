"""Issue 29, must-show 1 through real processes: 3 NATS nodes (replicas 3), 2 ingest and 2
delivery `logferry serve` processes, 50 endpoints (S3 and Kinesis) of 5 customers.

Every acknowledged line is delivered: S3 exactly once per endpoint, no upload left open;
Kinesis every line (no process dies here, so no duplicate either). Both delivery nodes own a
share of the endpoints, and the two ingest nodes take requests for every endpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from e2e_helpers import assert_exactly_once, body_of, bucket_content, make_lines, put_customer
from e2e_helpers import put_endpoint as put_endpoint_
from kinesis_helpers import kinesis_role, lines_of, make_stream, read_stream
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import (
    NodeProcess,
    base_config,
    nats_owned,
    nats_spool,
    reap_all,
    wait_for,
)

pytest_plugins = ["tests.nats_helpers"]

CUSTOMERS = 5
S3_EACH = 5
KINESIS_EACH = 5
MAX_IN_FLIGHT_RECORDS = 2 * 500
"""PutRecords calls a Kinesis endpoint keeps in flight x records per call: the duplicate bound."""
LINES_EACH = 1000  # per endpoint, in 2 requests (one to each ingest node)


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


@pytest.mark.slow
def test_two_ingest_and_two_delivery_nodes_deliver_50_endpoints(
    emulator: Emulator, nats_cluster3: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    prefix = "SC" + unique("x")[-6:].upper()

    def node(name: str, role: str) -> NodeProcess:
        config = base_config(
            emulator,
            tmp_path / name / "spool",
            server={"idle_flush_seconds": 1},
            spool=nats_spool(nats_cluster3.urls, prefix, name, replicas=3, shards=4),
        )
        return NodeProcess(emulator, config, tmp_path / name, role)

    nodes = [
        node("ingest-a", "ingest"),
        node("ingest-b", "ingest"),
        node("deliver-a", "deliver"),
        node("deliver-b", "deliver"),
    ]
    for n in nodes:
        n.spawn()
    for n in nodes:
        n.wait_ready()
    ingest_a, ingest_b, deliver_a, deliver_b = nodes
    customers: list[dict[str, Any]] = []
    with ingest_a.admin() as admin:
        for _ in range(CUSTOMERS):
            customer = unique("cust")
            role = make_s3_role(emulator, unique, external_id=customer)
            stream = make_stream(emulator, unique("stream"))
            krole = kinesis_role(emulator, unique("krole"), stream, customer)
            put_customer(admin, customer)
            for j in range(S3_EACH):
                body = {
                    "type": "s3",
                    "bucket_name": role.bucket,
                    "iam_role": role.role_arn,
                    "path": f"e{j}/",
                    "period": 3600,
                }
                assert put_endpoint_(admin, customer, f"s3-{j}", body).status_code == 201
            for j in range(KINESIS_EACH):
                body = {
                    "type": "kinesis",
                    "topic": stream.name,
                    "region": stream.region,
                    "iam_role": krole,
                }
                assert put_endpoint_(admin, customer, f"kin-{j}", body).status_code == 201
            customers.append({"id": customer, "bucket": role.bucket, "stream": stream})
    endpoints = CUSTOMERS * (S3_EACH + KINESIS_EACH)
    settled: list[tuple[float, float]] = []

    def shares_settled() -> bool:  # both own some, every endpoint once, the same for 3 polls
        settled.append((nats_owned(deliver_a), nats_owned(deliver_b)))
        last = settled[-3:]
        return len(last) == 3 and len(set(last)) == 1 and sum(last[0]) == endpoints

    wait_for(shares_settled, timeout=90, interval=1.0)

    sent: dict[tuple[str, str], list[bytes]] = {}

    def post(job: tuple[NodeProcess, str, str, int]) -> None:
        serve, customer, name, half = job
        lines = make_lines(f"{customer}-{name}-{half}", LINES_EACH // 2, 90)
        with serve.admin() as admin:
            r = admin.post(f"/v1/ingest/{customer}/{name}", content=body_of(lines), timeout=60)
        assert r.status_code == 202, r.text
        sent.setdefault((customer, name), []).extend(lines)

    jobs = [
        (serve, c["id"], name, half)
        for c in customers
        for name in [f"s3-{j}" for j in range(S3_EACH)] + [f"kin-{j}" for j in range(KINESIS_EACH)]
        for half, serve in enumerate((ingest_a, ingest_b))
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, jobs))

    for c in customers:
        for j in range(S3_EACH):
            want = sent[(c["id"], f"s3-{j}")]
            wait_for(
                lambda c=c, j=j, want=want: (
                    sum(bucket_content(emulator, c["bucket"], f"e{j}/").lines.values()) >= len(want)
                ),
                timeout=180,
            )
            assert_exactly_once(bucket_content(emulator, c["bucket"], f"e{j}/").lines, want)
        wait_for(lambda c=c: pending_uploads(emulator, c["bucket"]) == [], timeout=60)
        kin_sent = [line for j in range(KINESIS_EACH) for line in sent[(c["id"], f"kin-{j}")]]
        wait_for(
            lambda c=c, kin_sent=kin_sent: (
                set(lines_of(read_stream(emulator, c["stream"]))) >= set(kin_sent)
            ),
            timeout=180,
        )
        got = Counter(lines_of(read_stream(emulator, c["stream"])))
        assert set(got) == set(kin_sent)
        # at least once: a replay after an ownership move re-sends at most the calls that were
        # in flight (2 PutRecords of up to 500 records per endpoint), never more
        duplicates = sum(got.values()) - len(kin_sent)
        assert duplicates <= KINESIS_EACH * MAX_IN_FLIGHT_RECORDS, duplicates
        print(f"{c['id']}: {duplicates} Kinesis duplicates")
    # The split is still one owner per endpoint and both nodes own some. Polled until stable:
    # under CPU starvation a lease may lapse and move (fenced by CAS, as the exactly-once
    # checks above show) and the loser's gauge trails the new owner's for a moment.
    settled.clear()
    wait_for(shares_settled, timeout=90, interval=1.0)
    assert min(settled[-1]) > 0, settled[-1]
    for n in nodes:
        assert n.terminate() == 0
