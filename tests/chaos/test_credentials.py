"""Credentials that expire every 30 s, Kinesis unreachable for a minute, and STS unreachable in
every region for a minute, under steady load to S3 and Kinesis at once.

The timeline (seconds from the first line sent; the Kinesis and STS outages overlap so the case
stays near two minutes):

    0 ─ 10   everything up; every assumed-role key dies 30 s after it was issued
   10 ─ 70   Kinesis down: 20 s held (never forwarded, then 503), then 40 s answered 503
   30 ─ 90   STS down in every region (AssumeRole answered 503): once the last keys die,
             nothing reaches S3 or Kinesis, and serve keeps acknowledging into the spool
   90 ─      all back: delivery resumes with fresh credentials

Then the bucket and the stream hold every acknowledged line: S3 exactly once, Kinesis with
duplicates within the crash bound (no process died, so 0 is expected)."""

from __future__ import annotations

import random
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import (
    Ledger,
    Loader,
    ShortCredentials,
    Tally,
    assert_no_secrets,
    compare,
    gated_proxy,
    outputs_of,
    write_tally,
)
from e2e_helpers import bucket_content, status, wait_pending_zero
from kinesis_helpers import kinesis_role, make_stream, read_stream
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ADMIN_TOKEN, ServeProcess, base_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LIFETIME = 30
STS_DOWN, STS_BACK = 30, 90
IN_FLIGHT = 2
REPLAY_BOUND = 2 * IN_FLIGHT * 500
"""README / KinesisEndpoint.max_in_flight_calls: at most 2 × max_in_flight_calls × 500 replays."""
TOKEN = "chaos-credentials-customer-token-0123456789"
KINESIS_CALLS = ["PutRecords", "ListShards", "DescribeStreamSummary"]
REGIONS = ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]


def at(start: float, second: float) -> None:
    """Sleep until `second` seconds after `start`."""
    time.sleep(max(0.0, start + second - time.time()))


def test_expiring_credentials_and_kinesis_and_sts_outages_lose_nothing(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    stream = make_stream(emulator, unique("stream"), shards=2)
    kinesis_role_arn = kinesis_role(emulator, unique("role"), stream, customer)
    ledgers = {"s3": Ledger(), "kin": Ledger()}
    tally = Tally("credentials-30s-kinesis-sts-down-60s", seed)
    short = ShortCredentials(LIFETIME)
    with gated_proxy(emulator, more=[short]) as (proxy, gate):
        config = base_config(
            emulator,
            tmp_path / "spool",
            vendor={"sts_regions": REGIONS, "sts_endpoints": dict.fromkeys(REGIONS, proxy.url)},
            aws={"endpoint_url": proxy.url},
            server={"idle_flush_seconds": 1},
            spool={**spool_backend},
            customers=[
                {
                    "id": customer,
                    "token_env": "CHAOS_TOKEN",
                    "endpoints": [
                        {
                            "type": "s3",
                            "name": "s3",
                            "bucket_name": role.bucket,
                            "iam_role": role.role_arn,
                            "period": 2,
                        },
                        {
                            "type": "kinesis",
                            "name": "kin",
                            "topic": stream.name,
                            "region": stream.region,
                            "iam_role": kinesis_role_arn,
                            "max_in_flight_calls": IN_FLIGHT,
                        },
                    ],
                }
            ],
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN}).start()
        loaders = [
            Loader(
                serve,
                TOKEN,
                f"/v1/ingest/{customer}/{name}",
                ledgers[name],
                tag=name,
                rng=rng,
                threads=1,
                lines=150,
                size=150,
                pause=0.5,
            )
            for name in ledgers
        ]
        pending: dict[str, int] = {}
        with ExitStack() as senders:
            for loader in loaders:
                senders.enter_context(loader)
            start = time.time()
            at(start, 10)
            gate.pause(KINESIS_CALLS)
            at(start, STS_DOWN)
            gate.unpause()
            gate.refusing = frozenset({*KINESIS_CALLS, "AssumeRole"})
            at(start, 70)
            gate.refusing = frozenset({"AssumeRole"})
            at(start, STS_BACK)
            with serve.admin() as admin:
                pending = {n: status(admin, customer, n)["lines"]["pending"] for n in ledgers}
            gate.refusing = frozenset()
            at(start, STS_BACK + rng.uniform(3, 6))
        for name in ledgers:
            wait_pending_zero(serve, customer, name, timeout=240)
        texts = outputs_of(serve, [(customer, name) for name in ledgers])
        assert serve.terminate() == 0
    # While STS was down, the keys issued before it died by 30 + 30 s: from then until STS came
    # back nothing reached S3 or Kinesis, and lines piled up in the spool.
    paused = short.data_calls_between(start + STS_DOWN + LIFETIME + 1, start + STS_BACK)
    tally.moments[f"keys issued (each dies after {LIFETIME} s)"] = short.issued
    tally.moments["calls refused ExpiredToken"] = sum(short.rejected.values())
    tally.moments["Kinesis/STS calls refused 503"] = gate.refused
    tally.moments["Kinesis calls held"] = gate.held_in_outage
    tally.moments["pending S3 lines at STS return"] = pending["s3"]
    tally.moments["pending Kinesis lines at STS return"] = pending["kin"]
    s3_found = bucket_content(emulator, role.bucket).lines
    kin_found: Counter[bytes] = Counter()
    for records in read_stream(emulator, stream).values():
        kin_found.update(r["Data"].rstrip(b"\n") for r in records)
    s3 = compare(s3_found, ledgers["s3"])
    kin = compare(kin_found, ledgers["kin"])
    uploads = pending_uploads(emulator, role.bucket)
    tally.acked = sum(len(ledger.acked) for ledger in ledgers.values())
    tally.checked = sum(s3_found.values()) + sum(kin_found.values())
    tally.lost = s3[0] + kin[0]
    tally.duplicated = s3[1] + kin[1]
    tally.open_uploads = len(uploads)
    write_tally(tally)
    texts["answers"] = "\n".join(ledgers["s3"].bodies + ledgers["kin"].bodies)
    assert_no_secrets(emulator, gate, texts, {"admin token": ADMIN_TOKEN, "customer token": TOKEN})
    assert all(ledger.acked for ledger in ledgers.values()), tally.line()
    # Each role's key died at least twice in the run, so delivery went on through refreshes.
    assert short.issued >= 4 and gate.refused > 0 and gate.held_in_outage > 0, tally.line()
    assert not paused, f"data calls while STS was down and every key had died: {paused}"
    assert pending["s3"] > 0 and pending["kin"] > 0, tally.line()
    assert (s3, uploads) == ((0, 0, 0), []), tally.line()
    assert (kin[0], kin[2]) == (0, 0) and kin[1] <= REPLAY_BOUND, tally.line()
