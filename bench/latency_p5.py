"""P5: how long a line takes to become visible at the destination, at real AWS round trips.

What runs: the patched emulator, the latency proxy (`logferry.local.latency_proxy`) in front of
it (S3: `--s3-delay-ms` per call and `--s3-bandwidth`; Kinesis: `--kinesis-delay-ms` per call;
STS/IAM: `--sts-delay-ms`), one `logferry serve` whose every AWS call goes through the proxy, and
this process sending lines at a steady rate (one body every 100 ms). The proxy runs in a
process of its own, so its work does not slow the sender. Each line carries the time it was
sent; the destination is read directly from the emulator (not through the proxy):

- S3 (`--mode s3`): once every line is delivered, every object is downloaded and each line's
  latency = its object's LastModified rounded up to the next second (the emulator keeps whole
  seconds) − when it was sent, so the reading adds up to 1 s and costs nothing while the load
  runs. `--watch poll` lists the bucket every `--poll` s during the load instead (latency = first
  listed − sent; the downloads then share this process with the sender). Target: ≤ period + 5 s.
  The rate is
  `--s3-load` × `--s3-capacity` lines/s (capacity: the end-to-end rate of one endpoint,
  bench/s3_latency.py / s3_throughput.py).
- Kinesis (`--mode kinesis`): latency = the record's ApproximateArrivalTimestamp (set by the
  emulator when PutRecords stored it) − when the line was sent. Target: p99 ≤ 1 s at
  `--kinesis-load` (default 50 %) of the stream's quota (shards × 1,000 records/s; one line per
  record, Fastly's default).

    .venv/bin/python bench/latency_p5.py [--mode s3|kinesis|both] [--seconds 40] [--period 5]
        [--s3-capacity 200000] [--s3-load 0.5] [--shards 8] [--kinesis-load 0.5]
        → bench/results/latency_p5.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import httpx

from common import (
    Emulator,
    ProcSampler,
    Serve,
    machine_info,
    make_kinesis_role,
    make_s3_role,
    note,
    print_table,
    proxy_process,
    serve_config,
    start_emulator,
    wait_until,
    write_results,
)

TOKEN = "bench-p5-token-0000000000000000000"
CUSTOMER = "p5-customer"
PAD = "x" * 150  # lines of ~230 B like the access-log lines of the other benches
WARMUP = 5.0
"""Seconds of sending left out of `latency_after_warmup` (role assumed, shards listed, probe)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("s3", "kinesis", "both"), default="both")
    p.add_argument("--seconds", type=float, default=40.0, help="steady sending time per mode")
    p.add_argument("--period", type=int, default=5, help="S3 endpoint period (s)")
    p.add_argument("--s3-capacity", type=float, default=200_000, help="lines/s at 100 %%")
    p.add_argument("--s3-load", type=float, default=0.5)
    p.add_argument("--s3-delay-ms", type=float, default=50.0)
    p.add_argument("--s3-bandwidth", type=float, default=100e6, help="bytes/s")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--kinesis-load", type=float, default=0.5)
    p.add_argument("--kinesis-delay-ms", type=float, default=30.0)
    p.add_argument("--sts-delay-ms", type=float, default=20.0)
    p.add_argument(
        "--watch",
        choices=("after", "poll"),
        default="after",
        help="S3: read LastModified after the run (default) or list the bucket during it",
    )
    p.add_argument("--poll", type=float, default=0.5, help="--watch poll: listing interval (s)")
    p.add_argument("--name", default="latency_p5")
    return p.parse_args(argv)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "lines": len(latencies),
        "p50_s": percentile(latencies, 0.50),
        "p90_s": percentile(latencies, 0.90),
        "p99_s": percentile(latencies, 0.99),
        "max_s": round(max(latencies), 3) if latencies else None,
    }


def send_steady(url: str, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """One body every 100 ms holding rate/10 lines, each `{"t": sent, "i": n, ...}`."""
    per_body = max(1, round(rate / 10))
    sent = 0
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
    t0 = time.monotonic()
    late = 0.0
    with httpx.Client(headers=headers, timeout=60) as client:
        tick = 0
        while time.monotonic() - t0 < seconds:
            due = t0 + tick * 0.1
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            now = time.time()
            body = "".join(
                f'{{"t":{now:.6f},"i":{sent + k},"tag":"{tag}","pad":"{PAD}"}}\n'
                for k in range(per_body)
            ).encode()
            r = client.post(url, content=body)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 202:
                sent += per_body
            tick += 1
    elapsed = time.monotonic() - t0
    return {
        "lines_sent": sent,
        "seconds": round(elapsed, 2),
        "lines_per_s": round(sent / elapsed),
        "statuses": statuses,
        "sender_max_late_s": round(late, 3),
    }


class BucketWatcher:
    """Lists the bucket every `poll` s and records, per line, first-listed time − sent time."""

    def __init__(self, emulator: Emulator, bucket: str, poll: float) -> None:
        self.s3 = emulator.client("s3")
        self.bucket = bucket
        self.poll = poll
        self.seen: set[str] = set()
        self.latencies: list[float] = []
        self.sent_at: list[float] = []
        self.ids: set[int] = set()
        self.duplicates = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.scan()
            self.stop.wait(self.poll)

    def scan(self) -> None:
        listed_at = time.time()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.s3.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                key = item["Key"]
                if key in self.seen:
                    continue
                self.seen.add(key)
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                self._lines(_gunzip(body) if key.endswith(".gz") else body, listed_at)
            token = page.get("NextContinuationToken")
            if not token:
                break

    def _lines(self, data: bytes, listed_at: float) -> None:
        for raw in data.splitlines():
            line = json.loads(raw)
            if line["i"] in self.ids:
                self.duplicates += 1
                continue
            self.ids.add(line["i"])
            self.latencies.append(listed_at - line["t"])
            self.sent_at.append(line["t"])


def read_bucket(emulator: Emulator, bucket: str) -> BucketWatcher:
    """After the run: every line, its object's LastModified (whole seconds, rounded up) − sent."""
    found = BucketWatcher(emulator, bucket, 0.0)
    s3 = found.s3
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        for item in page.get("Contents", []):
            visible = item["LastModified"].timestamp() + 1.0
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found._lines(_gunzip(body) if item["Key"].endswith(".gz") else body, visible)
        token = page.get("NextContinuationToken")
        if not token:
            return found


def _gunzip(body: bytes) -> bytes:
    out = []
    while body:
        d = zlib.decompressobj(wbits=31)
        out.append(d.decompress(body))
        body = d.unused_data
    return b"".join(out)


def read_stream(emulator: Emulator, stream_arn: str) -> tuple[list[float], list[float], int, int]:
    """Per line: ApproximateArrivalTimestamp − sent time → (latencies, sent times, records,
    duplicates)."""
    kinesis = emulator.client("kinesis")
    latencies: list[float] = []
    sent_at: list[float] = []
    ids: set[int] = set()
    records = duplicates = 0
    for shard in kinesis.list_shards(StreamARN=stream_arn)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamARN=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            out = kinesis.get_records(ShardIterator=iterator, Limit=10_000, StreamARN=stream_arn)
            for record in out["Records"]:
                records += 1
                for raw in record["Data"].splitlines():
                    line = json.loads(raw)
                    if line["i"] in ids:
                        duplicates += 1
                        continue
                    ids.add(line["i"])
                    arrived = record["ApproximateArrivalTimestamp"].timestamp()
                    latencies.append(arrived - line["t"])
                    sent_at.append(line["t"])
            if not out["Records"] and out.get("MillisBehindLatest", 0) == 0:
                break
            iterator = out.get("NextShardIterator")
    return latencies, sent_at, records, duplicates


def run_s3(emulator: Emulator, proxy_url: str, work: Path, args: argparse.Namespace) -> Any:
    bucket = f"p5-{uuid.uuid4().hex[:8]}"
    role = make_s3_role(emulator, bucket, CUSTOMER, f"p5-s3-{uuid.uuid4().hex[:6]}")
    endpoint = {
        "type": "s3",
        "name": "s3",
        "bucket_name": bucket,
        "region": "us-east-1",
        "iam_role": role,
        "period": args.period,
        "compression_codec": "gzip",
    }
    return _run(emulator, proxy_url, work, args, endpoint, "s3", bucket=bucket)


def run_kinesis(emulator: Emulator, proxy_url: str, work: Path, args: argparse.Namespace) -> Any:
    stream = f"p5-{uuid.uuid4().hex[:8]}"
    arn, role = make_kinesis_role(emulator, stream, args.shards, CUSTOMER, f"p5-k-{stream}")
    endpoint = {
        "type": "kinesis",
        "name": "kin",
        "topic": stream,
        "region": "us-east-1",
        "iam_role": role,
    }
    return _run(emulator, proxy_url, work, args, endpoint, "kinesis", stream_arn=arn)


def _run(
    emulator: Emulator,
    proxy_url: str,
    work: Path,
    args: argparse.Namespace,
    endpoint: dict[str, Any],
    mode: str,
    *,
    bucket: str | None = None,
    stream_arn: str | None = None,
) -> dict[str, Any]:
    workdir = work / mode
    workdir.mkdir()
    config = serve_config(
        emulator,
        workdir,
        aws={"endpoint_url": proxy_url},
        vendor={"sts_endpoints": {"us-east-1": proxy_url, "us-west-2": proxy_url}},
        customers=[{"id": CUSTOMER, "token_env": "P5_TOKEN", "endpoints": [endpoint]}],
    )
    serve = Serve(emulator, config, workdir, env={**os.environ, "P5_TOKEN": TOKEN}).start()
    sampler = ProcSampler({"serve": serve.pid}).start()
    url = f"{serve.url}/v1/ingest/{CUSTOMER}/{endpoint['name']}"
    if mode == "s3":
        rate = args.s3_capacity * args.s3_load
        target = args.period + 5
    else:
        rate = args.shards * 1000 * args.kinesis_load
        target = 1.0
    polling = bucket is not None and args.watch == "poll"
    watcher = BucketWatcher(emulator, bucket, args.poll) if polling else None
    try:
        if watcher:
            watcher.thread.start()
        note(f"{mode}: sending {rate:,.0f} lines/s for {args.seconds:.0f} s through the proxy")
        load = send_steady(url, rate, args.seconds, mode)
        total = load["lines_sent"]

        def delivered() -> bool:
            return serve.metric_sum("logferry_delivered_lines_total") >= total

        wait_until(delivered, timeout=args.period + 120, interval=0.25, what="all delivered")
        if watcher:
            wait_until(lambda: len(watcher.ids) >= total, 60, interval=0.5, what="all listed")
            watcher.stop.set()
            watcher.thread.join()
        elif bucket is not None:
            watcher = read_bucket(emulator, bucket)
        if watcher:
            latencies, duplicates, landed = watcher.latencies, watcher.duplicates, len(watcher.ids)
            sent_at = watcher.sent_at
        else:
            assert stream_arn is not None
            latencies, sent_at, _records, duplicates = read_stream(emulator, stream_arn)
            landed = len(latencies)
        first = min(sent_at) if sent_at else 0.0
        steady = [v for v, t in zip(latencies, sent_at, strict=True) if t >= first + WARMUP]
        stats = sampler.window("serve")
    finally:
        sampler.stop()
        serve.terminate()
    result = {
        "mode": mode,
        "watch": args.watch if bucket else None,
        "target_s": target,
        "rate_lines_per_s": round(rate),
        **load,
        "landed_lines": landed,
        "duplicates": duplicates,
        "latency": summary(latencies),
        "latency_after_warmup": summary(steady),
        "within_target": sum(1 for v in latencies if v <= target),
        "serve": stats,
    }
    lat = result["latency"]
    steady_lat = result["latency_after_warmup"]
    print_table(
        f"P5 {mode}",
        [
            ("sent lines/s", load["lines_per_s"]),
            ("landed / sent", f"{landed} / {total}"),
            ("duplicates", duplicates),
            ("p50 / p99 / max (s)", f"{lat['p50_s']} / {lat['p99_s']} / {lat['max_s']}"),
            ("after the first 5 s", "{p50_s} / {p99_s} / {max_s}".format(**steady_lat)),
            ("target (s)", target),
        ],
    )
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_info()
    results: dict[str, Any] = {"args": vars(args)}
    with (
        tempfile.TemporaryDirectory(prefix="lf-p5-") as tmp,
        start_emulator() as emulator,
        proxy_process(
            emulator.url,
            s3_delay_ms=args.s3_delay_ms,
            s3_bandwidth=args.s3_bandwidth,
            kinesis_delay_ms=args.kinesis_delay_ms,
            default_delay_ms=args.sts_delay_ms,  # STS and IAM
        ) as proxy_url,
    ):
        work = Path(tmp)
        if args.mode in ("s3", "both"):
            results["s3"] = run_s3(emulator, proxy_url, work, args)
        if args.mode in ("kinesis", "both"):
            results["kinesis"] = run_kinesis(emulator, proxy_url, work, args)
    write_results(args.name, results, machine)


if __name__ == "__main__":
    main()
