"""SIGTERM while a multipart upload has a part in flight: with time to flush, serve completes the
file before it exits; when `shutdown_flush_seconds` runs out first, the next start finishes it.
Either way the bucket ends with every acknowledged line once and no open upload."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import (
    Ledger,
    Loader,
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-sigterm-customer-token-0123456789"


@pytest.mark.parametrize(
    ("held_for", "flush_seconds"), [(1.0, 15.0), (8.0, 3.0)], ids=["flushes", "flush-runs-out"]
)
def test_sigterm_during_a_multipart_upload(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
    held_for: float,
    flush_seconds: float,
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    ledger = Ledger()
    runs_out = held_for > flush_seconds
    tally = Tally(f"s3-sigterm-{'flush-runs-out' if runs_out else 'flushes'}", seed)
    with gated_proxy(emulator) as (proxy, gate):
        config = proxied_s3_config(
            emulator,
            tmp_path / "spool",
            proxy.url,
            spool_backend,
            customer,
            role,
            period=3600,
            file_max_bytes="64MiB",
            server={"shutdown_flush_seconds": flush_seconds},
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN}).start()
        path = f"/v1/ingest/{customer}/s3"
        with Loader(serve, TOKEN, path, ledger, tag="term", rng=rng, lines=500):
            armed = gate.arm(["UploadPart"], "before")
            assert armed.held.wait(60), "no UploadPart within 60 s of steady load"
            time.sleep(rng.uniform(0, 0.5))
            assert serve.process is not None
            serve.process.send_signal(signal.SIGTERM)
            time.sleep(held_for)
            gate.disarm()  # the held part answers 503: serve retries it (if still running)
            try:
                code = serve.process.wait(flush_seconds + 30)
            except subprocess.TimeoutExpired:
                serve.process.kill()
                raise AssertionError("serve did not exit after SIGTERM") from None
        tally.kills, tally.moments["SIGTERM with an UploadPart in flight"] = 1, 1
        if not runs_out:
            # The flush had time (the held part came back after 1 s of 15): serve exits 0 and
            # the open file is complete, no upload left open. README/--help promise no more:
            # lines the sink had not read yet stay spooled for the next start (counted below).
            assert code == 0, serve.logs()[-3000:]
            before = bucket_content(emulator, role.bucket).lines
            lost, duplicated, foreign = compare(before, ledger)
            assert (duplicated, foreign, pending_uploads(emulator, role.bucket)) == (0, 0, [])
            tally.moments["acknowledged lines left spooled at exit"] = lost
        serve.start()
        wait_pending_zero(serve, customer, "s3", timeout=180)
        texts = outputs_of(serve, [(customer, "s3")])
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    lost, duplicated, foreign = compare(found, ledger)
    uploads = pending_uploads(emulator, role.bucket)
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated, tally.open_uploads = lost, duplicated, len(uploads)
    write_tally(tally)
    texts["answers"] = "\n".join(ledger.bodies)
    assert_no_secrets(emulator, gate, texts, {"admin token": ADMIN_TOKEN, "customer token": TOKEN})
    assert ledger.acked
    assert (lost, duplicated, foreign, uploads) == (0, 0, 0, []), tally.line()
