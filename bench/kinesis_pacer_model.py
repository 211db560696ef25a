"""The Kinesis sink's own ceiling at a given round trip, without the emulator's CPU.

`bench/kinesis_latency.py` measures the sink through the latency proxy, the quota model and the
emulator; on this 2-core box the emulator (and the proxy, in Python) stop near 8,000-19,000
records/s, far under a 64-shard stream's 64,000. This bench keeps everything of the sink real
(`KinesisSink`, its shared pacer, a real thread pool driven like the worker drives it) and puts
an in-process stand-in where botocore's client would be: `put_records` notes each record's shard
and the moment the call reached it, sleeps `--rtt-ms` (the round trip, + uniform
`--jitter-ms`) and answers every record accepted. So the figure is what the sink's logic
allows (pacer, calls in flight, records per call) plus its own CPU, not the emulator's.
The stand-in is not Kinesis and does not throttle; the check is the sends themselves: the most
records any shard got in any one-second window of arrival times (the budget is 1,000).

    .venv/bin/python bench/kinesis_pacer_model.py [--shards 64] [--rtt-ms 100] [--jitter-ms 3]
        [--seconds 12] [--warmup 3] [--max-in-flight N] [--name kinesis_pacer_model]
"""

from __future__ import annotations

import argparse
import bisect
import random
import resource
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import machine_info, note, print_table, write_results
from logferry.errors import TransientError
from logferry.sinks.kinesis import KinesisSink
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.spool.chunk import Chunk

HASH_SPACE = 2**128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--rtt-ms", type=float, default=100.0)
    p.add_argument("--jitter-ms", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--name", default="kinesis_pacer_model")
    return p.parse_args(argv)


class StandIn:
    """Where botocore's Kinesis client would be: one stream of `shards` even hash ranges."""

    def __init__(self, shards: int, rtt: float, jitter: float) -> None:
        self.width = HASH_SPACE // shards
        self.count = shards
        self.ids = [f"shardId-{i:012d}" for i in range(shards)]
        self.rtt, self.jitter = rtt, jitter
        self.arrivals: dict[int, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.meta = type("Meta", (), {"endpoint_url": "http://stand-in.invalid"})()

    def list_shards(self, **_: Any) -> dict[str, Any]:
        shards = []
        for i, shard_id in enumerate(self.ids):
            end = HASH_SPACE - 1 if i == self.count - 1 else (i + 1) * self.width - 1
            shards.append(
                {
                    "ShardId": shard_id,
                    "HashKeyRange": {
                        "StartingHashKey": str(i * self.width),
                        "EndingHashKey": str(end),
                    },
                    "SequenceNumberRange": {"StartingSequenceNumber": "0"},
                }
            )
        return {"Shards": shards}

    def describe_stream_summary(self, **_: Any) -> dict[str, Any]:
        return {"StreamDescriptionSummary": {}}

    def put_records(self, *, StreamARN: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        now = time.monotonic()
        results = []
        with self.lock:
            for record in Records:
                i = min(int(record["ExplicitHashKey"]) // self.width, self.count - 1)
                self.arrivals[i].append(now)
                results.append({"ShardId": self.ids[i], "SequenceNumber": "0"})
        time.sleep(self.rtt + random.uniform(0, self.jitter))
        return {"FailedRecordCount": 0, "Records": results}


class StandInClients:
    """The one method of AwsClients the sink uses."""

    def __init__(self, client: StandIn) -> None:
        self._client = client

    def client(self, service: str, region: str) -> StandIn:
        return self._client


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_info()
    stand_in = StandIn(args.shards, args.rtt_ms / 1000, args.jitter_ms / 1000)
    endpoint = KinesisEndpoint(
        name="model",
        topic="model",
        region="us-east-1",
        iam_role="arn:aws:iam::123456789012:role/model",
        # Unset unless asked (older code, run with its PYTHONPATH, does not take None).
        **({} if args.max_in_flight is None else {"max_in_flight_calls": args.max_in_flight}),
    )
    line = b"x" * 232 + b"\n"
    data = line * 500
    position = 0
    woken = threading.Event()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with ThreadPoolExecutor(64, thread_name_prefix="aws-io") as pool:
        sink = KinesisSink(
            endpoint,
            StandInClients(stand_in),  # type: ignore[arg-type]
            io_executor=pool,
            wake=woken.set,
            hostname="bench",
        )
        sink.open(0)
        start = time.monotonic()
        until = start + args.seconds
        note(f"{args.shards} shards, {args.rtt_ms:g} ms round trip, {args.seconds:g} s")
        pumps = 0
        while time.monotonic() < until:
            while sink.wants_data():
                sink.feed(Chunk(position, position + len(data), time.time(), data, 500))
                position += len(data)
            woken.clear()
            pumps += 1
            try:
                delay = sink.pump(caught_up=True)
            except TransientError:
                time.sleep(0.5)
                continue
            if delay is None or delay > 0:
                woken.wait(0.05 if delay is None else delay)
        sink.discard()
        pool.shutdown(wait=False, cancel_futures=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    warm = start + args.warmup
    counted = 0
    worst = 0
    for arrivals in stand_in.arrivals.values():
        arrivals.sort()
        counted += bisect.bisect_left(arrivals, until) - bisect.bisect_left(arrivals, warm)
        for i, t in enumerate(arrivals):
            worst = max(worst, bisect.bisect_left(arrivals, t + 1.0) - i)
    rate = counted / (until - warm)
    quota = 1000 * args.shards
    stats = sink.stats
    figures = {
        "shards": args.shards,
        "rtt_ms": args.rtt_ms,
        "jitter_ms": args.jitter_ms,
        "max_in_flight_calls": args.max_in_flight,
        "records_per_s": round(rate),
        "share_of_quota": round(rate / quota, 3),
        "calls": stats.calls,
        "records_per_call": round(stats.records / stats.calls) if stats.calls else None,
        "max_in_flight_seen": stats.max_in_flight_seen,
        "pumps_per_s": round(pumps / args.seconds),
        "worst_shard_records_in_1s": worst,
        "process_cpu_s": round(cpu, 2),
        "cpu_us_per_record": round(cpu / max(1, stats.records) * 1e6, 1),
    }
    print_table(
        f"KinesisSink against a stand-in answering in {args.rtt_ms:g} ms, {args.shards} shards",
        [
            ("records/s (after warm-up)", figures["records_per_s"]),
            ("share of the quota", figures["share_of_quota"]),
            ("records per call", figures["records_per_call"]),
            ("most calls in flight", figures["max_in_flight_seen"]),
            ("most records on one shard in any 1 s", worst),
            ("process CPU µs per record", figures["cpu_us_per_record"]),
        ],
    )
    path = write_results(args.name, figures, machine)
    print(f"\nresults: {path}  (loadavg at start {machine['loadavg_at_start']})")


if __name__ == "__main__":
    main()
