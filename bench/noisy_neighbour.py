"""B's ingest latency while customer A floods: issue 11's noisy-neighbour scenario, as figures.

Not a test. One `logferry serve` against the emulator, two customers:
- A: an S3 endpoint whose role AccessDenies, a Kinesis stream throttled on every call (a
  loopback proxy, logferry.local.fault_proxy), spool_max_bytes 8 MiB, and `--flooders` threads
  posting gzipped 16 MiB invalid-UTF-8 bodies (one giant line / 100-byte lines) non-stop;
- B: a working S3 endpoint (period 2 s) posting one small body every 0.25 s.
Phase 1 measures B alone (`--seconds`), phase 2 B during A's flood. Reports B's latency
percentiles per phase, B's status codes, A's status codes, and how long B's lines took to land.

    PYTHONPATH=src .venv/bin/python bench/noisy_neighbour.py [--seconds 30] [--flooders 4]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from common import (
    Serve,
    count_bucket_lines,
    machine_info,
    make_kinesis_role,
    make_s3_role,
    note,
    print_table,
    serve_config,
    start_emulator,
    write_results,
)
from logferry.local.fault_proxy import throttling_proxy

FLOOD_BYTES = 16 * 1024 * 1024 - 64
TOKENS = {"TOKEN_A": "bench-noisy-a-000000000000", "TOKEN_B": "bench-quiet-b-111111111111"}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "n": len(values),
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(1000 * ordered[-1], 1),
        "mean_ms": round(1000 * statistics.fmean(values), 1),
    }


def b_phase(serve: Serve, seconds: float, tag: str) -> tuple[list[float], Counter[int], int]:
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    sent = 0
    with serve.as_token(TOKENS["TOKEN_B"]) as client:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            response = client.post("/v1/ingest/cust-b/s3", content=b"%s-%06d\n" % (tag.encode(), i))
            latencies.append(time.monotonic() - t0)
            codes[response.status_code] += 1
            sent += response.status_code == 202
            i += 1
            time.sleep(0.25)
    return latencies, codes, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--flooders", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="noisy-"))
    emulator = start_emulator()
    try:
        denied = make_s3_role(emulator, "bench-noisy-denied", "someone-else", "noisy-denied")
        good = make_s3_role(emulator, "bench-noisy-good", "cust-b", "noisy-good")
        stream_arn, a_kinesis = make_kinesis_role(emulator, "noisy-stream", 1, "cust-a", "noisy-k")
        with throttling_proxy(emulator.url, {"noisy-stream"}) as proxy:
            config = serve_config(
                emulator,
                work,
                aws={"endpoint_url": proxy.url},
                customers=[
                    {
                        "id": "cust-a",
                        "token_env": "TOKEN_A",
                        "spool_max_bytes": "8MiB",
                        "endpoints": [
                            {
                                "type": "s3",
                                "name": "s3",
                                "bucket_name": "bench-noisy-denied",
                                "iam_role": denied,
                                "path": "a/",
                                "period": 2,
                            },
                            {
                                "type": "kinesis",
                                "name": "kin",
                                "topic": "noisy-stream",
                                "region": stream_arn.split(":")[3],
                                "iam_role": a_kinesis,
                            },
                        ],
                    },
                    {
                        "id": "cust-b",
                        "token_env": "TOKEN_B",
                        "endpoints": [
                            {
                                "type": "s3",
                                "name": "s3",
                                "bucket_name": "bench-noisy-good",
                                "iam_role": good,
                                "path": "b/",
                                "period": 2,
                            },
                        ],
                    },
                ],
            )
            serve = Serve(emulator, config, work, env=TOKENS).start(180)
            note("phase 1: B alone")
            alone, alone_codes, sent_alone = b_phase(serve, args.seconds, "alone")
            a_codes: Counter[int] = Counter()
            stop = threading.Event()
            bodies = [
                gzip.compress(b"\xff" * FLOOD_BYTES, 1),
                gzip.compress((b"\xff" * 99 + b"\n") * (FLOOD_BYTES // 100), 1),
            ]

            def flood(kind: int) -> None:
                headers = {
                    "Authorization": f"Bearer {TOKENS['TOKEN_A']}",
                    "Content-Encoding": "gzip",
                }
                with httpx.Client(base_url=serve.url, timeout=600) as client:
                    client.post(
                        "/v1/ingest/cust-a/kin",
                        content=gzip.compress(b"k\n" * 1000),
                        headers=headers,
                    )
                    while not stop.is_set():
                        r = client.post(
                            "/v1/ingest/cust-a/s3", content=bodies[kind], headers=headers
                        )
                        a_codes[r.status_code] += 1

            threads = [threading.Thread(target=flood, args=(i % 2,)) for i in range(args.flooders)]
            for thread in threads:
                thread.start()
            time.sleep(2)
            note("phase 2: B during A's flood")
            flooded, flooded_codes, sent_flooded = b_phase(serve, args.seconds, "flood")
            stop.set()
            for thread in threads:
                thread.join(600)
            t_end = time.monotonic()
            total = sent_alone + sent_flooded
            while time.monotonic() - t_end < 30:
                landed = count_bucket_lines(emulator, "bench-noisy-good")["lines"]
                if landed >= total:
                    break
                time.sleep(0.5)
            land_after_end = time.monotonic() - t_end
            serve.terminate()
            doc: dict[str, Any] = {
                "b_alone": {**percentiles(alone), "codes": dict(alone_codes)},
                "b_during_flood": {**percentiles(flooded), "codes": dict(flooded_codes)},
                "a_codes": dict(a_codes),
                "a_stream_throttled_calls": proxy.throttled,
                "b_lines_sent": total,
                "b_lines_landed": landed,
                "b_all_landed_seconds_after_last_post": round(land_after_end, 1),
                "flooders": args.flooders,
                "phase_seconds": args.seconds,
            }
        print_table(
            "B's ingest latency (ms), alone vs during A's flood",
            [
                (
                    "alone p50 / p99 / max",
                    f"{doc['b_alone'].get('p50_ms')} / "
                    f"{doc['b_alone'].get('p99_ms')} / {doc['b_alone'].get('max_ms')}",
                ),
                (
                    "flood p50 / p99 / max",
                    f"{doc['b_during_flood'].get('p50_ms')} / "
                    f"{doc['b_during_flood'].get('p99_ms')} / "
                    f"{doc['b_during_flood'].get('max_ms')}",
                ),
                ("B codes during flood", doc["b_during_flood"]["codes"]),
                ("A codes", doc["a_codes"]),
                ("B lines landed / sent", f"{landed} / {total}"),
                ("all of B landed, s after last post", doc["b_all_landed_seconds_after_last_post"]),
            ],
        )
        print(write_results("noisy_neighbour", doc, machine_info()))
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
