"""Kinesis: kill -9 while PutRecords calls are being throttled and retried (30 % of every Kinesis
call answered ProvisionedThroughputExceeded), at named moments of a PutRecords call; then the
stream holds every acknowledged line, duplicates within the documented bound."""

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
    Tally,
    assert_no_secrets,
    compare,
    gated_proxy,
    outputs_of,
    write_tally,
)
from e2e_helpers import wait_pending_zero
from kinesis_helpers import kinesis_role, make_stream, read_stream
from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import LinkProfile, ProxyConfig
from service_helpers import ADMIN_TOKEN, ServeProcess, base_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KILLS = 8
IN_FLIGHT = 2
"""The endpoint's `max_in_flight_calls`: sets the bound below."""
REPLAY_BOUND = 2 * IN_FLIGHT * 500
"""README / KinesisEndpoint.max_in_flight_calls: a crash replays at most
2 × max_in_flight_calls × 500 records."""
TOKEN = "chaos-kinesis-customer-token-0123456789"
MOMENTS = [("PutRecords", "before"), ("PutRecords", "after"), ("PutRecords", "replied"), ("", "")]
"""("", ""): a random moment (mostly between retries of throttled calls)."""


def test_kill9_during_kinesis_retries_loses_nothing_and_duplicates_within_bound(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
) -> None:
    customer = unique("chaos")
    stream = make_stream(emulator, unique("stream"), shards=2)
    role_arn = kinesis_role(emulator, unique("role"), stream, customer)
    ledger = Ledger()
    tally = Tally("kinesis-kill9-throttled", seed)
    throttled = ProxyConfig(services={"kinesis": LinkProfile(throttle_rate=0.3)}, seed=seed)
    with gated_proxy(emulator, throttled) as (proxy, gate):
        config = base_config(
            emulator,
            tmp_path / "spool",
            vendor={"sts_endpoints": {"us-east-1": proxy.url, "us-west-2": proxy.url}},
            aws={"endpoint_url": proxy.url},
            spool={**spool_backend},
            customers=[
                {
                    "id": customer,
                    "token_env": "CHAOS_TOKEN",
                    "endpoints": [
                        {
                            "type": "kinesis",
                            "name": "kin",
                            "topic": stream.name,
                            "region": stream.region,
                            "iam_role": role_arn,
                            "max_in_flight_calls": IN_FLIGHT,
                        }
                    ],
                }
            ],
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN})
        plan = [MOMENTS[i % len(MOMENTS)] for i in range(KILLS)]
        rng.shuffle(plan)
        for op, phase in plan:
            serve.start()
            with Loader(
                serve,
                TOKEN,
                f"/v1/ingest/{customer}/kin",
                ledger,
                tag="kin",
                rng=rng,
                threads=1,
                lines=300,
                size=100,
                burst=(1, 3),
                pause=0.3,
            ):
                hit = "random (between throttled retries)"
                if op:
                    armed = gate.arm([op], "after" if phase == "replied" else phase)
                    if armed.held.wait(15):
                        hit = f"{op}:{phase}"
                        if phase == "replied":
                            gate.disarm()
                            time.sleep(rng.uniform(0, 0.03))
                else:
                    time.sleep(rng.uniform(0.3, 2.0))
                serve.kill9()
                gate.disarm()
            tally.kills += 1
            tally.moments[hit] += 1
        serve.start()
        wait_pending_zero(serve, customer, "kin", timeout=240)
        texts = outputs_of(serve, [(customer, "kin")])
        assert serve.terminate() == 0
    throttles = proxy.stats()["kinesis"]["throttles_injected"]
    found: Counter[bytes] = Counter()
    for records in read_stream(emulator, stream).values():
        found.update(r["Data"].rstrip(b"\n") for r in records)
    lost, duplicated, foreign = compare(found, ledger)
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated = lost, duplicated
    tally.moments["throttles injected"] = throttles
    write_tally(tally)
    texts["answers"] = "\n".join(ledger.bodies)
    assert_no_secrets(emulator, gate, texts, {"admin token": ADMIN_TOKEN, "customer token": TOKEN})
    assert ledger.acked and throttles > 0, tally.line()
    assert (lost, foreign) == (0, 0), tally.line()
    assert duplicated <= tally.kills * REPLAY_BOUND, tally.line()
