"""Slow heads, idle connections and stalled bodies against one `logferry serve`, with a normal
sender meanwhile: serve's peak RSS and the sender's request times (issue 27's listener figures).

Not a test. One `logferry serve` against the emulator with the default [server] limits, one
customer. Phase 1: the sender alone (`--baseline` s): one 100-line body every 0.2 s on a
keep-alive connection. Phase 2 (`--seconds`), the same sender while, from other loopback
addresses (`--addresses` for the slow and idle connections, as many others for the stalled):
- `--slowloris` connections each send part of a request head, then one byte a second
  (`--idle` of them send nothing at all); when the server closes one, it is opened again;
- `--stalled` connections each declare a body of `--stall-bytes` + 1, send `--stall-bytes` of it
  and stall; when the server closes or refuses one (503), it starts again after 0.5 s.
Reports the sender's latency percentiles and status codes per phase, serve's peak RSS per
phase, what the attackers saw, the listener counters of /metrics and whether the sender's lines
all landed. Run it against another build by putting that build's src first on PYTHONPATH.

    PYTHONPATH=src .venv/bin/python bench/hostile_connections.py [--seconds 75]
        [--slowloris 1000] [--idle 200] [--stalled 64] [--stall-bytes 8MiB] [--addresses 8]
    PYTHONPATH=/path/to/old/src .venv/bin/python bench/hostile_connections.py --label before
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from common import (
    ProcSampler,
    Serve,
    count_bucket_lines,
    machine_info,
    make_s3_role,
    note,
    print_table,
    serve_config,
    start_emulator,
    write_results,
)
from logferry.spool.size import parse_size

TOKEN = "bench-hostile-sender-0000000000"
CUSTOMER = "cust-normal"


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "n": len(values),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": round(1000 * ordered[-1], 1),
        "mean_ms": round(1000 * statistics.fmean(values), 1),
    }


def answered(sock: socket.socket) -> bool:
    """The server sent something (a 408) or closed: a peek that does not block."""
    try:
        sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class Attack:
    """The hostile connections of phase 2 (threads; `stop()` ends them)."""

    def __init__(self, serve: Serve, args: argparse.Namespace) -> None:
        host, port = serve.url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.args = args
        self.slow_sources = [f"127.0.1.{i + 1}" for i in range(args.addresses)]
        self.stalled_sources = [f"127.0.2.{i + 1}" for i in range(args.addresses)]
        self.stopping = threading.Event()
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def count(self, what: str) -> None:
        with self.lock:
            self.seen[what] += 1

    def connect(self, i: int, sources: list[str]) -> socket.socket | None:
        try:
            return socket.create_connection(
                self.address, timeout=10, source_address=(sources[i % len(sources)], 0)
            )
        except OSError:
            self.count("connect_failed")
            return None

    def start(self) -> Attack:
        self.threads.append(threading.Thread(target=self.slow_heads, daemon=True))
        for i in range(self.args.stalled):
            self.threads.append(threading.Thread(target=self.stalled, args=(i,), daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def slow_heads(self) -> None:
        """Slowloris and idle connections: one thread, a byte a second each."""
        total = self.args.slowloris + self.args.idle
        socks: dict[int, socket.socket | None] = {}

        def open_one(i: int) -> None:
            sock = self.connect(i, self.slow_sources)
            if sock is not None:
                sock.setblocking(False)  # peeks and sends below never wait
            if sock is not None and i >= self.args.idle:
                try:
                    sock.send(
                        f"POST /v1/ingest/{CUSTOMER}/s3 HTTP/1.1\r\nhost: x\r\nx-slow: ".encode()
                    )
                except OSError:
                    sock.close()
                    sock = None
            socks[i] = sock

        for i in range(total):
            open_one(i)
            if self.stopping.is_set():
                break
        while not self.stopping.wait(1.0):
            live = {s: i for i, s in socks.items() if s is not None}
            for sock in [s for s in live if answered(s)]:  # 408 or closed: open it again
                i = live.pop(sock)
                sock.close()
                self.count("slow_closed_by_server")
                open_one(i)
            for sock, i in live.items():
                if i < self.args.idle:
                    continue
                try:
                    sock.send(b"a", socket.MSG_DONTWAIT)
                except OSError:
                    sock.close()
                    self.count("slow_closed_by_server")
                    open_one(i)
            for i in [i for i, s in socks.items() if s is None]:
                open_one(i)
        for sock in socks.values():
            if sock is not None:
                sock.close()

    def stalled(self, i: int) -> None:
        """Declare a body, send all but its last byte, wait; again when closed or refused."""
        size = self.args.stall_bytes
        head = (
            f"POST /v1/ingest/{CUSTOMER}/s3 HTTP/1.1\r\nhost: x\r\n"
            f"authorization: Bearer {TOKEN}\r\ncontent-length: {size + 1}\r\n\r\n"
        ).encode()
        body = b"s" * 99 + b"\n"
        part = body * (size // len(body)) + b"s" * (size % len(body))
        while not self.stopping.is_set():
            sock = self.connect(i, self.stalled_sources)
            if sock is None:
                self.stopping.wait(0.5)
                continue
            try:
                sock.sendall(head + part)
                self.count("stalled_bodies_sent")
                sock.settimeout(1.0)
                answer = b""
                while not self.stopping.is_set():
                    try:
                        answer = sock.recv(65536)
                        break
                    except TimeoutError:
                        continue
                if answer.startswith(b"HTTP/1.1 503"):
                    self.count("stalled_refused_503")
                elif answer.startswith(b"HTTP/1.1 408") or (
                    answer == b"" and not self.stopping.is_set()
                ):
                    self.count("stalled_closed_by_server")
            except OSError:
                self.count("stalled_closed_by_server")
            finally:
                sock.close()
            self.stopping.wait(0.5)


def sender_phase(serve: Serve, seconds: float, tag: str) -> tuple[list[float], Counter[int], int]:
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    sent = 0
    i = 0
    with serve.as_token(TOKEN) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            body = b"".join(b"%s %06d %03d\n" % (tag.encode(), i, j) for j in range(100))
            t0 = time.monotonic()
            try:
                response = client.post(f"/v1/ingest/{CUSTOMER}/s3", content=body)
                codes[response.status_code] += 1
                sent += 100 if response.status_code == 202 else 0
            except httpx.HTTPError as exc:  # a figure, not a failure
                codes[-1] += 1
                note(f"sender: {exc.__class__.__name__}: {exc}")
            latencies.append(time.monotonic() - t0)
            i += 1
            time.sleep(0.2)
    return latencies, codes, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=float, default=15)
    parser.add_argument("--seconds", type=float, default=75)
    parser.add_argument("--slowloris", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--stalled", type=int, default=64)
    parser.add_argument("--stall-bytes", type=parse_size, default="8MiB")
    parser.add_argument("--addresses", type=int, default=8, help="per group (slow, stalled)")
    parser.add_argument(
        "--label", default="", help="results file suffix (e.g. 'before' for an older build)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    machine = machine_info()
    emulator = start_emulator()
    try:
        role = make_s3_role(emulator, "bench-hostile", CUSTOMER, "hostile-role")
        config = serve_config(
            emulator,
            work,
            customers=[
                {
                    "id": CUSTOMER,
                    "token_env": "SENDER_TOKEN",
                    "endpoints": [
                        {
                            "type": "s3",
                            "name": "s3",
                            "bucket_name": "bench-hostile",
                            "iam_role": role,
                            "period": 2,
                        }
                    ],
                }
            ],
        )
        serve = Serve(emulator, config, work, env={"SENDER_TOKEN": TOKEN}).start(180)
        sampler = ProcSampler({"serve": serve.pid}).start()
        note(f"phase 1: the sender alone ({args.baseline:g} s)")
        t0 = time.monotonic()
        alone, alone_codes, sent_alone = sender_phase(serve, args.baseline, "alone")
        t1 = time.monotonic()
        note(
            f"phase 2: {args.slowloris} slow heads, {args.idle} idle, {args.stalled} stalled "
            f"bodies of {args.stall_bytes:,} B, {args.addresses} addresses per group "
            f"({args.seconds:g} s)"
        )
        attack = Attack(serve, args).start()
        attacked, attacked_codes, sent_attacked = sender_phase(serve, args.seconds, "attacked")
        t2 = time.monotonic()
        listener: dict[str, float] = {}
        try:
            samples = serve.metrics()
        except httpx.HTTPError as exc:  # the figure is missing, the rest still counts
            note(f"/metrics: {exc.__class__.__name__}: {exc}")
            samples = []
        if samples:
            for name, labels, value in samples:
                if name.endswith("_created"):
                    continue
                if name.startswith(("logferry_http_refused", "logferry_http_timed_out")):
                    listener[f"{name}{{{labels.get('reason')}}}"] = value
                elif name.startswith("logferry_http_"):
                    listener[name] = value
        attack.stop()
        total = sent_alone + sent_attacked
        landed = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            landed = count_bucket_lines(emulator, "bench-hostile")["lines"]
            if landed >= total:
                break
            time.sleep(1)
        sampler.stop()
        serve.terminate()
        doc: dict[str, Any] = {
            "args": {k: v for k, v in vars(args).items()},
            "sender_alone": {
                **percentiles(alone),
                "codes": dict(alone_codes),
                **sampler.window("serve", t0, t1),
            },
            "sender_attacked": {
                **percentiles(attacked),
                "codes": dict(attacked_codes),
                **sampler.window("serve", t1, t2),
            },
            "serve_peak_rss_mib_overall": round(sampler.peak_rss("serve") / 2**20, 1),
            "attackers_saw": dict(attack.seen),
            "listener_metrics_at_end_of_attack": listener,
            "sender_lines_sent": total,
            "sender_lines_landed": landed,
        }
    finally:
        emulator.stop()
    a, b = doc["sender_alone"], doc["sender_attacked"]
    print_table(
        "A normal sender alone, then during slow/idle/stalled connections",
        [
            (
                "alone p50 / p99 / max ms",
                f"{a.get('p50_ms')} / {a.get('p99_ms')} / {a.get('max_ms')}",
            ),
            (
                "attacked p50 / p99 / max ms",
                f"{b.get('p50_ms')} / {b.get('p99_ms')} / {b.get('max_ms')}",
            ),
            ("sender codes alone", a["codes"]),
            ("sender codes attacked", b["codes"]),
            ("serve peak RSS alone MiB", a.get("peak_rss_mib")),
            ("serve peak RSS attacked MiB", b.get("peak_rss_mib")),
            ("attackers saw", doc["attackers_saw"]),
            ("listener metrics", listener),
            ("sender lines landed / sent", f"{landed} / {total}"),
        ],
    )
    name = "hostile_connections" + (f"-{args.label}" if args.label else "")
    print(f"\nresults: {write_results(name, doc, machine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
