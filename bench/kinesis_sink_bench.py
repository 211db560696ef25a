"""Benchmark of the Kinesis sink into the local emulator, with and without packing.

Not a test: it starts the patched emulator, creates a stream, and delivers realistic access-log
lines (bench/loggen.py) through `KinesisSink` with the real clock, so per-shard pacing (1,000
records/s and 1 MB/s per shard) is part of the figure. It prints records/s and lines/s for one
line per record (Fastly's default) and for packing, and writes bench/results/kinesis_sink.json.

The emulator, not the sink, is usually the bottleneck (moto answers ≈12 PutRecords calls of 500
small records per second, DESIGN.md §5 item 8), so read the figures as "what logferry reaches
against the emulator"; against AWS, one line per record is bounded by the shard count
(1,000 records/s each) and packing by bytes (1 MB/s each).

    PYTHONPATH=src .venv/bin/python bench/kinesis_sink_bench.py [--lines 60000]
        [--packed-lines 300000] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the blocking driver

from kinesis_helpers import deliver
from logferry.local.emulator import Emulator, start_emulator
from logferry.sinks.kinesis import KinesisSink
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.spool.chunk import Chunk
from loggen import generate_lines

REGION = "us-east-1"


def make_chunks(lines: list[bytes], per_chunk: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    offset = 0
    for i in range(0, len(lines), per_chunk):
        group = lines[i : i + per_chunk]
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in group)
        chunks.append(Chunk(offset, offset + len(data), time.time(), data, len(group)))
        offset += len(data)
    return chunks


def run(emulator: Emulator, lines: list[bytes], *, shards: int, packing: bool) -> dict[str, Any]:
    admin = emulator.client("kinesis", region=REGION)
    stream = f"bench-{uuid.uuid4().hex[:8]}"
    admin.create_stream(StreamName=stream, ShardCount=shards)
    endpoint = KinesisEndpoint(
        name="bench",
        topic=stream,
        region=REGION,
        iam_role=f"arn:aws:iam::{emulator.customer.account_id}:role/bench",
        packing=packing,
    )
    # The customer's admin keys stand in for the assumed role: the path is the same.
    sink = KinesisSink(endpoint, emulator.clients())
    chunks = make_chunks(lines, 1000)
    start = time.perf_counter()
    deliver(sink, chunks)
    elapsed = time.perf_counter() - start
    stats = sink.stats
    assert stats.lines == len(lines), (stats.lines, len(lines))
    admin.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    return {
        "packing": packing,
        "shards": shards,
        "lines": stats.lines,
        "records": stats.records,
        "calls": stats.calls,
        "mb": stats.bytes / 1e6,
        "seconds": elapsed,
        "records_per_s": stats.records / elapsed,
        "lines_per_s": stats.lines / elapsed,
        "mb_per_s": stats.bytes / 1e6 / elapsed,
        "paced_seconds": stats.paced_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=60_000, help="lines, one line per record")
    parser.add_argument(
        "--packed-lines",
        type=int,
        default=300_000,
        help="lines with packing (more, so the run lasts well past the first second's burst)",
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "kinesis_sink.json",
    )
    args = parser.parse_args(argv)
    total = max(args.lines, args.packed_lines)
    every = [line.rstrip(b"\n") for line in generate_lines(total, seed=1)]
    avg = sum(len(line) + 1 for line in every) / len(every)
    results: list[dict[str, Any]] = []
    with start_emulator() as emulator:
        for packing, count in ((False, args.lines), (True, args.packed_lines)):
            runs = [
                run(emulator, every[:count], shards=args.shards, packing=packing)
                for _ in range(args.repeat)
            ]
            results.append(max(runs, key=lambda r: r["lines_per_s"]))
    print(f"{avg:.0f} B/line average, {args.shards} shards, moto emulator (real clock, paced)")
    header = ("mode", "lines", "records", "calls", "seconds", "records/s", "lines/s", "MB/s")
    print("{:<16}{:>8}{:>9}{:>7}{:>9}{:>11}{:>10}{:>7}".format(*header))
    for r in results:
        mode = "packed" if r["packing"] else "line per record"
        print(
            f"{mode:<16}{r['lines']:>8}{r['records']:>9}{r['calls']:>7}{r['seconds']:>9.2f}"
            f"{r['records_per_s']:>11,.0f}{r['lines_per_s']:>10,.0f}{r['mb_per_s']:>7.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
                "avg_line_bytes": avg,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
