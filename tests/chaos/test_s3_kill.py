"""S3: kill -9 at seeded moments across ingest, PutObject, the multipart family and the spool
commit that follows a reply; then the bucket holds every acknowledged line exactly once."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import (
    Ledger,
    Loader,
    OpGate,
    Tally,
    assert_no_secrets,
    compare,
    gated_proxy,
    outputs_of,
    proxied_s3_config,
    write_tally,
)
from e2e_helpers import bucket_content, wait_pending_zero
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ADMIN_TOKEN, ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KILLS = 20
"""Named kill moments per run (issue 30 asks for at least 20)."""
SPARE = 6
"""Extra rounds for moments the load did not reach in time (killed anyway, not counted)."""
NOT_REACHED = "armed moment not reached (random kill)"
TOKEN = "chaos-s3-customer-token-0123456789"
MOMENTS: list[tuple[str, str]] = [
    ("ingest", "random"),
    ("PutObject", "before"),
    ("PutObject", "after"),
    ("PutObject", "replied"),
    ("CreateMultipartUpload", "before"),
    ("CreateMultipartUpload", "after"),
    ("UploadPart", "before"),
    ("UploadPart", "after"),
    ("UploadPart", "replied"),
    ("CompleteMultipartUpload", "before"),
    ("CompleteMultipartUpload", "after"),
    ("CompleteMultipartUpload", "replied"),
]
"""(operation, phase). before: the request never reached S3; after: S3 did it, the reply is
lost; replied: serve got the reply and dies while journaling / committing the spool."""

MULTIPART = {"burst": (1, 1), "pause": 0.0}
"""Steady load: files reach `file_max_bytes` (12 MiB: one 8 MiB part, then the rest)."""
SMALL = {"burst": (1, 8), "pause": 1.2}
"""Short bursts with pauses: the idle flush closes small files with one PutObject."""
LOAD: dict[str, dict[str, Any]] = {
    "ingest": {"burst": (1, 20), "pause": 0.5},
    "PutObject": SMALL,
    "CreateMultipartUpload": MULTIPART,
    "UploadPart": MULTIPART,
    "CompleteMultipartUpload": MULTIPART,
}


def kill_at(
    serve: ServeProcess, gate: OpGate, rng: random.Random, op: str, phase: str
) -> tuple[str, bool]:
    """Kill serve at (`op`, `phase`); the moment actually hit, and whether a
    CreateMultipartUpload may have been in flight (its upload ID may never have reached serve)."""
    if op == "ingest":
        armed = None
        time.sleep(rng.uniform(0.2, 2.5))
    else:
        armed = gate.arm([op], "after" if phase == "replied" else phase)
        if not armed.held.wait(15):
            gate.disarm()
            armed = None
        elif phase == "replied":
            gate.disarm()
            time.sleep(rng.uniform(0, 0.03))
    creating = gate.snapshot()["CreateMultipartUpload"] > 0 or gate.recently_finished(
        "CreateMultipartUpload", 1.0
    )
    serve.kill9()
    gate.disarm()
    hit = f"{op}:{phase}" if op == "ingest" or armed is not None else NOT_REACHED
    return hit, creating


def test_kill9_at_seeded_moments_loses_and_duplicates_nothing(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    ledger = Ledger()
    tally = Tally("s3-kill9", seed)
    with gated_proxy(emulator) as (proxy, gate):
        config = proxied_s3_config(
            emulator,
            tmp_path / "spool",
            proxy.url,
            spool_backend,
            customer,
            role,
            period=3600,
            file_max_bytes="12MiB",
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN})
        plan = [MOMENTS[i % len(MOMENTS)] for i in range(KILLS + SPARE)]
        rng.shuffle(plan)
        creating_kills = 0
        for op, phase in plan:
            if tally.kills - tally.moments[NOT_REACHED] >= KILLS:
                break
            began = time.monotonic()
            serve.start()
            ready = time.monotonic() - began
            with Loader(
                serve,
                TOKEN,
                f"/v1/ingest/{customer}/s3",
                ledger,
                tag="s3",
                rng=rng,
                lines=500,
                **LOAD[op],
            ):
                hit, creating = kill_at(serve, gate, rng, op, phase)
            tally.kills += 1
            took = time.monotonic() - began
            print(f"round {tally.kills}: {hit} ready {ready:.1f}s total {took:.1f}s")
            tally.moments[hit] += 1
            creating_kills += creating
        serve.start()
        wait_pending_zero(serve, customer, "s3", timeout=180)
        texts = outputs_of(serve, [(customer, "s3")])
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    lost, duplicated, foreign = compare(found, ledger)
    uploads = pending_uploads(emulator, role.bucket)
    s3 = emulator.client("s3")
    holding = [
        u
        for u in uploads
        if s3.list_parts(Bucket=role.bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
    ]
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated, tally.open_uploads = lost, duplicated, len(uploads)
    write_tally(tally)
    texts["answers"] = "\n".join(ledger.bodies)
    assert_no_secrets(emulator, gate, texts, {"admin token": ADMIN_TOKEN, "customer token": TOKEN})
    assert ledger.acked and tally.kills - tally.moments[NOT_REACHED] >= KILLS, tally.line()
    assert (lost, duplicated, foreign) == (0, 0, 0), tally.line()
    assert not holding, f"open uploads holding parts: {holding}"
    # README "S3 files": the one upload the guide's policy cannot close is an empty one whose
    # CreateMultipartUpload was in flight at a kill (its ID never reached serve).
    assert len(uploads) <= creating_kills, (uploads, creating_kills)
    assert Counter(found) == Counter({line: 1 for line in found})
