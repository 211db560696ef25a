"""Kill -9 during an STS refresh and during a group commit, with credentials that die every 30 s.

STS moments are named from the wire (the proxy holds an AssumeRole before STS sees it, after STS
issued the key, or lets serve have the key and kills it 0–30 ms later). The group commit is local,
so its moment is chosen by ingest load: four senders post at once and serve is killed, 0–20 ms
later, when every one of them is waiting for its 202 (their lines sit in one group being written
and fsynced). Seeded; then the bucket holds every acknowledged line exactly once."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import (
    Ledger,
    Loader,
    OpGate,
    ShortCredentials,
    Tally,
    assert_no_secrets,
    compare,
    gated_proxy,
    outputs_of,
    proxied_s3_config,
    wait_until,
    write_tally,
)
from e2e_helpers import bucket_content, wait_pending_zero
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ADMIN_TOKEN, ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-refresh-customer-token-0123456789"
SENDERS = 4
MOMENTS = [
    ("AssumeRole", "before"),
    ("AssumeRole", "after"),
    ("AssumeRole", "replied"),
    ("group commit", "load"),
    ("group commit", "load"),
    ("group commit", "load"),
]
"""Six kills a run: every STS moment once, the group commit three times (its moment varies)."""
NOT_REACHED = "armed moment not reached (random kill)"
KEY_LIFETIME = 30.0
"""Seconds each assumed-role key lives (ShortCredentials): the broker refreshes within it."""


def kill_at(
    serve: ServeProcess, gate: OpGate, loader: Loader, rng: random.Random, op: str, phase: str
) -> str:
    """Kill serve at the moment; returns the moment actually hit."""
    hit = f"{op}:{phase}"
    if op == "group commit":
        try:
            wait_until(lambda: loader.in_flight >= SENDERS, 15, "every sender waiting", 0.001)
            time.sleep(rng.uniform(0, 0.02))
        except AssertionError:
            hit = NOT_REACHED
    else:
        armed = gate.arm([op], "after" if phase == "replied" else phase)
        # Keys are refreshed from their real 30 s lifetime (not before every call), and the
        # start's AssumeRole may come before the arm: wait past one whole lifetime.
        if not armed.held.wait(2 * KEY_LIFETIME):
            hit = NOT_REACHED
        elif phase == "replied":
            gate.disarm()
            time.sleep(rng.uniform(0, 0.03))
    serve.kill9()
    gate.disarm()
    return hit


def test_kill9_during_sts_refresh_and_group_commit_loses_nothing(
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
    tally = Tally("kill9-sts-refresh-group-commit", seed)
    short = ShortCredentials(KEY_LIFETIME)
    with gated_proxy(emulator, more=[short]) as (proxy, gate):
        config = proxied_s3_config(
            emulator,
            tmp_path / "spool",
            proxy.url,
            spool_backend,
            customer,
            role,
            period=1,
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN})
        plan = list(MOMENTS)
        rng.shuffle(plan)
        for op, phase in plan:
            serve.start()
            with Loader(
                serve,
                TOKEN,
                f"/v1/ingest/{customer}/s3",
                ledger,
                tag="rc",
                rng=rng,
                threads=SENDERS,
                lines=400,
                size=150,
            ) as loader:
                hit = kill_at(serve, gate, loader, rng, op, phase)
            tally.kills += 1
            tally.moments[hit] += 1
        serve.start()
        wait_pending_zero(serve, customer, "s3", timeout=180)
        texts = outputs_of(serve, [(customer, "s3")])
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    lost, duplicated, foreign = compare(found, ledger)
    uploads = pending_uploads(emulator, role.bucket)
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated, tally.open_uploads = lost, duplicated, len(uploads)
    tally.moments["keys issued"] = short.issued
    write_tally(tally)
    texts["answers"] = "\n".join(ledger.bodies)
    assert_no_secrets(emulator, gate, texts, {"admin token": ADMIN_TOKEN, "customer token": TOKEN})
    assert ledger.acked and tally.moments[NOT_REACHED] == 0, tally.line()
    assert (lost, duplicated, foreign, uploads) == (0, 0, 0, []), tally.line()
