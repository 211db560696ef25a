"""Many small active tenants: N customers, each with its own role and S3 endpoint, each sending a
few lines every second to a real `logferry serve` — the traffic shape a vendor really has.

Setup: the emulator; N customers, each with its own bucket and IAM role made by our own
`role create` code (external ID = customer id); one `logferry serve` with the N customers and
one S3 endpoint each (period P) in its config, one ingest token per customer.
Load: every customer POSTs L lines once a second for D seconds (customers spread evenly over the
second), from `--senders` processes each running an asyncio loop, one keep-alive connection
per customer (a minimal HTTP/1.1 client: httpx would make the sender the bottleneck).
Each line names its customer, request and index, so what lands is counted by content.
Then: wait until /metrics says every line was delivered (at most P + `--drain` s), stop serve,
download every object, and report:
- serve peak RSS (VmHWM and 10 Hz samples) and RSS per active customer (minus RSS at ready),
- serve CPU seconds (send + drain) and µs per line; sender CPU separately,
- lines sent (202) / landed / duplicated / missing (exactly once = 0 and 0),
- lag per line: the object's LastModified (1 s resolution, rounded up) minus the time the
  request that carried the line was accepted; median / p99 / max,
- requests/s achieved, and how late the senders ran behind their schedule.
`--profile` attaches `py-spy record` (raw, --threads, --gil, non-blocking) to serve during the
load and folds the stacks as bench/profile_s3.py does (--gil: only samples holding the GIL, so a
thread waiting for it inside a C call is not counted as busy).
`--ingest-only` measures the request path alone (period 3600 s: no object is written while the
load runs); a second serve on the same spool with period 1 s then delivers every line, so
exactly once is still checked.

    .venv/bin/python bench/active_tenants.py                      # 200 × 20 lines/s × 40 s, P 5
    .venv/bin/python bench/active_tenants.py --customers 1000 --period 30 --seconds 180 --senders 2
    .venv/bin/python bench/active_tenants.py --customers 200 --senders 2 --ingest-only
    .venv/bin/python bench/active_tenants.py --senders 2 --spool-backend nats

`--spool-backend nats`: serve's spool on a single loopback nats-server the bench starts
(JetStream, `sync_interval: always`); its CPU and peak RSS are reported beside serve's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    CpuBudget,
    Emulator,
    ProcSampler,
    Serve,
    SpoolBackend,
    _decompress,
    add_server_option,
    add_spool_backend_option,
    machine_info,
    make_s3_tenants,
    mib,
    note,
    print_table,
    read_cpu_split,
    read_rss,
    s3_tenant_customers,
    serve_config,
    server_options,
    spool_backend,
    start_emulator,
    write_results,
)

PAD = "GET /assets/img/logo.png HTTP/1.1 200 5123 Mozilla/5.0 (X11; Linux x86_64)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--period", type=int, default=5, help="S3 endpoint period, seconds")
    p.add_argument("--lines", type=int, default=20, help="lines per customer per second")
    p.add_argument("--seconds", type=int, default=40, help="how long every customer sends")
    p.add_argument("--senders", type=int, default=1, help="sender processes")
    p.add_argument("--drain", type=float, default=90.0, help="extra seconds to wait for delivery")
    p.add_argument("--delivery-threads", type=int, default=8)
    p.add_argument("--aws-io-threads", type=int, default=64, help="server.aws_io_threads")
    p.add_argument("--activation-threads", type=int, default=None, help="server.activation_threads")
    p.add_argument(
        "--warmup",
        type=float,
        help="seconds after the first request that are not steady state (default: period + 10): "
        "every endpoint's first activation (AssumeRole, client, healthcheck, spool) falls here",
    )
    p.add_argument(
        "--ingest-only",
        action="store_true",
        help="measure the request path alone: the period is 3600 s, nothing is delivered while "
        "the load runs, serve's SIGTERM flush delivers it all (exactly once is still checked; "
        "lag is not meaningful)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the serve process")
    p.add_argument(
        "--profile-wall",
        action="store_true",
        help="with --profile: sample every thread's wall clock (py-spy --idle), not only the "
        "GIL's holder: shows what a thread waits on",
    )
    p.add_argument(
        "--emulator-cpu",
        type=float,
        default=None,
        metavar="F",
        help="put the emulator in a cgroup with a CFS quota of F cores (needs root): AWS is not "
        "on serve's machine, and the emulator's burst of PutObjects at every period end "
        "otherwise takes a core serve needs (docs/performance.md, thirteenth pass)",
    )
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--compare-src",
        type=Path,
        help="also run the same load (same emulator and customers, a fresh serve and prefix) "
        "with serve importing logferry from this src/ directory, e.g. a worktree at main",
    )
    add_server_option(p)
    add_spool_backend_option(p)
    p.add_argument("--name", default="active_tenants", help="results file name")
    return p.parse_args(argv)


def line(customer: str, seq: int, j: int, run: str = "r0") -> str:
    return f"{customer} {run} {seq:05d} {j:02d} {PAD}"


# ----------------------------------------------------------------------------- senders


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    Why not httpx: its async client costs ~5-10 ms of CPU per request here (and httpcore retries
    `import sniffio` on every request when sniffio is absent), so at 200-1,000 requests/s the
    sender, not serve, would be measured. This costs ~0.1 ms per request.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connect_seconds: list[float] = []

    async def post(self, path: str, token: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            began = time.monotonic()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.connect_seconds.append(time.monotonic() - began)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode() + body)
            await self.writer.drain()
            status = int((await self.reader.readline()).split()[1])
            headers: dict[str, str] = {}
            while (raw := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = raw.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def send_all(
    url: str, tenants: list[tuple[int, str, str]], args: argparse.Namespace, start: float
) -> dict[str, Any]:
    """Each (index, customer, token): one POST of `lines` lines per second, at its own phase,
    on its own keep-alive connection (a customer's agent keeps one open)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    accepted: list[tuple[int, int, float]] = []
    late: list[float] = []
    # (seconds after `start` the POST began, its round trip, the customer's request number)
    rtts: list[tuple[float, float, int]] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    connects: list[float] = []

    async def customer_loop(index: int, customer: str, token: str) -> None:
        phase = (index % 1000) / 1000.0
        conn = Connection(host, int(port))
        path = f"/v1/ingest/{customer}/s3"
        for seq in range(args.seconds):
            due = start + seq + phase
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late.append(-delay)
            body = "".join(line(customer, seq, j, args.run) + "\n" for j in range(args.lines))
            while True:
                try:
                    t_post = time.monotonic()
                    began = time.time() - start
                    status, headers, payload = await conn.post(path, token, body.encode())
                    rtts.append((began, time.monotonic() - t_post, seq))
                except (OSError, IndexError, ValueError, asyncio.IncompleteReadError) as exc:
                    errors.append(repr(exc)[:200])
                    await asyncio.sleep(0.5)
                    continue
                statuses[status] += 1
                if status == 429:
                    await asyncio.sleep(float(headers.get("retry-after", "1")))
                    continue
                if status != 202:
                    errors.append(f"HTTP {status}: {payload[:200]!r}")
                else:
                    accepted.append((index, seq, time.time()))
                break
        conn.close()
        connects.extend(conn.connect_seconds)

    await asyncio.gather(*(customer_loop(*t) for t in tenants))
    return {
        "accepted": accepted,
        "late_max": max(late, default=0.0),
        "late_over_1s": sum(1 for x in late if x > 1.0),
        "rtts": rtts,
        "connects": connects,
        "statuses": dict(statuses),
        "errors": errors[:20],
        "error_count": len(errors),
        "cpu_seconds": time.process_time(),
    }


def sender_main(
    url: str, tenants: list[tuple[int, str, str]], args: Any, start: float, out: Any
) -> None:
    out.put(asyncio.run(send_all(url, tenants, args, start)))


# ----------------------------------------------------------------------------- what landed


def landed_lines(
    emulator: Emulator, buckets: list[str], prefix: str
) -> tuple[Counter[str], dict[str, float]]:
    """Every line in every bucket (by content) and, per line, when its object became visible.

    Buckets are read by 8 threads: one by one, counting took longer than the load itself."""
    s3 = emulator.client("s3")

    def one(bucket: str) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = s3.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                seen = item["LastModified"].timestamp() + 1.0  # second resolution: round up
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                text = _decompress(item["Key"], body).decode()
                found += [(raw, seen) for raw in text.splitlines()]
            token = page.get("NextContinuationToken")
            if not token:
                return found

    counts: Counter[str] = Counter()
    visible: dict[str, float] = {}
    with ThreadPoolExecutor(8) as pool:
        for found in pool.map(one, buckets):
            for raw, seen in found:
                counts[raw] += 1
                if seen < visible.get(raw, float("inf")):
                    visible[raw] = seen
    return counts, visible


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ----------------------------------------------------------------------------- run


def drain_with_short_period(
    emulator: Emulator,
    config: dict[str, Any],
    customers: list[dict[str, Any]],
    workdir: Path,
    env: dict[str, str],
) -> Serve:
    """--ingest-only: a shutdown flushes open files but leaves unread lines in the spool (by
    design), so a second serve on the same spool with period 1 s delivers them before counting."""
    note("ingest-only: a second serve (same spool, period 1 s) delivers what the spool kept")
    for customer in customers:
        for endpoint in customer["endpoints"]:
            endpoint["period"] = 1
    serve = Serve(emulator, {**config, "customers": customers}, workdir, env=env).spawn()
    serve.wait_ready(timeout=300)
    time.sleep(5.0)
    deadline = time.monotonic() + 900
    while serve.metric_sum("logferry_spool_pending_lines") > 0 and time.monotonic() < deadline:
        time.sleep(2.0)
    time.sleep(3.0)
    return serve


def run(
    args: argparse.Namespace,
    emulator: Emulator,
    tenants: list[tuple[str, str, str]],
    tokens: dict[str, str],
    label: str,
    src: Path | None,
    backend: SpoolBackend,
) -> dict[str, Any]:
    """One serve, one load, one count; objects under `<label>/`, lines tagged with `label`."""
    args.run = label
    workdir = Path(tempfile.mkdtemp(prefix=f"logferry-bench-active-{label}-"))
    serve: Serve | None = None
    env = dict(tokens)
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    try:
        customers = s3_tenant_customers(tenants, f"{label}/", args.period)
        config = serve_config(
            emulator,
            workdir,
            customers=customers,
            server={
                "delivery_threads": args.delivery_threads,
                "aws_io_threads": args.aws_io_threads,
                **(
                    {"activation_threads": args.activation_threads}
                    if args.activation_threads
                    else {}
                ),
                # --ingest-only: every open file is flushed at the end, however slowly.
                **({"shutdown_flush_seconds": 600} if args.ingest_only else {}),
                # Every sender connects from 127.0.0.1, as customers behind one load balancer
                # would: without this, the per-address cap (256 by default) resets all the
                # other customers' connections and the bench measures reconnect storms.
                "max_connections_per_source": 0,
                **server_options(args.server),
            },
            spool=backend.spool_table(),
            log={"level": "warning"},
        )
        serve = Serve(emulator, config, workdir, env=env).spawn()
        sampler = ProcSampler(
            {"serve": serve.pid, "emulator": emulator.pid, **backend.sampled()}, interval=0.1
        ).start()
        serve.wait_ready(timeout=300)
        time.sleep(2.0)
        ready_rss = read_rss(serve.pid)[0]
        profiler: subprocess.Popen[bytes] | None = None
        collapsed = RESULTS / f"{args.name}.collapsed.txt"
        if args.profile and src is None:
            py_spy = str(Path(sys.executable).parent / "py-spy")
            cmd = [
                py_spy, "record", "--pid", str(serve.pid), "--rate", str(args.rate),
                "--format", "raw", "--nonblocking", "--threads",
                "--idle" if args.profile_wall else "--gil", "-o", str(collapsed),
            ]  # fmt: skip
            profiler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
        note(
            f"sending: {args.customers} customers × {args.lines} lines/s × {args.seconds}s "
            f"from {args.senders} sender process(es)"
        )
        loads: list[float] = []
        load_stop = threading.Event()

        def sample_load() -> None:  # the machine is shared: say how busy it was
            while not load_stop.wait(2.0):
                loads.append(os.getloadavg()[0])

        threading.Thread(target=sample_load, daemon=True).start()
        start = time.time() + 1.0
        t_send = time.monotonic() + 1.0
        user_start, sys_start = read_cpu_split(serve.pid)
        shares = [
            [
                (i, c[0], tokens[f"TENANT_TOKEN_{i}"])
                for i, c in enumerate(tenants)
                if i % args.senders == k
            ]
            for k in range(args.senders)
        ]
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=sender_main, args=(serve.url, share, args, start, queue))
            for share in shares
        ]
        for proc in procs:
            proc.start()
        results = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        t_sent = time.monotonic()
        profile: dict[str, Any] = {}
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.communicate(timeout=120)
        accepted = [a for r in results for a in r["accepted"]]
        sent_lines = len(accepted) * args.lines
        note(f"sent {sent_lines:,} lines in {t_sent - t_send:.1f}s; waiting for delivery")
        deadline = time.monotonic() + (0.0 if args.ingest_only else args.period + args.drain)
        delivered = 0.0
        while time.monotonic() < deadline:
            delivered = serve.metric_sum("logferry_delivered_lines_total")
            if delivered >= sent_lines:
                break
            time.sleep(1.0)
        t_done = time.monotonic()
        load_stop.set()
        window = sampler.window("serve", t_send, t_done)
        warm = (
            args.warmup
            if args.warmup is not None
            else (15.0 if args.ingest_only else args.period + 10.0)
        )
        steady = sampler.window("serve", t_send + warm, t_sent)
        activation = sampler.window("serve", t_send, t_send + warm)
        emulator_cpu = {
            "warmup": sampler.window("emulator", t_send, t_send + warm)["cpu_seconds"],
            "steady": sampler.window("emulator", t_send + warm, t_sent)["cpu_seconds"],
        }
        user_end, sys_end = read_cpu_split(serve.pid)
        nats_cpu = (
            {
                "total": sampler.window("nats", t_send, t_done)["cpu_seconds"],
                "steady": sampler.window("nats", t_send + warm, t_sent)["cpu_seconds"],
            }
            if backend.nats_pid
            else None
        )
        sampler.stop()
        nats_peak = mib(sampler.peak_rss("nats")) if backend.nats_pid else None
        peak = sampler.peak_rss("serve")
        serve.terminate(timeout=700 if args.ingest_only else 90)
        serve = None
        if args.ingest_only:
            serve = drain_with_short_period(emulator, config, customers, workdir, env)
            serve.terminate()
            serve = None
        note("counting what landed")
        counts, visible = landed_lines(emulator, [b for _, b, _ in tenants], f"{label}/")
    finally:
        if serve is not None:
            serve.terminate()
    if profiler is not None:
        from profile_s3 import summarize

        profile = summarize(collapsed)
        profile["rate_hz"] = args.rate
        packed = collapsed.with_name(collapsed.name + ".gz")
        import gzip

        packed.write_bytes(gzip.compress(collapsed.read_bytes()))
        collapsed.unlink()
        profile["busy_cores_avg"] = round(
            profile["busy_samples"] / args.rate / max(1.0, t_sent - t_send), 2
        )
    accepted_at = {(i, seq): t for i, seq, t in accepted}
    expected = Counter()
    lags: list[float] = []
    missing = 0
    for (i, seq), t in accepted_at.items():
        customer = tenants[i][0]
        for j in range(args.lines):
            text = line(customer, seq, j, label)
            expected[text] += 1
            if text in visible:
                lags.append(visible[text] - t)
            else:
                missing += 1
    duplicated = sum(n - 1 for text, n in counts.items() if n > 1 and text in expected)
    unexpected = sum(n for text, n in counts.items() if text not in expected)
    cpu = window["cpu_seconds"] or 0.0
    steady_from = start + warm
    steady_lines = sum(1 for _, _, t in accepted if t >= steady_from) * args.lines
    steady_cpu = steady["cpu_seconds"] or 0.0
    timed_rtts = [(float(t), float(x), int(n)) for r in results for t, x, n in r["rtts"]]
    rtts = [x for _, x, _ in timed_rtts]
    first_rtts = [x for _, x, n in timed_rtts if n == 0]
    steady_rtts = [x for began, x, _ in timed_rtts if began >= warm]
    connects = [x for r in results for x in r["connects"]]
    by_window: dict[int, list[float]] = {}
    for began, rtt, _ in timed_rtts:
        by_window.setdefault(int(began // 10) * 10, []).append(rtt)
    sender_cpu = sum(r["cpu_seconds"] for r in results)
    requests = sum(sum(r["statuses"].values()) for r in results)
    send_seconds = t_sent - t_send
    return {
        "spool_backend": backend.name,
        "nats_cpu_seconds": nats_cpu,
        "nats_cpu_us_per_line": round(
            (nats_cpu or {}).get("total", 0) * 1e6 / max(1, sent_lines), 1
        )
        if nats_cpu
        else None,
        "nats_peak_rss_mib": nats_peak,
        "customers": args.customers,
        "period": args.period,
        "lines_per_customer_per_s": args.lines,
        "seconds": args.seconds,
        "senders": args.senders,
        "delivery_threads": args.delivery_threads,
        "activation_threads": args.activation_threads or "default",
        "server_options": server_options(args.server),
        "serve_src": str(src) if src else "this worktree",
        "serve_ready_rss_mib": mib(ready_rss),
        "serve_peak_rss_mib": mib(peak),
        "serve_peak_rss_kib_per_customer_over_ready": round(
            (peak - ready_rss) / 1024 / args.customers, 1
        ),
        "serve_peak_rss_kib_per_customer": round(peak / 1024 / args.customers, 1),
        "serve_cpu_seconds": cpu,
        "serve_cpu_us_per_line": round(cpu * 1e6 / max(1, sent_lines), 1),
        "serve_steady_window": {
            "from_s_after_first_request": warm,
            "seconds": steady.get("seconds"),
            "cpu_seconds": steady_cpu,
            "lines_accepted": steady_lines,
            "cpu_us_per_line": round(steady_cpu * 1e6 / max(1, steady_lines), 1),
        },
        "serve_activation_cpu_seconds": activation["cpu_seconds"],
        "emulator_cpu_seconds": emulator_cpu,
        "serve_cpu_user_seconds": round(user_end - user_start, 2),
        "serve_cpu_system_seconds": round(sys_end - sys_start, 2),
        "serve_window_seconds": window.get("seconds"),
        "sender_cpu_seconds": round(sender_cpu, 1),
        "sender_cpu_us_per_line": round(sender_cpu * 1e6 / max(1, sent_lines), 1),
        "requests": requests,
        "requests_per_s": round(requests / max(0.001, send_seconds), 1),
        "send_seconds": round(send_seconds, 1),
        "sender_late_max_s": round(max(r["late_max"] for r in results), 2),
        "sender_late_over_1s": sum(r["late_over_1s"] for r in results),
        "ack_seconds": {
            "median": round(pct(rtts, 0.5), 4),
            "p99": round(pct(rtts, 0.99), 4),
            "max": round(max(rtts, default=0.0), 4),
        },
        "ack_seconds_steady": {
            "from_s_after_first_request": warm,
            "p99": round(pct(steady_rtts, 0.99), 4),
            "max": round(max(steady_rtts, default=0.0), 4),
        },
        "ack_seconds_first_request": {
            "median": round(pct(first_rtts, 0.5), 4),
            "p99": round(pct(first_rtts, 0.99), 4),
            "max": round(max(first_rtts, default=0.0), 4),
            "over_1s": sum(1 for x in first_rtts if x > 1.0),
        },
        "connect_seconds": {
            "count": len(connects),
            "median": round(pct(connects, 0.5), 4),
            "p99": round(pct(connects, 0.99), 4),
            "max": round(max(connects, default=0.0), 4),
        },
        "ack_seconds_by_10s": [
            {
                "from_s": w,
                "requests": len(xs),
                "median": round(pct(xs, 0.5), 4),
                "p99": round(pct(xs, 0.99), 4),
                "max": round(max(xs), 4),
            }
            for w, xs in sorted(by_window.items())
        ],
        "statuses": dict(sum((Counter(r["statuses"]) for r in results), Counter())),
        "sender_errors": [e for r in results for e in r["errors"]][:20],
        "lines_sent": sent_lines,
        "lines_delivered_metric": int(delivered),
        "lines_landed": sum(n for text, n in counts.items() if text in expected),
        "lines_duplicated": duplicated,
        "lines_missing": missing,
        "lines_unexpected": unexpected,
        "exactly_once": duplicated == 0 and missing == 0 and unexpected == 0,
        "drain_seconds_after_send": round(t_done - t_sent, 1),
        "lag_s": {
            "median": round(statistics.median(lags), 2) if lags else None,
            "p99": round(pct(lags, 0.99), 2),
            "max": round(max(lags), 2) if lags else None,
            "resolution": "object LastModified (1 s, rounded up) minus the 202 time",
        },
        "lag_within_period_plus_5s": None
        if args.ingest_only
        else bool(lags) and pct(lags, 0.99) <= args.period + 5,
        "load_average_1m": {
            "mean": round(statistics.mean(loads), 2) if loads else None,
            "max": round(max(loads), 2) if loads else None,
            "cores": os.cpu_count(),
        },
        "profile": profile,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ingest_only:
        args.period = 3600
    machine = machine_info()
    with spool_backend(
        args.spool_backend,
        Path(tempfile.mkdtemp(prefix="logferry-bench-active-spool-")),
        args.nats_shards,
    ) as backend:
        return _main(args, machine, backend)


def _main(args: argparse.Namespace, machine: dict[str, Any], backend: SpoolBackend) -> int:
    emulator = start_emulator()
    budget = CpuBudget(args.emulator_cpu) if args.emulator_cpu else None
    if budget is not None:
        budget.apply(emulator.pid, "emulator")
    try:
        note(f"provisioning {args.customers} customers (bucket + role each, role create code)")
        t0 = time.monotonic()
        tag = f"at{uuid.uuid4().hex[:5]}"
        tenants = make_s3_tenants(emulator, args.customers, tag)
        provision_seconds = round(time.monotonic() - t0, 1)
        tokens = {
            f"TENANT_TOKEN_{i}": f"tok-{tag}-{i:05d}-{uuid.uuid4().hex}"
            for i in range(len(tenants))
        }
        doc = run(args, emulator, tenants, tokens, "new", None, backend)
        doc["provision_seconds"] = provision_seconds
        if args.compare_src is not None:
            note(f"the same load against serve from {args.compare_src}")
            doc["compare"] = run(args, emulator, tenants, tokens, "old", args.compare_src, backend)
    finally:
        emulator.stop()
        if budget is not None:
            budget.remove()
    doc["emulator_cpu_cores"] = args.emulator_cpu
    path = write_results(args.name, doc, machine)
    lag = doc["lag_s"]
    rows: list[tuple[str, Any]] = [
        (
            "customers × lines/s × s (period), spool",
            f"{args.customers} × {args.lines} × {args.seconds} ({args.period} s), {backend.name}",
        ),
        (
            "box speed: Python loop CPU s / memcpy MB/s",
            "{python_loop_cpu_s} / {memcpy_mb_s}".format(**machine["speed"]),
        ),
        ("serve RSS at ready MiB", doc["serve_ready_rss_mib"]),
        ("serve peak RSS MiB", doc["serve_peak_rss_mib"]),
        (
            "  KiB per active customer (peak − ready)",
            doc["serve_peak_rss_kib_per_customer_over_ready"],
        ),
        ("serve CPU s (send + drain)", doc["serve_cpu_seconds"]),
        ("  µs per line", doc["serve_cpu_us_per_line"]),
        (
            "  steady state (after warm-up) µs per line",
            doc["serve_steady_window"]["cpu_us_per_line"],
        ),
        ("  warm-up CPU s (activations + requests)", doc["serve_activation_cpu_seconds"]),
        *(
            [
                (
                    "nats-server CPU s (µs per line) / peak RSS MiB",
                    f"{doc['nats_cpu_seconds']['total']} ({doc['nats_cpu_us_per_line']}) / "
                    f"{doc['nats_peak_rss_mib']}",
                )
            ]
            if doc["nats_cpu_seconds"]
            else []
        ),
        (
            "  user / system s",
            f"{doc['serve_cpu_user_seconds']} / {doc['serve_cpu_system_seconds']}",
        ),
        (
            "sender CPU s / µs per line",
            f"{doc['sender_cpu_seconds']} / {doc['sender_cpu_us_per_line']}",
        ),
        ("requests/s", doc["requests_per_s"]),
        (
            "sender late: max s / requests > 1 s late",
            f"{doc['sender_late_max_s']} / {doc['sender_late_over_1s']}",
        ),
        (
            "202 round trip s median / p99 / max",
            " / ".join(str(doc["ack_seconds"][k]) for k in ("median", "p99", "max")),
        ),
        (
            "  first request of each customer: median / p99 / max",
            " / ".join(str(doc["ack_seconds_first_request"][k]) for k in ("median", "p99", "max")),
        ),
        (
            "  after the warm-up: p99 / max",
            f"{doc['ack_seconds_steady']['p99']} / {doc['ack_seconds_steady']['max']}",
        ),
        (
            "load average 1 min: mean / max",
            f"{doc['load_average_1m']['mean']} / {doc['load_average_1m']['max']}",
        ),
        ("lines sent / landed", f"{doc['lines_sent']:,} / {doc['lines_landed']:,}"),
        (
            "  duplicated / missing / unexpected",
            f"{doc['lines_duplicated']} / {doc['lines_missing']} / {doc['lines_unexpected']}",
        ),
        ("lag s median / p99 / max", f"{lag['median']} / {lag['p99']} / {lag['max']}"),
        ("p99 lag ≤ period + 5 s", doc["lag_within_period_plus_5s"]),
    ]
    print_table("Many small active tenants", rows)
    if "compare" in doc:
        old = doc["compare"]
        print_table(
            f"the same load, serve from {args.compare_src}",
            [
                ("serve peak RSS MiB", old["serve_peak_rss_mib"]),
                (
                    "  KiB per active customer (peak − ready)",
                    old["serve_peak_rss_kib_per_customer_over_ready"],
                ),
                (
                    "serve CPU s / µs per line",
                    f"{old['serve_cpu_seconds']} / {old['serve_cpu_us_per_line']}",
                ),
                ("lines sent / landed", f"{old['lines_sent']:,} / {old['lines_landed']:,}"),
                ("  duplicated / missing", f"{old['lines_duplicated']} / {old['lines_missing']}"),
                (
                    "lag s median / p99 / max",
                    f"{old['lag_s']['median']} / {old['lag_s']['p99']} / {old['lag_s']['max']}",
                ),
            ],
        )
    if doc["profile"]:
        prof = doc["profile"]
        print_table(
            f"serve profile ({prof['busy_samples']} busy samples, ≈{prof['busy_cores_avg']} cores)",
            [(r["frame"], f"{r['pct']}%") for r in prof["by_thread_kind"][:8]]
            + [(r["frame"], f"{r['pct']}%") for r in prof["top_inclusive_logferry"][:20]],
        )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
