"""NATS backend: the JetStream store fills up while S3 is down (issue 30, the NATS analogue of
`test_disk_full.py`).

Two ways to be full:
- `stream-max-bytes`: the endpoint's stream reaches its `max_bytes` (spool.max_bytes / shards,
  `discard=new`): JetStream refuses the publish, serve answers 429/507 + Retry-After;
- `server-disk`: the NATS node's store is on a 24 MiB tmpfs (root only; skipped elsewhere,
  naming why) and another writer fills that filesystem: the server cannot write the message
  (ENOSPC), sends no ack, and serve answers 503 + Retry-After once `append_timeout_seconds` runs
  out. nats-server 2.15 keeps a block's write error: the stream stays unwritable after the
  neighbour frees its space (180 s seen) until nats-server is restarted, which is the
  operator's recovery here (docs/reliability.md).
Either way: never a 500, nothing acknowledged lost or doubled, and once S3 is back and delivery
commits (purges), ingest takes data again.
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

from chaos.disks import fill
from chaos.harness import (
    Ledger,
    Tally,
    chaos_s3_customers,
    compare,
    gated_proxy,
    wait_until,
    write_tally,
)
from e2e_helpers import bucket_content, wait_pending_zero
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-nats-full-customer-token-0123456789"
S3_CALLS = ["PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"]
REFUSALS = {"stream-max-bytes": {429, 507}, "server-disk": {503}}
"""What ingest may answer once the store is full (each with Retry-After); never 500."""
CAUSE = {"stream-max-bytes": "is full (at its limit of", "server-disk": "no space left on device"}
"""What each refusal names: the stream's limit in its body; a full NATS disk as the fix in
serve's log (a customer's body says only "retry later", the operator's log says why)."""
SPOOL_MAX = {"stream-max-bytes": "8MiB", "server-disk": "12MiB"}
"""Over 2 shards: 4 MiB a stream (the limit that fills), or 6 MiB, which the 24 MiB disk
holds until the neighbour takes it (nats-server reserves a stream's max_bytes against its
store, 75 % of the disk by default, so the disk alone cannot fill a correctly sized stream)."""


@pytest.fixture
def nats_store(request: pytest.FixtureRequest, tmp_path: Path, full: str) -> Iterator[NatsCluster]:
    """One nats-server; for `server-disk` its store (and log) on the 24 MiB tmpfs."""
    base = request.getfixturevalue("small_disk") if full == "server-disk" else tmp_path
    cluster = NatsCluster(base / "nats", nodes=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        log = cluster.base_dir / "n1" / "nats.log"
        if log.exists():  # the tmpfs goes with the test: keep the server's log
            (tmp_path / "nats.log").write_bytes(log.read_bytes())


def restart(cluster: NatsCluster) -> None:
    """SIGTERM and start the one node again, on the same store."""
    node = cluster.nodes[0]
    assert node.process is not None
    node.process.terminate()
    node.process.wait(60)
    cluster.start_node(node)


@pytest.mark.parametrize("full", ["stream-max-bytes", "server-disk"])
def test_full_jetstream_store_pushes_back_and_recovers(
    full: str,
    nats_store: NatsCluster,
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    ledger = Ledger()
    tally = Tally(f"nats-store-full-{full}", seed)
    spool = {
        "backend": "nats",
        "nats_url": nats_store.urls,
        "stream_prefix": f"F{uuid.uuid4().hex[:12].upper()}",
        "shards": 2,
        "replicas": 1,
        "max_bytes": SPOOL_MAX[full],
        "default_customer_share": 1,  # no tenant quota: the store itself must fill
    }
    size = rng.choice([150, 200, 300])
    with gated_proxy(emulator) as (proxy, gate):
        config = base_config(
            emulator,
            tmp_path / "spool",
            vendor={"sts_endpoints": {"us-east-1": proxy.url, "us-west-2": proxy.url}},
            aws={"endpoint_url": proxy.url},
            server={"idle_flush_seconds": 1},
            spool=spool,
            customers=chaos_s3_customers(customer, role, period=3600),
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN}).start()
        gate.pause(S3_CALLS)  # S3 down: nothing leaves the stream
        statuses: Counter[int] = Counter()
        retry_after: set[str] = set()
        path = f"/v1/ingest/{customer}/s3"
        filler = None

        def send(client: httpx.Client, tag: str, count: int) -> int:
            lines = ledger.batch(tag, count, size)
            r = client.post(path, content=b"\n".join(lines) + b"\n", timeout=120)
            statuses[r.status_code] += 1
            if r.status_code == 202:
                ledger.acked.extend(lines)
            else:
                ledger.unsure.update(lines)
                ledger.bodies.append(r.text)
                retry_after.add(r.headers.get("Retry-After", "missing"))
            return r.status_code

        with serve.as_token(TOKEN) as client:
            if full == "server-disk":
                for _ in range(3):  # some acknowledged lines before the disk fills
                    assert send(client, "before", 1000) == 202, ledger.bodies[-1:]
                filler = fill(nats_store.base_dir.parent, 256 * 1024)
            for _ in range(200):
                send(client, "full", 2000 if full == "stream-max-bytes" else 1000)
                if sum(n for code, n in statuses.items() if code != 202) >= 3:
                    break
            refused = {code: n for code, n in statuses.items() if code != 202}
            tally.moments.update({f"HTTP {code}": n for code, n in statuses.items()})
            assert refused, f"the store never filled: {statuses}"
            assert set(refused) <= REFUSALS[full], (statuses, ledger.bodies[-1][:500])
            assert "missing" not in retry_after, (retry_after, ledger.bodies[-1][:500])
            if full == "stream-max-bytes":
                assert all(CAUSE[full] in body for body in ledger.bodies), ledger.bodies
            else:
                assert CAUSE[full] in serve.logs(), serve.logs()[-3000:]
            tally.moments.update({f"Retry-After {v}": 1 for v in retry_after})
            if filler is not None:
                filler.unlink()  # the neighbour gives its space back,
                restart(nats_store)  # and the operator restarts nats-server (module doc)
            gate.unpause()  # S3 is back: delivery commits and purges the subject
            back = time.monotonic()

            def accepted_again() -> bool:
                code = send(client, "back", 1000)
                assert code == 202 or code in REFUSALS[full], (code, ledger.bodies[-1][:500])
                return code == 202

            wait_until(accepted_again, 180, "ingest accepted again once S3 came back", 1.0)
            tally.moments[f"202 again after {time.monotonic() - back:.0f}s"] += 1
        wait_pending_zero(serve, customer, "s3", timeout=180)
        # Status's "0 pending" means delivered: every acknowledged line is in the bucket now
        # (it said 0 for 5 s after a NATS restart while the owner's index caught up).
        acked = set(ledger.acked)
        missing_now = len(acked - set(bucket_content(emulator, role.bucket).lines))
        tally.moments[f"{missing_now} acknowledged lines missing at pending 0"] += 1
        assert missing_now == 0, f"status said 0 pending with {missing_now} lines undelivered"
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    lost, duplicated, foreign = compare(found, ledger)
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated = lost, duplicated
    tally.open_uploads = len(pending_uploads(emulator, role.bucket))
    write_tally(tally)
    assert 500 not in statuses, statuses
    missing = Counter(line.split(b"-")[0].decode() for line in ledger.acked if not found[line])
    assert (lost, duplicated, foreign, tally.open_uploads) == (0, 0, 0, 0), (tally.line(), missing)
