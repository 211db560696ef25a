"""The spool on a small tmpfs that fills up while S3 is down: ingest answers 429/507 (never 500),
nothing acknowledged is lost, and ingest recovers once delivery frees the space."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chaos.backends import LOCAL_SPOOL_ONLY
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
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-diskfull-customer-token-0123456789"
S3_CALLS = ["PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"]
BACKPRESSURE = {429, 507}


@LOCAL_SPOOL_ONLY
@pytest.mark.parametrize("filled_by", ["ingest", "neighbour"])
def test_full_spool_disk_pushes_back_and_recovers(
    filled_by: str,
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    small_disk: Path,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    ledger = Ledger()
    tally = Tally(f"spool-disk-full-by-{filled_by}", seed)
    with gated_proxy(emulator) as (proxy, gate):
        config = base_config(
            emulator,
            small_disk / "spool",
            vendor={"sts_endpoints": {"us-east-1": proxy.url, "us-west-2": proxy.url}},
            aws={"endpoint_url": proxy.url},
            server={"idle_flush_seconds": 1},
            # The limit is far above the disk: the disk itself runs out (ENOSPC), not the quota.
            spool={"max_bytes": "1GiB", "segment_bytes": "4MiB", **spool_backend},
            customers=chaos_s3_customers(customer, role, period=3600),
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN}).start()
        gate.pause(S3_CALLS)  # S3 down: nothing leaves the spool
        filler = fill(small_disk, 3 * 1024 * 1024) if filled_by == "neighbour" else None
        statuses: Counter[int] = Counter()
        path = f"/v1/ingest/{customer}/s3"
        with serve.as_token(TOKEN) as client:
            # Fill the disk: ~40 MiB offered to a 24 MiB filesystem.
            for _ in range(200):
                lines = ledger.batch("full", 1000, 200)
                r = client.post(path, content=b"\n".join(lines) + b"\n")
                statuses[r.status_code] += 1
                if r.status_code == 202:
                    ledger.acked.extend(lines)
                else:
                    ledger.unsure.update(lines)
                    ledger.bodies.append(r.text)
                if sum(n for code, n in statuses.items() if code != 202) >= 5:
                    break
            refused = {code: n for code, n in statuses.items() if code != 202}
            tally.moments.update({f"HTTP {code}": n for code, n in statuses.items()})
            assert refused, f"the 24 MiB disk never filled: {statuses}"
            assert set(refused) <= BACKPRESSURE, (statuses, ledger.bodies[-1][:500])
            gate.unpause()  # S3 is back: delivery frees the spool
            if filler is not None:
                filler.unlink()  # and the neighbour gives its space back
            after: list[int] = []

            def accepted_again() -> bool:
                lines = ledger.batch("back", 1000, 200)
                r = client.post(path, content=b"\n".join(lines) + b"\n")
                after.append(r.status_code)
                if r.status_code == 202:
                    ledger.acked.extend(lines)
                    return True
                ledger.unsure.update(lines)
                assert r.status_code in BACKPRESSURE, (r.status_code, r.text[:500])
                return False

            wait_until(accepted_again, 120, "ingest accepted again once S3 came back", 1.0)
        wait_pending_zero(serve, customer, "s3", timeout=180)
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    lost, duplicated, foreign = compare(found, ledger)
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated = lost, duplicated
    tally.open_uploads = len(pending_uploads(emulator, role.bucket))
    write_tally(tally)
    assert (lost, duplicated, foreign, tally.open_uploads) == (0, 0, 0, 0), tally.line()
