"""NATS backend: no quorum (issue 30). Three nats-servers, the spool's streams and buckets with
3 replicas; two nodes (a seeded pair) are killed -9 under a steady sender.

While a majority is gone, every request sent answers 503 + Retry-After (never a 202, which would
mean an acknowledgement without a quorum, never a 500) and /readyz turns false; once the two
nodes are back, ingest answers 202 again and /readyz true. Every 202'd line lands in the bucket
exactly once.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaos.harness import Ledger, Tally, chaos_s3_customers, compare, wait_until, write_tally
from e2e_helpers import bucket_content, wait_pending_zero
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config, nats_spool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-nats-quorum-customer-token-0123456789"
WHILE_DOWN = 3
"""Requests sent while the majority is gone (each waits up to append_timeout_seconds)."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats = NatsCluster(tmp_path / "nats3", nodes=3).start()
    try:
        yield nats
    finally:
        nats.stop()


def ready(serve: ServeProcess) -> int:
    try:
        return httpx.get(f"{serve.url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_no_quorum_means_503_and_not_ready_then_202_again(
    cluster: NatsCluster,
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    ledger = Ledger()
    tally = Tally("nats-no-quorum", seed)
    prefix = f"Q{uuid.uuid4().hex[:12].upper()}"
    config = base_config(
        emulator,
        tmp_path / "spool",
        server={"idle_flush_seconds": 1},
        spool=nats_spool(cluster.urls, prefix, "all-1", replicas=3),
        customers=chaos_s3_customers(customer, role, period=3600),
    )
    serve = ServeProcess(emulator, config, tmp_path / "serve", env={"CHAOS_TOKEN": TOKEN}).start()
    statuses: Counter[str] = Counter()
    path = f"/v1/ingest/{customer}/s3"

    def send(client: httpx.Client, tag: str) -> httpx.Response:
        lines = ledger.batch(tag, rng.choice([100, 500, 1000]), 200)
        r = client.post(path, content=b"\n".join(lines) + b"\n", timeout=120)
        if r.status_code == 202:
            ledger.acked.extend(lines)
        else:
            ledger.unsure.update(lines)
            ledger.bodies.append(r.text)
        return r

    with serve.as_token(TOKEN) as client:
        for _ in range(rng.randint(5, 15)):
            r = send(client, "before")
            assert r.status_code == 202, r.text
        victims = rng.sample(cluster.nodes, 2)
        tally.moments[f"killed {'+'.join(n.name for n in victims)}"] += 1
        for victim in victims:
            cluster.kill(victim)
        went_down = time.monotonic()
        for _ in range(WHILE_DOWN):
            r = send(client, "down")
            statuses[f"down {r.status_code}"] += 1
            assert r.status_code == 503, (r.status_code, r.text[:500])
            assert int(r.headers["Retry-After"]) >= 1, r.headers
        wait_until(lambda: ready(serve) == 503, 60, "/readyz false without a quorum")
        tally.moments[f"/readyz 503 after {time.monotonic() - went_down:.0f}s"] += 1
        for victim in victims:
            cluster.start_node(victim)
        came_back = time.monotonic()

        def accepted_again() -> bool:
            r = send(client, "back")
            statuses[f"back {r.status_code}"] += 1
            assert r.status_code in (202, 503), (r.status_code, r.text[:500])
            return r.status_code == 202

        wait_until(accepted_again, 120, "ingest accepted again once the quorum was back", 0.5)
        tally.moments[f"202 again after {time.monotonic() - came_back:.0f}s"] += 1
        wait_until(lambda: ready(serve) == 200, 60, "/readyz true again")
        for _ in range(5):
            r = send(client, "after")
            assert r.status_code == 202, r.text
    wait_pending_zero(serve, customer, "s3", timeout=180)
    assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    lost, duplicated, foreign = compare(found, ledger)
    tally.moments.update(statuses)
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated = lost, duplicated
    open_uploads = pending_uploads(emulator, role.bucket)
    tally.open_uploads = len(open_uploads)
    write_tally(tally)
    assert (lost, duplicated, foreign, tally.open_uploads) == (0, 0, 0, 0), (
        tally.line(),
        [u["Key"] for u in open_uploads],
    )
