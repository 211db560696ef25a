"""S3 delivery at real AWS latency: lines/s of one endpoint and of many, through the latency proxy.

Not a test. Starts the patched emulator and `logferry.local.latency_proxy` in front of it (S3:
50 ms added per call, 100 MB/s shared bandwidth, as the issue asks), then drives `S3Sink`s the way
the service worker does: `delivery_threads` threads feed 4 MiB steps and pump, a shared
`aws_io_threads` pool carries the AWS calls (when the sink accepts one), and a sink that has no
room waits for its `wake` instead of polling. Each endpoint has its own clients (connection pool),
like one customer each. Lines are loggen access-log lines (~232 B), gzip by default.

Measured: seconds from the first feed until every endpoint's data is in completed objects
(`durable` at the end, nothing held), hence lines/s; objects and open uploads are checked in the
bucket afterwards (nothing pending, sizes = bytes the sinks uploaded).

Before/after: run the same script against another source tree (the sink without `io_executor`
makes every call inline on the delivery thread, as main did before issue 12):

    .venv/bin/python bench/s3_latency.py                      # this tree
    .venv/bin/python /tmp/main-snapshot/bench/s3_latency.py   # a `git archive main` copy

Options: --endpoints 1,50 --lines-one 600000 --lines-each 40000 --codec gzip --delay-ms 50
--bandwidth-mb 100 --no-proxy (straight to the emulator) --inline (this tree, calls inline).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    assumed_clients,
    machine_info,
    make_s3_role,
    print_table,
    proxy_process,
    start_emulator,
    write_results,
)
from logferry.aws.clients import AwsClients, AwsTarget
from logferry.sinks.s3 import S3Sink
from logferry.sinks.s3_config import S3Endpoint
from logferry.spool.chunk import Chunk
from loggen import generate_bytes

MiB = 1024 * 1024
READ_BYTES = 4 * MiB  # what the worker reads per step
CHUNK_BYTES = 256 * 1024
ACCEPTED_AT = 1_720_132_646.0
CODECS: dict[str, dict[str, Any]] = {
    "gzip": {"compression_codec": "gzip"},
    "zstd": {"compression_codec": "zstd"},
    "none": {},
}
ASYNC_CAPABLE = "io_executor" in inspect.signature(S3Sink).parameters


def make_chunks(base: bytes, lines: int) -> list[Chunk]:
    """Spool-like chunks holding `lines` lines, cycling `base`."""
    pieces: list[tuple[bytes, int]] = []
    start = 0
    while start < len(base):
        end = base.find(b"\n", min(len(base) - 1, start + CHUNK_BYTES - 1)) + 1 or len(base)
        piece = base[start:end]
        pieces.append((piece, piece.count(b"\n")))
        start = end
    chunks: list[Chunk] = []
    offset = left = 0
    left = lines
    while left > 0:
        for piece, n in pieces:
            if n > left:
                cut = 0
                for _ in range(left):
                    cut = piece.index(b"\n", cut) + 1
                piece, n = piece[:cut], left
            chunks.append(Chunk(offset, offset + len(piece), ACCEPTED_AT, piece, n))
            offset += len(piece)
            left -= n
            if left <= 0:
                break
    return chunks


class Endpoint:
    """One endpoint's sink and the worker-like loop that drives it."""

    def __init__(self, sink: S3Sink, chunks: list[Chunk], woken: threading.Event) -> None:
        self.sink = sink
        self.chunks = chunks
        self.woken = woken
        self.done_at = 0.0
        self.timeouts = 0
        self.error: BaseException | None = None

    def run(self, delivery: threading.Semaphore) -> None:
        try:
            self._run(delivery)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self, delivery: threading.Semaphore) -> None:
        sink, chunks = self.sink, self.chunks
        fed = 0
        flushed = False
        wants = getattr(sink, "wants_data", lambda: True)
        while True:
            with delivery:  # one of the service's delivery threads
                if fed < len(chunks) and wants():
                    budget = READ_BYTES
                    while fed < len(chunks) and budget > 0:
                        sink.feed(chunks[fed])
                        budget -= len(chunks[fed].data)
                        fed += 1
                if fed == len(chunks) and not flushed:
                    sink.flush()
                    flushed = True
                delay = sink.pump(caught_up=fed == len(chunks))
                if flushed and not sink.holds_data():
                    self.done_at = time.perf_counter()
                    return
            if fed < len(chunks) and wants():
                continue
            if not self.woken.wait(delay if delay else 1.0):
                self.timeouts += 1  # slept the whole delay: no wake came
            self.woken.clear()


def run_case(
    emulator: Any,
    target_url: str,
    bucket: str,
    role_arn: str,
    *,
    endpoints: int,
    lines_each: int,
    base: bytes,
    codec: str,
    inline: bool,
    delivery_threads: int,
    io_threads: int,
) -> dict[str, Any]:
    chunks = make_chunks(base, lines_each)
    io_pool = ThreadPoolExecutor(io_threads, thread_name_prefix="aws-io")
    creds = assumed_clients(emulator, role_arn, "bench-customer").session.get_credentials()
    run_tag = uuid.uuid4().hex[:6]
    workers: list[Endpoint] = []
    with tempfile.TemporaryDirectory() as state:
        for i in range(endpoints):
            ep = S3Endpoint(
                name=f"lat{i}",
                bucket_name=bucket,
                iam_role=role_arn,
                path=f"{run_tag}/e{i:03d}/",
                **CODECS[codec],
            )
            clients = AwsClients(creds, AwsTarget(endpoint_url=target_url))
            woken = threading.Event()
            kwargs: dict[str, Any] = {}
            if ASYNC_CAPABLE and not inline:
                kwargs = {"io_executor": io_pool, "wake": woken.set}
            sink = S3Sink(ep, clients, Path(state) / f"e{i}", uid_prefix=f"b{i}-", **kwargs)
            sink.recover()
            sink._client()  # connection set-up is not what we measure
            workers.append(Endpoint(sink, chunks, woken))
        delivery = threading.Semaphore(delivery_threads)
        threads = [threading.Thread(target=w.run, args=(delivery,)) for w in workers]
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = max(w.done_at for w in workers) - t0
        load1 = os.getloadavg()[0]
        errors = [repr(w.error) for w in workers if w.error is not None]
        if errors:
            raise SystemExit(f"delivery failed: {errors[:3]}")
        fsyncs = sum(getattr(w.sink, "journal_fsyncs", w.sink._journal.writes * 2) for w in workers)
    io_pool.shutdown(wait=True)
    s3 = emulator.client("s3")
    listed = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{run_tag}/")
    objects = [o for page in listed for o in page.get("Contents", [])]
    uploaded = sum(w.sink.stats.bytes_out for w in workers)
    assert sum(o["Size"] for o in objects) == uploaded, "bucket bytes != bytes uploaded"
    pending = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"{run_tag}/").get("Uploads", [])
    assert not pending, f"{len(pending)} multipart uploads left open"
    total_lines = lines_each * endpoints
    raw = chunks[-1].end * endpoints
    return {
        "endpoints": endpoints,
        "lines": total_lines,
        "raw_mb": raw / 1e6,
        "uploaded_mb": uploaded / 1e6,
        "objects": len(objects),
        "parts": sum(w.sink.stats.parts for w in workers),
        "seconds": seconds,
        "lines_per_s": total_lines / seconds,
        "raw_mb_per_s": raw / 1e6 / seconds,
        "journal_fsyncs": fsyncs,
        "waits_without_wake": sum(w.timeouts for w in workers),
        "loadavg_1m_before": load0,
        "loadavg_1m_after": load1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", default="1,50", help="comma-separated cases")
    parser.add_argument("--lines-one", type=int, default=600_000, help="lines, 1-endpoint case")
    parser.add_argument("--lines-each", type=int, default=40_000, help="lines per endpoint, else")
    parser.add_argument("--codec", choices=sorted(CODECS), default="gzip")
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--bandwidth-mb", type=float, default=100.0, help="S3 MB/s (shared)")
    parser.add_argument("--no-proxy", action="store_true", help="straight to the emulator")
    parser.add_argument("--inline", action="store_true", help="no io pool (calls inline)")
    parser.add_argument("--delivery-threads", type=int, default=8)
    parser.add_argument("--io-threads", type=int, default=64)
    parser.add_argument("--name", default="s3_latency", help="results file name")
    args = parser.parse_args(argv)
    cases = [int(x) for x in args.endpoints.split(",") if x.strip()]
    machine = machine_info()
    print("generating 32 MiB of access-log lines…", file=sys.stderr)
    base = generate_bytes(32 * MiB, seed=1)
    mode = "inline" if (args.inline or not ASYNC_CAPABLE) else "io-pool"
    results = []
    with ExitStack() as stack:
        emulator = stack.enter_context(start_emulator())
        url = emulator.url
        if not args.no_proxy:
            # Its own process, as the network is: in ours it would share the GIL with the
            # delivery threads it is supposed to slow down only by latency and bandwidth.
            url = stack.enter_context(
                proxy_process(
                    emulator.url,
                    s3_delay_ms=args.delay_ms,
                    s3_bandwidth=args.bandwidth_mb * 1e6,
                )
            )
        bucket = f"lat-{uuid.uuid4().hex[:8]}"
        role_arn = make_s3_role(emulator, bucket, "bench-customer", f"lat-{uuid.uuid4().hex[:6]}")
        for n in cases:
            lines = args.lines_one if n == 1 else args.lines_each
            print(f"{n} endpoint(s) × {lines} lines, {mode}…", file=sys.stderr)
            results.append(
                run_case(
                    emulator,
                    url,
                    bucket,
                    role_arn,
                    endpoints=n,
                    lines_each=lines,
                    base=base,
                    codec=args.codec,
                    inline=args.inline,
                    delivery_threads=args.delivery_threads,
                    io_threads=args.io_threads,
                )
            )
    rows = [
        (
            f"{r['endpoints']} endpoint(s)",
            f"{r['lines_per_s']:,.0f} lines/s  {r['raw_mb_per_s']:.1f} MB/s raw  "
            f"{r['seconds']:.1f} s  {r['objects']} obj {r['parts']} parts  "
            f"load {r['loadavg_1m_before']:.1f}→{r['loadavg_1m_after']:.1f}",
        )
        for r in results
    ]
    link = "no proxy" if args.no_proxy else f"{args.delay_ms:g} ms/call, {args.bandwidth_mb:g} MB/s"
    print_table(f"S3 at latency ({link}; {args.codec}; {mode})", rows)
    doc = {
        "mode": mode,
        "codec": args.codec,
        "delay_ms": None if args.no_proxy else args.delay_ms,
        "bandwidth_mb_per_s": None if args.no_proxy else args.bandwidth_mb,
        "delivery_threads": args.delivery_threads,
        "io_threads": args.io_threads,
        "avg_line_bytes": len(base) / base.count(b"\n"),
        "results": results,
    }
    path = write_results(args.name, doc, machine)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
