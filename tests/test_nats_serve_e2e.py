"""Scale-out through real processes (issue 29): nats-server, the emulator, and `logferry serve`
processes with `--role ingest` and `--role deliver` sharing one NATS spool and registry.

What a sender and a customer see must not change with the backend: every 202'd line lands in
S3 exactly once (no open upload left), in Kinesis at least once; a deliver node takes no
ingest; an endpoint created through one node's API is served by the others without a restart;
/readyz says whether NATS is reachable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e_helpers import (
    assert_exactly_once,
    body_of,
    bucket_content,
    ingest,
    make_lines,
    put_customer,
    put_endpoint,
    status,
)
from kinesis_helpers import kinesis_role, lines_of, make_stream, read_stream
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from nats_helpers import nats_node
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import NodeProcess, nats_metric, reap_all, wait_for

pytest_plugins = ["tests.nats_helpers"]

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


def node(*args: Any, **spool: Any) -> NodeProcess:
    """A NATS node whose lines may be up to 2 MiB (the 1.2 MB-line cases)."""
    return nats_node(*args, server={"max_line_bytes": "2MiB"}, **spool)


def s3_body(bucket: str, role_arn: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket_name": bucket,
        "iam_role": role_arn,
        "path": "logs/",
        "period": 3600,
        "file_max_bytes": MIB,
        **fields,
    }


def wait_endpoint(serve: NodeProcess, customer: str, name: str) -> None:
    """The registry watch brought the endpoint to this node."""
    with serve.admin() as admin:
        wait_for(
            lambda: admin.get(f"/v1/customers/{customer}/endpoints/{name}").status_code == 200,
            timeout=30,
        )


def wait_bucket(emulator: Emulator, bucket: str, lines: int, timeout: float = 120) -> None:
    wait_for(
        lambda: sum(bucket_content(emulator, bucket, "logs/").lines.values()) >= lines,
        timeout=timeout,
    )


def test_ingest_and_deliver_nodes_deliver_every_line_to_s3_and_kinesis(
    emulator: Emulator, nats_server: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    prefix = "E" + unique("x")[-8:].upper()
    deliver = node(emulator, nats_server, tmp_path, "deliver-1", "deliver", prefix).start()
    ingester = node(emulator, nats_server, tmp_path, "ingest-1", "ingest", prefix).start()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    stream = make_stream(emulator, unique("stream"))
    kinesis_arn = kinesis_role(emulator, unique("krole"), stream, customer)
    with ingester.admin() as admin:
        put_customer(admin, customer)
        r = put_endpoint(admin, customer, "s3", s3_body(role.bucket, role.role_arn))
        assert r.status_code == 201, r.text
        r = put_endpoint(
            admin,
            customer,
            "kin",
            {
                "type": "kinesis",
                "topic": stream.name,
                "region": stream.region,
                "iam_role": kinesis_arn,
            },
        )
        assert r.status_code == 201, r.text
    wait_endpoint(deliver, customer, "s3")
    wait_endpoint(deliver, customer, "kin")
    # both nodes answer /readyz; each says its role
    assert httpx.get(f"{deliver.url}/readyz").json() == {"status": "ready", "role": "deliver"}
    assert httpx.get(f"{ingester.url}/readyz").json() == {"status": "ready", "role": "ingest"}

    sent: list[bytes] = []
    kin_sent: list[bytes] = []
    with ingester.admin() as admin:
        # a request over two files, lines longer than a NATS message (1 MiB - headroom:
        # continuation fragments), small requests
        for i, (count, size) in enumerate([(30_000, 80), (3, 1_200_000), *[(50, 120)] * 20]):
            lines = make_lines(f"s3-{i}", count, size)
            assert ingest(admin, customer, "s3", body_of(lines)) == count
            sent += lines
        for i in range(5):
            lines = make_lines(f"kin-{i}", 200, 100)
            assert ingest(admin, customer, "kin", body_of(lines)) == 200
            kin_sent += lines
    with deliver.admin() as admin:
        refused = admin.post(f"/v1/ingest/{customer}/s3", content=b"x\n")
        assert refused.status_code == 503, refused.text
        assert "--role deliver" in refused.text and refused.headers["Retry-After"]

    wait_bucket(emulator, role.bucket, len(sent))
    with deliver.admin() as admin:
        done = wait_for(
            lambda: (s := status(admin, customer, "s3"))["lines"]["pending"] == 0 and s,
            timeout=60,
        )
        assert done["lines"]["delivered"] == len(sent)
    found = bucket_content(emulator, role.bucket, "logs/")
    assert_exactly_once(found.lines, sent)
    assert pending_uploads(emulator, role.bucket) == []

    def kinesis_lines() -> list[bytes]:
        return lines_of(read_stream(emulator, stream))

    wait_for(lambda: set(kinesis_lines()) >= set(kin_sent), timeout=60)
    got = kinesis_lines()
    assert set(got) == set(kin_sent)
    assert len(got) == len(kin_sent)  # no crash here, so no duplicate either

    # metrics per node
    with deliver.admin() as admin:
        text = admin.get("/metrics").text
    assert "logferry_nats_owned_endpoints 2.0" in text
    assert "logferry_nats_connected 1.0" in text
    assert deliver.terminate() == 0
    assert ingester.terminate() == 0


def test_registry_changes_reach_every_node_without_a_restart(
    emulator: Emulator, nats_server: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    prefix = "R" + unique("x")[-8:].upper()
    a = node(emulator, nats_server, tmp_path, "node-a", "ingest", prefix).start()
    b = node(emulator, nats_server, tmp_path, "node-b", "ingest", prefix).start()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    with a.admin() as admin:
        put_customer(admin, customer)
        assert put_endpoint(admin, customer, "s3", s3_body(role.bucket, role.role_arn)).is_success
        token = admin.post(f"/v1/customers/{customer}/tokens").json()["token"]
    wait_endpoint(b, customer, "s3")
    with b.as_token(token) as sender:
        wait_for(
            lambda: sender.post(f"/v1/ingest/{customer}/s3", content=b"hello\n").status_code == 202,
            timeout=30,
        )
    # the external ID is bound once for the whole cluster
    with b.admin() as admin:
        taken = admin.put(f"/v1/customers/{unique('other')}", json={"external_id": customer})
        assert taken.status_code == 409, taken.text
    # revoke on b: a stops taking the token; delete on b: a stops serving the endpoint
    with b.admin() as admin:
        token_id = token.split("_")[1]
        assert admin.delete(f"/v1/customers/{customer}/tokens/{token_id}").status_code == 204
    with a.as_token(token) as sender:
        wait_for(
            lambda: sender.post(f"/v1/ingest/{customer}/s3", content=b"x\n").status_code == 401,
            timeout=30,
        )
    with b.admin() as admin:
        assert admin.delete(f"/v1/customers/{customer}/endpoints/s3").status_code == 204
    with a.admin() as admin:
        wait_for(
            lambda: admin.get(f"/v1/customers/{customer}/endpoints/s3").status_code == 404,
            timeout=30,
        )


@pytest.mark.slow
def test_a_delivery_node_wakes_for_lines_ingested_elsewhere_after_its_worker_idled(
    emulator: Emulator, nats_server: NatsCluster, tmp_path: Path, unique: Any
) -> None:
    """A worker exits after 30 s without data (service.worker.IDLE_EXIT_SECONDS); locally the
    next ingest wakes it, here the lines arrive through another process: the delivery node
    must notice them by itself."""
    prefix = "W" + unique("x")[-8:].upper()
    deliver = node(emulator, nats_server, tmp_path, "deliver-1", "deliver", prefix).start()
    ingester = node(emulator, nats_server, tmp_path, "ingest-1", "ingest", prefix).start()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    with ingester.admin() as admin:
        put_customer(admin, customer)
        assert put_endpoint(admin, customer, "s3", s3_body(role.bucket, role.role_arn)).is_success
    wait_endpoint(deliver, customer, "s3")
    with ingester.admin() as admin:
        first = make_lines("first", 100)
        assert ingest(admin, customer, "s3", body_of(first)) == 100
        wait_bucket(emulator, role.bucket, 100)
        time.sleep(40)  # the worker has exited idle by now
        # ...and the endpoint parked (idle_follow_seconds = 30): no consumer on its stream.
        wait_for(lambda: nats_metric(deliver, "parked_endpoints") == 1.0, timeout=30)
        woken = nats_metric(deliver, "parked_wakeups_total")
        second = make_lines("second", 100)
        assert ingest(admin, customer, "s3", body_of(second)) == 100
    wait_bucket(emulator, role.bucket, 200, timeout=60)
    assert nats_metric(deliver, "parked_wakeups_total") > woken  # by the ingest node's lines
    assert_exactly_once(bucket_content(emulator, role.bucket, "logs/").lines, first + second)

    # Parked again, then kill -9 of the delivery node; lines come in while it is down (one
    # line, and a 4 MiB request: several NATS messages); its next life (same node_id) starts
    # from the KV cursor, finds them on the subject and follows: every line once.
    wait_for(lambda: nats_metric(deliver, "parked_endpoints") == 1.0, timeout=90)
    deliver.kill9()
    third = make_lines("third", 1) + make_lines("third-big", 16_000, size=260)
    with ingester.admin() as admin:
        assert ingest(admin, customer, "s3", body_of(third[:1])) == 1
        assert ingest(admin, customer, "s3", body_of(third[1:])) == len(third) - 1
    deliver.start()
    wait_bucket(emulator, role.bucket, 200 + len(third), timeout=120)
    assert_exactly_once(
        bucket_content(emulator, role.bucket, "logs/").lines, first + second + third
    )
