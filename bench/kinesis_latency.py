"""Kinesis at real round-trip latency: logferry's sink vs bare boto3, through the quota proxy.

What runs, in one process tree on this machine:

- the patched emulator (IAM enforced), 32-shard streams, the guide's role (`provision_role`);
- `python -m logferry.local.kinesis_quota` in its own process: the latency proxy adding
  `--delay-ms` (+ uniform `--jitter-ms`) to every Kinesis call and enforcing the real per-shard
  quotas (1,000 records/s, 1 MiB/s; `--no-quota` for latency only);
- phase "bare": `--concurrency` threads, each a boto3 client acting as the assumed role, calling
  PutRecords with 500 access-log lines (one per record, random partition keys, as a naive
  producer does) back to back for `--seconds`; records accepted per second;
- phase "logferry": one `KinesisSink` (the service's code; `max_in_flight_calls` =
  `--max-in-flight`, unset by default as in the service) on a real I/O thread pool, driven
  like the worker drives it (feed while it wants data, pump, wait for its wake-up or its
  delay), for `--seconds`;
- phase "two endpoints": two sinks (two endpoints, one role) on one stream, each on its own
  driver thread, sharing the stream's pacer; their sum, and throttles after `--warmup` seconds;
- with `--serve-lines N`, phase "serve": a real `logferry serve` whose `aws.endpoint_url` is the
  proxy, one Kinesis endpoint, N lines posted over HTTP; lines/s from the first request until
  /metrics counts every line delivered (the worker, its wake-ups and the shared I/O pool included).

Ratio = logferry records/s ÷ bare records/s (same concurrency, same emulator and proxy, same
run). Share of quota = records/s ÷ (1,000 × shards).

    .venv/bin/python bench/kinesis_latency.py [--shards 32] [--delay-ms 30] [--jitter-ms 3]
        [--concurrency 8] [--max-in-flight N] [--seconds 15] [--warmup 3] [--no-quota]
        [--serve-lines 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    Emulator,
    MiB,
    Serve,
    add_spool_backend_option,
    assumed_clients,
    loggen_bodies,
    machine_info,
    make_kinesis_role,
    note,
    post_bodies,
    print_table,
    serve_config,
    spool_backend,
    start_emulator,
    write_results,
)
from logferry.aws.clients import AwsClients, AwsTarget
from logferry.errors import TransientError
from logferry.sinks.kinesis import KinesisSink
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.spool.chunk import Chunk

CUSTOMER = "bench-customer-kinesis-latency"
TOKEN = "bench-customer-token-kinesis-latency-0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=30.0)
    p.add_argument("--jitter-ms", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=8, help="bare boto3 threads")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="the endpoints' max_in_flight_calls (default: unset, the sink's own choice)",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    p.add_argument("--warmup", type=float, default=3.0, help="not counted at a phase's start")
    p.add_argument("--no-quota", action="store_true", help="latency only, no shard quotas")
    p.add_argument("--serve-lines", type=int, default=0, help="also run logferry serve (N lines)")
    add_spool_backend_option(p)  # the --serve-lines phase's spool
    p.add_argument("--name", default="kinesis_latency")
    return p.parse_args(argv)


class QuotaProxy:
    """`logferry.local.kinesis_quota` in its own process (its event loop gets its own GIL)."""

    def __init__(self, emulator: Emulator, shards: dict[str, Any], args: argparse.Namespace):
        self.dir = Path(tempfile.mkdtemp(prefix="kinesis-latency-"))
        shards_file = self.dir / "shards.json"
        shards_file.write_text(json.dumps(shards))
        self.stats_file = self.dir / "stats.json"
        command = [
            sys.executable,
            "-m",
            "logferry.local.kinesis_quota",
            "--upstream",
            emulator.url,
            "--rewrite-token",
            emulator.rewrite_token,
            "--shards-file",
            str(shards_file),
            "--kinesis-delay-ms",
            str(args.delay_ms),
            "--kinesis-jitter-ms",
            str(args.jitter_ms),
            "--stats-file",
            str(self.stats_file),
        ]
        if args.no_quota:
            command.append("--no-quota")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the quota proxy did not start (said {self.url!r})")

    def stop(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        return json.loads(self.stats_file.read_text())


def make_lines() -> list[bytes]:
    """~232-byte access-log lines (bench/loggen.py), without their newlines."""
    out: list[bytes] = []
    for body, _ in loggen_bodies(100_000, MiB):
        out.extend(body.split(b"\n")[:-1])
    return out


class Feeder:
    """Endless spool-like chunks of 500 lines at consecutive positions."""

    def __init__(self, lines: list[bytes], seed: int) -> None:
        self._lines = lines
        self._i = random.Random(seed).randrange(len(lines))
        self.position = 0

    def next(self) -> Chunk:
        n = len(self._lines)
        group = [self._lines[(self._i + k) % n] for k in range(500)]
        self._i += 500
        data = b"\n".join(group) + b"\n"
        chunk = Chunk(self.position, self.position + len(data), time.time(), data, len(group))
        self.position = chunk.end
        return chunk


def bare_phase(
    clients: AwsClients, stream_arn: str, lines: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """`--concurrency` threads of back-to-back PutRecords (no pacing), random partition keys."""
    stop = threading.Event()
    lock = threading.Lock()
    warm_at = time.monotonic() + args.warmup
    totals = {"calls": 0, "records": 0, "throttled": 0, "errors": 0}
    counted = {"records": 0, "throttled": 0}

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        client = clients.client("kinesis", "us-east-1")
        i = rng.randrange(len(lines))
        while not stop.is_set():
            batch = [lines[(i + k) % len(lines)] for k in range(500)]
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
                totals["throttled"] += failed
                if time.monotonic() >= warm_at:
                    counted["records"] += 500 - failed
                    counted["throttled"] += failed

    threads = [threading.Thread(target=loop, args=(s,)) for s in range(args.concurrency)]
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    measured = args.seconds - args.warmup
    return {
        **totals,
        "records_per_s": round(counted["records"] / measured),
        "throttled_after_warmup": counted["throttled"],
    }


def drive(
    sink: KinesisSink, feeder: Feeder, woken: threading.Event, until: float
) -> tuple[int, int]:
    """The worker's loop, minus the spool: returns (transient failures, pumps)."""
    failures = pumps = 0
    sink.open(0)
    while time.monotonic() < until:
        while sink.wants_data():
            sink.feed(feeder.next())
        woken.clear()
        pumps += 1
        try:
            delay = sink.pump(caught_up=True)
        except TransientError:
            failures += 1
            time.sleep(0.5)
            continue
        if delay is None or delay > 0:
            woken.wait(0.05 if delay is None else delay)
    return failures, pumps


def sink_phase(
    endpoints: list[KinesisEndpoint],
    clients: AwsClients,
    pool: ThreadPoolExecutor,
    lines: list[bytes],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Each endpoint's sink on its own driver thread for `--seconds`; figures after warm-up."""
    sinks: list[KinesisSink] = []
    wakes: list[threading.Event] = []
    for endpoint in endpoints:
        woken = threading.Event()
        sinks.append(
            KinesisSink(endpoint, clients, io_executor=pool, wake=woken.set, hostname="bench")
        )
        wakes.append(woken)
    round_trips = CallTimes(clients)
    start = time.monotonic()
    until = start + args.seconds
    failures: list[tuple[int, int]] = [(0, 0)] * len(sinks)

    def run(i: int) -> None:
        failures[i] = drive(sinks[i], Feeder(lines, i), wakes[i], until)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sinks))]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    warm = [(s.stats.records, s.stats.throttled) for s in sinks]
    warm_at = time.monotonic()
    for t in threads:
        t.join()
    ended = time.monotonic()
    measured = ended - warm_at
    per = []
    for sink, (records0, throttled0), (failed, pumps) in zip(sinks, warm, failures, strict=True):
        s = sink.stats
        per.append(
            {
                "records_per_s": round((s.records - records0) / measured),
                "records": s.records,
                "calls": s.calls,
                "throttled": s.throttled,
                "throttled_after_warmup": s.throttled - throttled0,
                "max_in_flight_seen": s.max_in_flight_seen,
                "records_per_call": round(s.records / s.calls) if s.calls else None,
                "calls_answered": s.calls - s.in_flight_calls,
                "transient_failures": failed,
                "pumps_per_s": round(pumps / (ended - start)),
            }
        )
    return {
        "records_per_s": sum(p["records_per_s"] for p in per),
        "throttled_after_warmup": sum(p["throttled_after_warmup"] for p in per),
        "endpoints": per,
        "call_seconds": round_trips.summary(),
    }


class CallTimes:
    """PutRecords round trips as botocore sees them (serialize, sign, send, answer, parse):
    the round trip the sink's calls in flight have to cover, proxy delay plus the emulator."""

    def __init__(self, clients: AwsClients) -> None:
        self.seconds: list[float] = []
        events = clients.client("kinesis", "us-east-1").meta.events
        events.register("before-call.kinesis.PutRecords", self._before)
        events.register("after-call.kinesis.PutRecords", self._after)

    def _before(self, context: dict[str, Any], **_: Any) -> None:
        context["bench_started"] = time.monotonic()

    def _after(self, context: dict[str, Any], **_: Any) -> None:
        started = context.get("bench_started")
        if started is not None:
            self.seconds.append(time.monotonic() - started)

    def summary(self) -> dict[str, float] | None:
        times = sorted(self.seconds)
        if not times:
            return None
        return {
            "calls": len(times),
            "p50": round(times[len(times) // 2], 3),
            "p90": round(times[int(len(times) * 0.9)], 3),
            "max": round(times[-1], 3),
        }


def serve_phase(
    emulator: Emulator, proxy_url: str, stream_arn: str, role_arn: str, args: argparse.Namespace
) -> dict[str, Any]:
    """`logferry serve` with every AWS call through the proxy; one endpoint, N lines."""
    bodies = loggen_bodies(args.serve_lines, MiB)
    total = sum(n for _, n in bodies)
    endpoint = {
        "type": "kinesis",
        "name": "kin",
        "topic": stream_arn.rsplit("/", 1)[1],
        "region": "us-east-1",
        "iam_role": role_arn,
    }
    if args.max_in_flight is not None:
        endpoint["max_in_flight_calls"] = args.max_in_flight
    workdir = Path(tempfile.mkdtemp(prefix="kinesis-latency-serve-"))
    with spool_backend(args.spool_backend, workdir, args.nats_shards) as backend:
        config = serve_config(
            emulator,
            workdir,
            aws={"endpoint_url": proxy_url},
            spool=backend.spool_table(),
            customers=[{"id": CUSTOMER, "token_env": "BENCH_TOKEN", "endpoints": [endpoint]}],
        )
        serve = Serve(emulator, config, workdir, env={"BENCH_TOKEN": TOKEN}).start()
        return _serve_load(serve, bodies, total, backend.name)


def _serve_load(
    serve: Serve, bodies: list[tuple[bytes, int]], total: int, backend: str
) -> dict[str, Any]:
    try:
        load = post_bodies(f"{serve.url}/v1/ingest/{CUSTOMER}/kin", TOKEN, bodies, connections=2)
        if load.errors or load.accepted_lines != total:
            raise RuntimeError(f"load failed: {load.statuses} {load.errors[:3]}")
        deadline = time.monotonic() + 300
        while serve.metric_sum("logferry_delivered_lines_total") < total:
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not deliver within 300 s")
            time.sleep(0.25)
        seconds = time.monotonic() - load.first_request
        status = serve.status(CUSTOMER, "kin")
    finally:
        serve.terminate()
    return {
        "spool_backend": backend,
        "lines": total,
        "seconds": round(seconds, 2),
        "records_per_s": round(total / seconds),
        "status_records": status.get("records"),
    }


def _round_trip(phase: dict[str, Any]) -> str:
    times = phase.get("call_seconds")
    return f"{times['p50']} / {times['p90']}" if times else "-"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_info()
    quota = 1000 * args.shards
    note("generating lines")
    lines = make_lines()
    with start_emulator() as emulator:
        tag = uuid.uuid4().hex[:6]
        streams: dict[str, tuple[str, str]] = {}
        phases = ("bare", "one", "two", "bare_after")
        if args.serve_lines:
            phases += ("serve",)
        for phase in phases:
            note(f"stream + role for phase {phase} ({args.shards} shards)")
            streams[phase] = make_kinesis_role(
                emulator, f"lat-{phase}-{tag}", args.shards, CUSTOMER, f"lat-{phase}-{tag}"
            )
        admin = emulator.client("kinesis")
        shards = {
            arn.rsplit("/", 1)[1]: admin.list_shards(StreamARN=arn)["Shards"]
            for arn, _ in streams.values()
        }
        proxy = QuotaProxy(emulator, shards, args)
        note(f"quota proxy at {proxy.url}")
        try:
            results: dict[str, Any] = {}
            with ThreadPoolExecutor(64, thread_name_prefix="aws-io") as pool:
                for phase in phases:
                    arn, role = streams[phase]
                    direct = assumed_clients(emulator, role, CUSTOMER)
                    clients = AwsClients(direct.credentials, AwsTarget(endpoint_url=proxy.url))
                    note(f"phase {phase}: {args.seconds:.0f} s")
                    if phase.startswith("bare"):
                        results[phase] = bare_phase(clients, arn, lines, args)
                        continue
                    if phase == "serve":
                        results[phase] = serve_phase(emulator, proxy.url, arn, role, args)
                        continue
                    names = ["kin-a"] if phase == "one" else ["kin-a", "kin-b"]
                    # Unset unless asked: the endpoint's default (also on older code whose
                    # field does not take None, for before/after runs with PYTHONPATH).
                    chosen: dict[str, Any] = {}
                    if args.max_in_flight is not None:
                        chosen["max_in_flight_calls"] = args.max_in_flight
                    endpoints = [
                        KinesisEndpoint(
                            name=name,
                            topic=arn.rsplit("/", 1)[1],
                            region="us-east-1",
                            iam_role=role,
                            **chosen,
                        )
                        for name in names
                    ]
                    results[phase] = sink_phase(endpoints, clients, pool, lines, args)
        finally:
            proxy_stats = proxy.stop()
    bare, one, two = results["bare"], results["one"], results["two"]
    # moto slows as it keeps every record: bare boto3 runs first and last, the mean is the bar.
    bare_mean = (bare["records_per_s"] + results["bare_after"]["records_per_s"]) / 2
    ratio = one["records_per_s"] / bare_mean if bare_mean else None
    figures = {
        "shards": args.shards,
        "quota_records_per_s": quota,
        "delay_ms": args.delay_ms,
        "jitter_ms": args.jitter_ms,
        "concurrency": args.concurrency,
        "max_in_flight_calls": args.max_in_flight,
        "quota_enforced": not args.no_quota,
        "bare": bare,
        "bare_after": results["bare_after"],
        "bare_mean_records_per_s": round(bare_mean),
        "one_endpoint": one,
        "two_endpoints": two,
        "ratio_one_to_bare": round(ratio, 3) if ratio else None,
        "one_share_of_quota": round(one["records_per_s"] / quota, 3),
        "two_share_of_quota": round(two["records_per_s"] / quota, 3),
        "serve": results.get("serve"),
        "proxy": proxy_stats,
    }
    print_table(
        f"Kinesis through the proxy ({args.delay_ms:g} ms ± {args.jitter_ms:g}, "
        f"{args.shards} shards, concurrency {args.concurrency})",
        [
            (
                "bare boto3 records/s, first / last",
                f"{bare['records_per_s']:,} / {results['bare_after']['records_per_s']:,}",
            ),
            ("bare boto3 throttled after warm-up", bare["throttled_after_warmup"]),
            ("logferry, one endpoint, records/s", one["records_per_s"]),
            ("one endpoint: PutRecords round trip p50 / p90 s", _round_trip(one)),
            ("one endpoint: most calls in flight", one["endpoints"][0]["max_in_flight_seen"]),
            ("ratio to bare boto3 (mean of first and last)", figures["ratio_one_to_bare"]),
            ("share of the stream's quota", figures["one_share_of_quota"]),
            ("one endpoint: throttled after warm-up", one["throttled_after_warmup"]),
            ("two endpoints, sum records/s", two["records_per_s"]),
            ("two endpoints: share of quota", figures["two_share_of_quota"]),
            ("two endpoints: throttled after warm-up", two["throttled_after_warmup"]),
            ("quota proxy: records throttled (all phases)", proxy_stats["quota"]["throttled"]),
            *(
                [
                    (
                        f"logferry serve ({args.spool_backend} spool), one endpoint, lines/s",
                        results["serve"]["records_per_s"],
                    )
                ]
                if "serve" in results
                else []
            ),
        ],
    )
    path = write_results(args.name, figures, machine)
    print(f"\nresults: {path}  (loadavg at start {machine['loadavg_at_start']})")


if __name__ == "__main__":
    main()
