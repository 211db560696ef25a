"""CPU of one small S3 object from the sink's side: feed a small tenant's period (20 lines by
default), close the file by the clock, upload it on the io pool and take the result in — the way
a worker drives the sink, in process, against the emulator.

At many small tenants the object count is fixed by tenants ÷ period, whatever the load (a tenant
that sends once per period still gets one object per period), so this per-object cost is a floor
of serve's CPU at that shape (docs/performance.md, eighth pass). Reported per object: process
CPU (every thread: delivery, io, compression) and wall time, median of `--rounds` rounds.

Compare two versions with PYTHONPATH (bench/common.py lets it win over this repository's src):

    .venv/bin/python bench/small_object_cpu.py [--sinks 200] [--rounds 5] [--lines 20]
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/small_object_cpu.py \
        --name small_object_cpu_before
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import box_speed, machine_info, report, start_emulator
from logferry.sinks.s3 import S3Sink
from logferry.sinks.s3_config import S3Endpoint
from logferry.spool import Chunk
from loggen import generate_lines

BUCKET = "bench-small-object-cpu"
PERIOD = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sinks", type=int, default=200, help="tenants: one object each per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lines", type=int, default=20, help="lines per object")
    p.add_argument("--codec", default="gzip", choices=["gzip", "zstd", "none"])
    p.add_argument("--name", default="small_object_cpu", help="results file name")
    return p.parse_args(argv)


def make_sinks(
    clients: object, state: Path, io: ThreadPoolExecutor, args: argparse.Namespace, now: list[float]
) -> tuple[list[S3Sink], threading.Event]:
    """`--sinks` tenants' sinks, opened (journal created) before anything is timed."""
    woken = threading.Event()
    sinks = []
    for i in range(args.sinks):
        endpoint = S3Endpoint(
            name="bench",
            bucket_name=BUCKET,
            iam_role="arn:aws:iam::111111111111:role/bench",
            path=f"t{i:04d}/",
            period=PERIOD,
            compression_codec=args.codec,
        )
        sink = S3Sink(
            endpoint,
            clients,  # type: ignore[arg-type]
            state / f"t{i:04d}",
            uid_prefix=f"t{i:04d}-",
            clock=lambda: now[0],
            io_executor=io,
            wake=woken.set,
        )
        sink.open(0)
        sinks.append(sink)
    return sinks, woken


def one_round(
    sinks: list[S3Sink],
    woken: threading.Event,
    data: bytes,
    lines: int,
    now: list[float],
    ends: list[int],
) -> dict[str, float]:
    """One period of every sink: feed its lines, end the period, upload, take the result in."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, sink in enumerate(sinks):
        start = ends[i]
        sink.feed(Chunk(start, start + len(data), now[0], data, lines))
        ends[i] = start + len(data)
    now[0] += PERIOD  # every period ends: the next pump closes each file by the clock
    for sink in sinks:
        while True:
            woken.clear()
            sink.pump(caught_up=True)
            if not sink.holds_data():
                break
            woken.wait(5)
    return {
        "cpu_ms": 1e3 * (time.process_time() - cpu0) / len(sinks),
        "wall_ms": 1e3 * (time.perf_counter() - wall0) / len(sinks),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    speed = box_speed()
    runs: list[dict[str, float]] = []
    data = b"".join(generate_lines(args.lines))
    now = [1.7e9]
    with start_emulator() as emulator, tempfile.TemporaryDirectory() as tmp:
        emulator.client("s3").create_bucket(Bucket=BUCKET)
        clients = emulator.clients()
        with ThreadPoolExecutor(16, thread_name_prefix="aws-io") as io:
            sinks, woken = make_sinks(clients, Path(tmp), io, args, now)
            ends = [0] * len(sinks)
            one_round(sinks, woken, data, args.lines, now, ends)  # warm: clients, connections
            for _ in range(args.rounds):
                runs.append(one_round(sinks, woken, data, args.lines, now, ends))
    median = {k: round(statistics.median(run[k] for run in runs), 3) for k in runs[0]}
    rows = [
        (
            "box speed: Python loop CPU s / memcpy MB/s",
            f"{speed['python_loop_cpu_s']} / {speed['memcpy_mb_s']}",
        ),
        ("process CPU ms per object, median of rounds", median["cpu_ms"]),
        ("wall ms per object, median of rounds", median["wall_ms"]),
        ("each round's CPU ms per object", " / ".join(f"{run['cpu_ms']:.2f}" for run in runs)),
    ]
    doc = {**vars(args), "speed": speed, "median": median, "runs": runs}
    title = f"One small S3 object ({args.lines} lines, {args.codec}) from the sink's side"
    return report(title, rows, args.name, doc, machine)


if __name__ == "__main__":
    raise SystemExit(main())
