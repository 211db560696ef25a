"""S3 unavailable for a while (every call answered 503 ServiceUnavailable), then stalled (every
call held, then 503), with 100 ms on every AWS call, under steady load: once S3 is back, the
bucket holds every acknowledged line exactly once."""

from __future__ import annotations

import random
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
from logferry.local.latency_proxy import LinkProfile, ProxyConfig
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ADMIN_TOKEN, ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-outage-customer-token-0123456789"
S3_CALLS = [
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
]


def test_s3_outage_with_slow_calls_loses_and_duplicates_nothing(
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
    tally = Tally("s3-outage-100ms", seed)
    slow = ProxyConfig(services={"default": LinkProfile(delay_ms=100)}, seed=seed)
    outage = rng.uniform(15, 25)
    with gated_proxy(emulator, slow) as (proxy, gate):
        config = proxied_s3_config(
            emulator,
            tmp_path / "spool",
            proxy.url,
            spool_backend,
            customer,
            role,
            period=2,
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN}).start()
        path = f"/v1/ingest/{customer}/s3"
        with Loader(serve, TOKEN, path, ledger, tag="out", rng=rng, lines=500, pause=0.2):
            time.sleep(rng.uniform(1, 3))
            gate.refusing = frozenset(S3_CALLS)
            time.sleep(outage)
            gate.refusing = frozenset()
            gate.pause(S3_CALLS)
            # The worker is backing off after the refusals (up to RETRY_POLICY's cap): the
            # stall starts counting once its first call is actually held.
            deadline = time.monotonic() + 120
            while not gate.held_in_outage and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(rng.uniform(3, 6))
            gate.unpause()
            time.sleep(rng.uniform(1, 3))
        tally.moments[f"S3 down {outage:.0f} s, 100 ms per call"] = 1
        tally.moments["S3 calls refused 503"] = gate.refused
        tally.moments["S3 calls held by the stall"] = gate.held_in_outage
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
    assert ledger.acked and gate.refused > 1 and gate.held_in_outage > 0, tally.line()
    assert (lost, duplicated, foreign, uploads) == (0, 0, 0, []), tally.line()
