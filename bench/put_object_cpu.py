"""CPU of one small PutObject from serve's side: botocore as it comes (`Expect: 100-continue`)
against the S3 sink's client (`_put_without_expect` registered), interleaved on one box.

A small tenant's object is one PutObject, and at many small tenants that call is the largest
single cost of delivery (docs/performance.md, fourth pass). botocore asks for
`100 Continue` before sending a PutObject body and reads that interim answer one byte per
socket read; the sink's client sends the body with the headers. Reported per call: process
CPU, wall time, and (from one cProfile pass each) Python function calls, socket reads and polls
— the last two are deterministic, the first two move with the box.

Setup: the emulator (IAM enforcement on), one bucket, two S3 clients made from the same shared
session and credentials; bodies of `--bytes` random bytes (an incompressible small object).

    .venv/bin/python bench/put_object_cpu.py [--calls 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time
from typing import Any

from common import box_speed, machine_info, print_table, start_emulator, write_results
from logferry.aws.clients import DEFAULT_CONFIG
from logferry.sinks.s3.client import _PUT_HANDLER, _put_without_expect

BUCKET = "bench-put-object-cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200, help="PutObject calls per kind per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--bytes", type=int, default=5000, help="object size")
    p.add_argument("--name", default="put_object_cpu", help="results file name")
    return p.parse_args(argv)


def per_call(client: Any, prefix: str, calls: int, body: bytes) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(calls):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{i:05d}.log", Body=body)
    return {
        "cpu_ms": 1e3 * (time.process_time() - cpu0) / calls,
        "wall_ms": 1e3 * (time.perf_counter() - wall0) / calls,
    }


def counted(client: Any, prefix: str, calls: int, body: bytes) -> dict[str, float]:
    profile = cProfile.Profile()
    profile.enable()
    for i in range(calls):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{i:05d}.log", Body=body)
    profile.disable()
    stats = pstats.Stats(profile)
    by_name = {key[2]: value[1] for key, value in stats.stats.items()}  # type: ignore[attr-defined]
    return {
        "python_calls": stats.total_calls / calls,  # type: ignore[attr-defined]
        "socket_reads": by_name.get("<method 'recv_into' of '_socket.socket' objects>", 0) / calls,
        "polls": by_name.get("<method 'poll' of 'select.poll' objects>", 0) / calls,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    speed = box_speed()
    body = os.urandom(args.bytes)
    with start_emulator() as emulator:
        emulator.client("s3").create_bucket(Bucket=BUCKET)
        session = emulator.clients().session
        kinds: dict[str, Any] = {}
        for kind in ("botocore default", "sink client"):
            kinds[kind] = session.client(
                "s3", region_name="us-east-1", endpoint_url=emulator.url, config=DEFAULT_CONFIG
            )
        kinds["sink client"].meta.events.register_last(
            "before-call.s3", _put_without_expect, unique_id=_PUT_HANDLER
        )
        for kind, client in kinds.items():  # warm: connections, endpoint cache, first-call work
            per_call(client, f"warm/{kind}", 20, body)
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for r in range(args.rounds):
            for kind, client in kinds.items():
                runs[kind].append(per_call(client, f"r{r}/{kind}", args.calls, body))
        counts = {kind: counted(c, f"count/{kind}", 50, body) for kind, c in kinds.items()}
        landed = emulator.client("s3").get_object(Bucket=BUCKET, Key="r0/sink client/00000.log")
        assert landed["Body"].read() == body
    rows: list[tuple[str, Any]] = [
        ("box speed: Python loop CPU s", speed["python_loop_cpu_s"]),
        (
            "object bytes / calls per kind per round × rounds",
            f"{args.bytes} / {args.calls} × {args.rounds}",
        ),
    ]
    summary: dict[str, Any] = {}
    for kind in kinds:
        med = {k: round(statistics.median(run[k] for run in runs[kind]), 2) for k in runs[kind][0]}
        summary[kind] = {"median": med, "runs": runs[kind], "per_call": counts[kind]}
        c = counts[kind]
        rows.append(
            (f"{kind}: CPU / wall ms per call (median)", f"{med['cpu_ms']} / {med['wall_ms']}")
        )
        rows.append(
            (
                f"{kind}: Python calls / socket reads / polls per call",
                f"{c['python_calls']:,.0f} / {c['socket_reads']:.0f} / {c['polls']:.0f}",
            )
        )
    print_table("One small PutObject", rows)
    doc = {
        "calls": args.calls,
        "rounds": args.rounds,
        "bytes": args.bytes,
        "speed": speed,
        "results": summary,
    }
    print(f"\nresults: {write_results(args.name, doc, machine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
