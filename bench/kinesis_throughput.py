"""End-to-end Kinesis throughput as a ratio to the emulator's own ceiling, measured in one run.

What runs: the patched emulator (IAM enforcement on; logferry.local.patches applies the Kinesis
routing fix — open shards, inclusive end keys — and O(1), locked shard writes, without which moto
slows to ≈250 records/s within minutes, DESIGN.md §5 items 5 and 7), 4-shard streams with the
guide's role made by our `role create` code, and:

1. ceiling: a bare boto3 loop — `--threads` threads, each its own client acting as the assumed
   role, calling PutRecords with 500 access-log lines (one per record, random partition keys)
   as fast as the emulator answers, for `--ceiling-seconds`; measured before and after logferry;
2. logferry: `logferry serve` with one Kinesis endpoint (one line per record, Fastly's default)
   and the HTTP loader posting ~1 MiB bodies; from the first request until /metrics says every
   line is delivered (every record accepted), then the stream is read back and counted;
3. logferry with `packing = true` (several lines per record) on a third stream, unless
   `--no-packing`.

Ratio = logferry lines/s ÷ ceiling records/s (one line per record on both sides). logferry paces
itself to Kinesis's documented per-shard quota (1,000 records/s and 1 MB/s per shard), which the
emulator does not enforce: with 4 shards logferry cannot exceed 4,000 records/s by design.

    .venv/bin/python bench/kinesis_throughput.py [--shards 4] [--lines 100000]
        [--packed-lines 300000] [--ceiling-seconds 15] [--threads 4] [--no-packing]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from common import (
    Emulator,
    MiB,
    ProcSampler,
    Serve,
    assumed_clients,
    count_stream_records,
    loggen_bodies,
    machine_info,
    make_kinesis_role,
    note,
    post_bodies,
    print_table,
    serve_config,
    start_emulator,
    write_results,
)

TOKEN = "bench-customer-token-kinesis-0000"
CUSTOMER = "bench-customer"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--lines", type=int, default=100_000, help="lines for the 1-line-per-record run")
    p.add_argument("--packed-lines", type=int, default=300_000, help="lines for the packed run")
    p.add_argument("--no-packing", action="store_true", help="skip the packed run")
    p.add_argument("--ceiling-seconds", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=4, help="threads of the bare boto3 loop")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--body-mib", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=600.0)
    return p.parse_args(argv)


def ceiling(
    emulator: Emulator, stream_arn: str, role_arn: str, lines: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Records/s the emulator accepts from a bare PutRecords loop (no pacing, no spool)."""
    stop = threading.Event()
    lock = threading.Lock()
    totals = {"calls": 0, "records": 0, "failed": 0, "bytes": 0, "errors": 0}

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        client = assumed_clients(emulator, role_arn, CUSTOMER).client("kinesis", "us-east-1")
        i = seed * 500
        while not stop.is_set():
            batch = [lines[(i + k) % len(lines)].rstrip(b"\n") for k in range(500)]
            i += 500
            records = [{"Data": d, "PartitionKey": f"{rng.getrandbits(64):x}"} for d in batch]
            try:
                out = client.put_records(StreamARN=stream_arn, Records=records)
            except Exception:
                with lock:
                    totals["errors"] += 1
                continue
            failed = out.get("FailedRecordCount", 0)
            with lock:
                totals["calls"] += 1
                totals["records"] += 500 - failed
                totals["failed"] += failed
                totals["bytes"] += sum(len(d) for d in batch)

    threads = [threading.Thread(target=loop, args=(s,)) for s in range(args.threads)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.ceiling_seconds)
    stop.set()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    return {
        **totals,
        "seconds": round(seconds, 2),
        "records_per_s": round(totals["records"] / seconds),
        "calls_per_s": round(totals["calls"] / seconds, 1),
        "mb_per_s": round(totals["bytes"] / 1e6 / seconds, 2),
    }


def logferry_run(
    emulator: Emulator,
    workdir: Path,
    stream_arn: str,
    role_arn: str,
    lines: int,
    packing: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    bodies = loggen_bodies(lines, int(args.body_mib * MiB))
    total_lines = sum(n for _, n in bodies)
    total_bytes = sum(len(b) for b, _ in bodies)
    stream = stream_arn.rsplit("/", 1)[1]
    endpoint = {
        "type": "kinesis",
        "name": "kin",
        "topic": stream,
        "region": "us-east-1",
        "iam_role": role_arn,
        "packing": packing,
    }
    config = serve_config(
        emulator,
        workdir,
        customers=[{"id": CUSTOMER, "token_env": "BENCH_TOKEN", "endpoints": [endpoint]}],
    )
    serve = Serve(emulator, config, workdir, env={"BENCH_TOKEN": TOKEN}).start()
    try:
        sampler = ProcSampler({"serve": serve.pid, "emulator": emulator.pid}).start()
        delivered_at: list[float] = []

        def poll() -> None:
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                time.sleep(0.25)
                try:
                    if serve.metric_sum("logferry_delivered_lines_total") >= total_lines:
                        delivered_at.append(time.monotonic())
                        return
                except Exception:
                    continue

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        load = post_bodies(
            f"{serve.url}/v1/ingest/{CUSTOMER}/kin", TOKEN, bodies, connections=args.connections
        )
        if load.errors or load.accepted_lines != total_lines:
            raise RuntimeError(f"load failed: {load.statuses} {load.errors[:3]}")
        note(f"ingest done in {load.ingest_seconds:.1f}s; waiting for delivery")
        poller.join()
        if not delivered_at:
            raise RuntimeError(f"not delivered within {args.timeout}s")
        sampler.stop()
        units = serve.metric_sum("logferry_delivered_units_total")
        status = serve.status(CUSTOMER, "kin")
    finally:
        serve.terminate()
    counted = count_stream_records(emulator, stream_arn)
    seconds = delivered_at[0] - load.first_request
    run = sampler.window("serve", load.first_request, delivered_at[0])
    emu = sampler.window("emulator", load.first_request, delivered_at[0])
    return {
        "packing": packing,
        "lines": total_lines,
        "input_mb": round(total_bytes / 1e6, 1),
        "bulk_seconds": round(load.ingest_seconds, 2),
        "e2e_seconds": round(seconds, 2),
        "lines_per_s": round(total_lines / seconds),
        "mb_per_s": round(total_bytes / 1e6 / seconds, 2),
        "records_in_stream": counted["records"],
        "records_per_s": round(counted["records"] / seconds),
        "putrecords_calls": int(units),
        "status_records": status.get("records"),
        "serve_peak_rss_mib": run["peak_rss_mib"],
        "serve_cpu_seconds": run["cpu_seconds"],
        "emulator_cpu_seconds": emu["cpu_seconds"],
        "per_shard": {k: v for k, v in counted.items() if k.startswith("shardId")},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    sample = [line for body, _ in loggen_bodies(20_000, MiB, seed=1) for line in body.splitlines()]
    workdir = Path(tempfile.mkdtemp(prefix="logferry-bench-kinesis-"))
    emulator = start_emulator()
    try:
        tag = uuid.uuid4().hex[:6]
        ceil_arn, ceil_role = make_kinesis_role(
            emulator, f"ceiling-{tag}", args.shards, CUSTOMER, "bench-kinesis-ceiling"
        )
        note(f"ceiling: {args.threads} threads × PutRecords(500) for {args.ceiling_seconds}s")
        before = ceiling(emulator, ceil_arn, ceil_role, sample, args)
        note(f"ceiling before: {before['records_per_s']} records/s")
        arn, role = make_kinesis_role(emulator, f"logs-{tag}", args.shards, CUSTOMER, "bench-kin")
        note(f"logferry: {args.lines:,} lines, one per record")
        plain = logferry_run(emulator, workdir / "plain", arn, role, args.lines, False, args)
        note(f"logferry: {plain['lines_per_s']} lines/s")
        packed = None
        if not args.no_packing:
            parn, prole = make_kinesis_role(
                emulator, f"packed-{tag}", args.shards, CUSTOMER, "bench-kin-packed"
            )
            note(f"logferry: {args.packed_lines:,} lines, packed")
            packed = logferry_run(
                emulator, workdir / "packed", parn, prole, args.packed_lines, True, args
            )
        after = ceiling(emulator, ceil_arn, ceil_role, sample, args)
        note(f"ceiling after: {after['records_per_s']} records/s")
    finally:
        emulator.stop()

    ceiling_rps = (before["records_per_s"] + after["records_per_s"]) / 2
    quota = 1000 * args.shards
    doc: dict[str, Any] = {
        "shards": args.shards,
        "avg_line_bytes": round(sum(map(len, sample)) / len(sample) + 1, 1),
        "emulator_patches": "Kinesis routing (open shards, inclusive end keys); O(1) locked shard "
        "writes (logferry.local.patches)",
        "ceiling_before": before,
        "ceiling_after": after,
        "ceiling_records_per_s": round(ceiling_rps),
        "logferry": plain,
        "ratio_to_ceiling": round(plain["lines_per_s"] / ceiling_rps, 3),
        "kinesis_quota_records_per_s": quota,
        "ratio_to_quota": round(plain["records_per_s"] / quota, 3),
        "logferry_packed": packed,
        "packed_lines_ratio_to_ceiling": round(packed["lines_per_s"] / ceiling_rps, 2)
        if packed
        else None,
    }
    doc["targets"] = {"logferry>=90%_of_ceiling": doc["ratio_to_ceiling"] >= 0.9}
    path = write_results("kinesis_throughput", doc, machine)
    rows: list[tuple[str, Any]] = [
        (
            "ceiling records/s (before / after)",
            f"{before['records_per_s']:,} / {after['records_per_s']:,}",
        ),
        ("ceiling PutRecords calls/s", f"{before['calls_per_s']} / {after['calls_per_s']}"),
        ("logferry lines/s (1 per record)", plain["lines_per_s"]),
        ("logferry MB/s", plain["mb_per_s"]),
        ("ratio to emulator ceiling", f"{doc['ratio_to_ceiling']:.1%}"),
        (f"ratio to Kinesis quota ({quota:,}/s)", f"{doc['ratio_to_quota']:.1%}"),
        ("records in stream / lines sent", f"{plain['records_in_stream']:,} / {plain['lines']:,}"),
        (
            "serve peak RSS MiB / CPU s",
            f"{plain['serve_peak_rss_mib']} / {plain['serve_cpu_seconds']}",
        ),
    ]
    if packed:
        rows += [
            ("packed: lines/s", packed["lines_per_s"]),
            ("packed: MB/s", packed["mb_per_s"]),
            (
                "packed: records / calls",
                f"{packed['records_in_stream']:,} / {packed['putrecords_calls']:,}",
            ),
            ("packed: lines/s ÷ ceiling records/s", f"{doc['packed_lines_ratio_to_ceiling']}×"),
        ]
    rows.append(("target >= 90% of ceiling", doc["targets"]["logferry>=90%_of_ceiling"]))
    print_table(f"Kinesis end to end ({args.shards} shards)", rows)
    print(f"\nresults: {path}")
    if plain["records_in_stream"] != plain["lines"]:
        raise SystemExit(
            f"stream holds {plain['records_in_stream']} records, expected {plain['lines']}"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
