"""End-to-end S3 throughput: HTTP loader → `logferry serve` → gzip files in the emulator's bucket.

What runs: the patched emulator (IAM enforcement on), a bucket and the guide's role made by our
own `role create` code, one `logferry serve` process with one S3 endpoint (`period` short, so the
last file is not held open for long), and this process posting ~1 MiB bodies of realistic
access-log lines (bench/loggen.py) on a few keep-alive connections.

Figures:
- bulk ingest: lines/s and MB/s (uncompressed) from the first request to the last 202;
- end to end: from the first request until every line is delivered — the serve process counts a
  line delivered only after S3 completed the object holding it (PutObject or
  CompleteMultipartUpload answered), polled from /metrics every 0.25 s; the bucket is then read
  back as the customer's admin and its lines counted (decompressed) to prove it;
- serve peak RSS (VmHWM and 100 ms samples) and CPU seconds (utime+stime); the emulator's and
  the loader's CPU seconds too, since all three share this machine's cores.

    .venv/bin/python bench/s3_throughput.py [--lines 2000000] [--connections 4] [--body-mib 1]
        [--period 5] [--codec gzip] [--spool-backend local|nats]

`--spool-backend nats` runs the same load with serve's spool on a single loopback nats-server
(JetStream, `sync_interval: always`) that the bench starts; its CPU and peak RSS are reported
beside serve's (both are what the NATS backend costs on this box).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    MiB,
    ProcSampler,
    Serve,
    SpoolBackend,
    add_server_option,
    add_spool_backend_option,
    count_bucket_lines,
    loggen_bodies,
    machine_info,
    make_s3_role,
    mib,
    note,
    post_bodies,
    print_table,
    serve_config,
    server_options,
    spool_backend,
    start_emulator,
    write_results,
)

TOKEN = "bench-customer-token-000000000000"
CODEC_FIELDS = {
    "gzip": {"compression_codec": "gzip"},
    "zstd": {"compression_codec": "zstd"},
    "snappy": {"compression_codec": "snappy"},
    "none": {},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=2_000_000)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--body-mib", type=float, default=1.0)
    p.add_argument("--period", type=int, default=1, help="endpoint period (s)")
    p.add_argument("--codec", choices=sorted(CODEC_FIELDS), default="gzip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delivery-threads", type=int, default=8)
    p.add_argument("--timeout", type=float, default=900.0, help="max seconds for delivery")
    p.add_argument("--name", default="s3_throughput", help="results file name")
    p.add_argument("--repeat", type=int, default=1, help="runs (results: each run + medians)")
    p.add_argument(
        "--loader",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client of the loader: raw (a minimal keep-alive client, the default since "
        "2026-12-01) or httpx (the loader of earlier figures; ~1 CPU s more on this box)",
    )
    add_server_option(p)
    add_spool_backend_option(p)
    return p.parse_args(argv)


def busy_until_s(samples: list[tuple[float, int, float]], t0: float, t1: float) -> float | None:
    """Seconds from t0 to the last moment the serve process used > 25 % of a core (0.5 s
    windows) before t1: when compression and uploads were done and only the period's end was
    awaited (the rest of the tail is waiting, not work)."""
    rows = [s for s in samples if t0 <= s[0] <= t1]
    last = None
    for i in range(5, len(rows)):
        (ta, _, ca), (tb, _, cb) = rows[i - 5], rows[i]
        if tb > ta and (cb - ca) / (tb - ta) > 0.25:
            last = tb
    return round(last - t0, 2) if last is not None else None


def run(
    args: argparse.Namespace,
    on_serve: Callable[[Serve], None] | None = None,
    on_done: Callable[[Serve], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole benchmark; `on_serve` runs once serve is ready (profile_s3 attaches py-spy),
    `on_done` after delivery completed and before serve stops (its dict joins the results)."""
    machine = machine_info()
    bodies = loggen_bodies(args.lines, int(args.body_mib * MiB), args.seed)
    total_bytes = sum(len(b) for b, _ in bodies)
    total_lines = sum(n for _, n in bodies)
    note(f"{total_lines:,} lines, {total_bytes / 1e6:,.0f} MB in {len(bodies)} bodies")

    workdir = Path(tempfile.mkdtemp(prefix="logferry-bench-s3-"))
    with spool_backend(args.spool_backend, workdir, args.nats_shards) as backend:
        return _run(args, machine, bodies, workdir, backend, on_serve, on_done)


def _run(
    args: argparse.Namespace,
    machine: dict[str, Any],
    bodies: list[tuple[bytes, int]],
    workdir: Path,
    backend: SpoolBackend,
    on_serve: Callable[[Serve], None] | None,
    on_done: Callable[[Serve], dict[str, Any]] | None,
) -> dict[str, Any]:
    total_bytes = sum(len(b) for b, _ in bodies)
    total_lines = sum(n for _, n in bodies)
    emulator = start_emulator()
    serve: Serve | None = None
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        customer = "bench-customer"
        role_arn = make_s3_role(emulator, bucket, customer, "bench-s3-logging")
        endpoint = {
            "type": "s3",
            "name": "s3",
            "bucket_name": bucket,
            "iam_role": role_arn,
            "path": "logs/",
            "period": args.period,
            **CODEC_FIELDS[args.codec],
        }
        config = serve_config(
            emulator,
            workdir,
            server={"delivery_threads": args.delivery_threads, **server_options(args.server)},
            spool=backend.spool_table(),
            customers=[{"id": customer, "token_env": "BENCH_TOKEN", "endpoints": [endpoint]}],
        )
        serve = Serve(emulator, config, workdir, env={"BENCH_TOKEN": TOKEN}).start()
        sampler = ProcSampler(
            {
                "serve": serve.pid,
                "emulator": emulator.pid,
                "loader": os.getpid(),
                **backend.sampled(),
            }
        ).start()
        idle_rss = sampler.window("serve")["last_rss_mib"]
        if on_serve is not None:
            on_serve(serve)

        delivered_at: list[float] = []
        progress: list[tuple[float, float]] = []
        stop_poll = threading.Event()

        loaded = threading.Event()

        def poll() -> None:
            # Nothing can be fully delivered before the last 202, so /metrics (a request to
            # serve, parsed here, both on this box's two cores) is read only from then on, every
            # 0.05 s so the end-to-end time is not rounded up by more than that.
            loaded.wait()
            while not stop_poll.wait(0.05):
                try:
                    n = serve.metric_sum("logferry_delivered_lines_total")
                except Exception:
                    continue
                now = time.monotonic()
                progress.append((now, n))
                if n >= total_lines:
                    delivered_at.append(now)
                    return

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        note(f"loading on {args.connections} connections")
        load = post_bodies(
            f"{serve.url}/v1/ingest/{customer}/s3",
            TOKEN,
            bodies,
            connections=args.connections,
            client=args.loader,
        )
        loaded.set()
        if load.errors or load.accepted_lines != total_lines:
            raise RuntimeError(f"load failed: {load.statuses} {load.errors[:3]}")
        note(f"ingest done in {load.ingest_seconds:.1f}s; waiting for delivery")
        poller.join(args.timeout)
        stop_poll.set()
        if not delivered_at:
            raise RuntimeError(f"not delivered within {args.timeout}s: {progress[-3:]}")
        t_end = delivered_at[0]
        counted = count_bucket_lines(emulator, bucket)
        t_visible = time.monotonic()
        extra = on_done(serve) if on_done is not None else {}
        sampler.stop()
        status = serve.status(customer, "s3")
    finally:
        if serve is not None:
            serve.terminate()
        emulator.stop()

    bulk_s = load.ingest_seconds
    e2e_s = t_end - load.first_request
    serve_run = sampler.window("serve", load.first_request, t_end)
    emu_run = sampler.window("emulator", load.first_request, t_end)
    loader_run = sampler.window("loader", load.first_request, load.last_202)
    bulk_serve = sampler.window("serve", load.first_request, load.last_202)
    busy_until = busy_until_s(sampler.samples["serve"], load.first_request, t_end)
    nats_run = sampler.window("nats", load.first_request, t_end) if backend.nats_pid else {}
    figures = {
        "spool_backend": backend.name,
        "lines": total_lines,
        "input_mb": round(total_bytes / 1e6, 1),
        "avg_line_bytes": round(total_bytes / total_lines, 1),
        "bodies": len(bodies),
        "connections": args.connections,
        "period_s": args.period,
        "codec": args.codec,
        "bulk_seconds": round(bulk_s, 2),
        "bulk_lines_per_s": round(total_lines / bulk_s),
        "bulk_mb_per_s": round(total_bytes / 1e6 / bulk_s, 1),
        "e2e_seconds": round(e2e_s, 2),
        "e2e_lines_per_s": round(total_lines / e2e_s),
        "e2e_mb_per_s": round(total_bytes / 1e6 / e2e_s, 1),
        "tail_seconds": round(t_end - load.last_202, 2),
        "serve_busy_until_s": busy_until,
        "verified_by_count_seconds": round(t_visible - load.first_request, 2),
        "lines_in_bucket": counted["lines"],
        "objects": counted["objects"],
        "stored_mb": round(counted["stored_bytes"] / 1e6, 1),
        "compression_ratio": round(total_bytes / max(1, counted["stored_bytes"]), 2),
        "serve_idle_rss_mib": idle_rss,
        "serve_peak_rss_mib": mib(sampler.peak_rss("serve")),
        "serve_cpu_seconds": serve_run["cpu_seconds"],
        "serve_cpu_seconds_bulk": bulk_serve["cpu_seconds"],
        "emulator_cpu_seconds": emu_run["cpu_seconds"],
        "emulator_peak_rss_mib": mib(sampler.peak_rss("emulator")),
        "loader_cpu_seconds": loader_run["cpu_seconds"],
        "nats_cpu_seconds": nats_run.get("cpu_seconds"),
        "nats_peak_rss_mib": mib(sampler.peak_rss("nats")) if backend.nats_pid else None,
        "http_statuses": load.statuses,
        "status_delivered_lines": status["lines"]["delivered"],
        "delivered_progress": [(round(t - load.first_request, 2), n) for t, n in progress][::4],
        **extra,
    }
    ok = counted["lines"] == total_lines
    figures["all_lines_in_bucket"] = ok
    figures["targets"] = {
        "e2e_lines_per_s>=250000": figures["e2e_lines_per_s"] >= 250_000,
        "serve_peak_rss<=256MiB": figures["serve_peak_rss_mib"] <= 256,
    }
    path = write_results(args.name, figures, machine)
    print_table(
        f"S3 end to end ({args.codec}, {total_lines:,} lines, {args.connections} connections, "
        f"period {args.period}s, {backend.name} spool)",
        [
            ("avg line bytes", figures["avg_line_bytes"]),
            ("bulk ingest lines/s", figures["bulk_lines_per_s"]),
            ("bulk ingest MB/s", figures["bulk_mb_per_s"]),
            ("end-to-end lines/s", figures["e2e_lines_per_s"]),
            ("end-to-end MB/s", figures["e2e_mb_per_s"]),
            (
                "bulk / end-to-end / tail s",
                f"{bulk_s:.1f} / {e2e_s:.1f} / {t_end - load.last_202:.1f}",
            ),
            ("serve busy until s (then waits for period end)", busy_until),
            ("lines in bucket (counted)", f"{counted['lines']:,} of {total_lines:,}"),
            ("objects / stored MB", f"{counted['objects']} / {figures['stored_mb']}"),
            ("serve peak RSS MiB (idle)", f"{figures['serve_peak_rss_mib']} ({idle_rss})"),
            (
                "serve CPU s (bulk phase)",
                f"{serve_run['cpu_seconds']} ({bulk_serve['cpu_seconds']})",
            ),
            ("emulator CPU s", emu_run["cpu_seconds"]),
            ("loader CPU s", loader_run["cpu_seconds"]),
            *(
                [
                    (
                        "nats-server CPU s / peak RSS MiB",
                        f"{nats_run.get('cpu_seconds')} / {figures['nats_peak_rss_mib']}",
                    )
                ]
                if backend.nats_pid
                else []
            ),
            ("target >= 250,000 lines/s", figures["targets"]["e2e_lines_per_s>=250000"]),
            ("target RSS <= 256 MiB", figures["targets"]["serve_peak_rss<=256MiB"]),
        ],
    )
    print(f"\nresults: {path}")
    if not ok:
        raise SystemExit(f"bucket holds {counted['lines']} lines, expected {total_lines}")
    return figures


MEDIAN_KEYS = (
    "bulk_lines_per_s",
    "bulk_mb_per_s",
    "e2e_lines_per_s",
    "e2e_mb_per_s",
    "tail_seconds",
    "serve_busy_until_s",
    "serve_peak_rss_mib",
    "serve_cpu_seconds",
    "nats_cpu_seconds",
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat <= 1:
        run(args)
        return 0
    runs = [run(args) for _ in range(args.repeat)]
    medians = {}
    for key in MEDIAN_KEYS:
        values = sorted(r[key] for r in runs if r[key] is not None)
        medians[key] = values[len(values) // 2] if values else None
    doc = {"repeat": args.repeat, "median": medians, "runs": runs}
    doc["targets"] = {
        "e2e_lines_per_s>=250000": (medians["e2e_lines_per_s"] or 0) >= 250_000,
        "serve_peak_rss<=256MiB": max(r["serve_peak_rss_mib"] for r in runs) <= 256,
    }
    path = write_results(args.name, doc, machine_info())
    rows = [(k, f"{medians[k]}  (runs: {', '.join(str(r[k]) for r in runs)})") for k in MEDIAN_KEYS]
    print_table(f"S3 end to end: medians of {args.repeat} runs", rows)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
