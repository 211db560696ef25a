"""Benchmark of the ingest line handling: normalize, gunzip_limited and the syslog listeners.

Not a test: it prints tables and writes bench/results/ingest.json. The service target is
>= 250,000 lines/s of ~205 B lines on 2 cores (about 51 MB/s), so `normalize` must stay far
above that on clean bodies and degrade gracefully on dirty ones.

- normalize: single-thread MB/s and lines/s of input, per body shape (1 MiB bodies of
  bench/loggen.py access-log lines, max_line_bytes 64 KiB).
- gunzip_limited: MB/s of output for a gzip -6 body, ISA-L (used) vs stdlib zlib.
- syslog: end-to-end lines/s through a SyslogServer on loopback with a no-op deliver, the client
  in a separate process (TCP LF framing, TCP octet counting, UDP one datagram per line).

    PYTHONPATH=src .venv/bin/python bench/ingest_bench.py [--mib 1] [--repeat 5] [--syslog-lines N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import socket
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from isal import isal_zlib

from logferry.ingest import lines as lf_lines
from logferry.ingest.lines import gunzip_limited, normalize
from logferry.ingest.syslog import SyslogCounters, SyslogListenerConfig, SyslogServer
from loggen import generate_bytes

MiB = 1024 * 1024
MAX_LINE = 64 * 1024


# -- normalize -------------------------------------------------------------------------------------


def _mutate_lines(data: bytes, every: int, change: Callable[[bytes], bytes], seed: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for line in data.split(b"\n")[:-1]:
        out.append(change(line) if rng.randrange(every) == 0 else line)
    return b"\n".join(out) + b"\n"


def body_shapes(mib: float) -> dict[str, bytes]:
    clean = generate_bytes(int(mib * MiB), seed=1)
    long_line = b"L" * (MAX_LINE + 10_000)
    return {
        "clean": clean,
        "clean, no final LF": clean[:-1],
        "CRLF": clean.replace(b"\n", b"\r\n"),
        "valid non-ASCII": clean.replace(b"Mozilla", "Mözilla".encode()),
        "1% empty lines": _mutate_lines(clean, 100, lambda x: x + b"\n", 2),
        "1% invalid UTF-8": _mutate_lines(clean, 100, lambda x: x + b"\xff", 3),
        "100% invalid UTF-8": clean.replace(b"Mozilla", b"M\xf6zilla"),
        "0.1% over-long": _mutate_lines(clean, 1000, lambda x: long_line, 4),
        "all of the above": _mutate_lines(
            clean.replace(b"\n", b"\r\n"), 50, lambda x: b"\xfe" + x + b"\r\n" + long_line, 5
        ),
    }


def bench_normalize(mib: float, repeat: int) -> list[dict[str, object]]:
    rows = []
    for name, body in body_shapes(mib).items():
        best = float("inf")
        result = normalize(body, max_line_bytes=MAX_LINE)
        loops = max(1, int(20 * MiB / len(body)))
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(loops):
                normalize(body, max_line_bytes=MAX_LINE)
            best = min(best, (time.perf_counter() - t0) / loops)
        rows.append(
            {
                "shape": name,
                "bytes": len(body),
                "lines_in": body.count(b"\n"),
                "lines_out": result.lines,
                "mb_s": len(body) / best / 1e6,
                "lines_s": result.lines / best,
                "fast_path": result.data is body,
            }
        )
    return rows


# -- gunzip ----------------------------------------------------------------------------------------


def bench_gunzip(repeat: int) -> list[dict[str, object]]:
    rows = []
    for size in (1 * MiB, 16 * MiB):
        data = generate_bytes(size, seed=6)
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        gz = comp.compress(data) + comp.flush()
        for lib_name, lib in (("isal", isal_zlib), ("zlib", zlib)):
            lf_lines._inflate_lib = lib  # type: ignore[assignment]
            best = float("inf")
            loops = max(1, int(32 * MiB / size))
            for _ in range(repeat):
                t0 = time.perf_counter()
                for _ in range(loops):
                    out = gunzip_limited(gz, len(data))
                best = min(best, (time.perf_counter() - t0) / loops)
            assert out == data
            rows.append(
                {"library": lib_name, "mib": size / MiB, "ratio": len(data) / len(gz)}
                | {"mb_s_out": len(data) / best / 1e6}
            )
    lf_lines._inflate_lib = isal_zlib  # type: ignore[assignment]
    return rows


# -- syslog ----------------------------------------------------------------------------------------


def _client(kind: str, port: int, payload_lines: list[bytes], conns: int) -> None:
    if kind == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for line in payload_lines:
                s.sendto(line, ("127.0.0.1", port))
        return
    if kind == "tcp-octet":
        blob = b"".join(str(len(x)).encode() + b" " + x for x in payload_lines)
    else:
        blob = b"\n".join(payload_lines) + b"\n"
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    parts = [blob] * conns  # every connection sends the whole set
    for s, part in zip(socks, parts, strict=True):
        s.sendall(part)
    for s in socks:
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        s.close()


async def _bench_syslog_case(kind: str, lines: list[bytes], conns: int) -> dict[str, object]:
    protocol = "udp" if kind == "udp" else "tcp"
    counters = SyslogCounters()

    async def deliver(data: bytes, n: int) -> None:
        return None

    config = SyslogListenerConfig(
        protocol=protocol, listen="127.0.0.1:0", customer_id="bench", endpoint="bench"
    )
    server = SyslogServer(config, deliver, counters=counters)
    await server.start()
    _, port = server.bound_address
    expected = len(lines) * (conns if kind != "udp" else 1)
    proc = multiprocessing.get_context("spawn").Process(
        target=_client, args=(kind, port, lines, conns)
    )
    t0 = time.perf_counter()
    proc.start()
    t_first = None
    last_change = time.perf_counter()
    seen = 0
    while counters.lines < expected:
        await asyncio.sleep(0.002)
        if counters.messages and t_first is None:
            t_first = time.perf_counter()
        if counters.messages != seen:
            seen = counters.messages
            last_change = time.perf_counter()
        elif kind == "udp" and not proc.is_alive() and time.perf_counter() - last_change > 0.5:
            break  # datagrams were lost in the kernel; stop waiting
    elapsed = time.perf_counter() - (t_first or t0)
    if kind == "udp":
        elapsed = last_change - (t_first or t0)
    await server.stop()  # closes the connections the client waits on, then join (blocking)
    await asyncio.get_running_loop().run_in_executor(None, proc.join)
    return {
        "case": kind,
        "connections": conns,
        "lines_sent": expected,
        "lines_delivered": counters.lines,
        "lines_s": counters.lines / elapsed if elapsed > 0 else 0.0,
        "mb_s": counters.bytes_received / elapsed / 1e6 if elapsed > 0 else 0.0,
    }


def bench_syslog(n: int) -> list[dict[str, object]]:
    base = generate_bytes(n * 240, seed=7).split(b"\n")[:n]
    lines = [b"<134>1 2024-05-01T00:00:00Z edge01 nginx - - - " + x for x in base]
    rows = []
    for kind, conns in (("tcp-lf", 1), ("tcp-lf", 4), ("tcp-octet", 1), ("tcp-octet", 4)):
        rows.append(asyncio.run(_bench_syslog_case(kind, lines, conns)))
    rows.append(asyncio.run(_bench_syslog_case("udp", lines[: min(n, 200_000)], 1)))
    return rows


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description="Benchmark logferry's ingest line handling.")
    p.add_argument("--mib", type=float, default=1.0, help="body size for normalize (MiB)")
    p.add_argument("--repeat", type=int, default=5, help="runs per case (best is kept)")
    p.add_argument("--syslog-lines", type=int, default=300_000, help="lines per syslog case")
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ingest.json"
    )
    args = p.parse_args()

    norm_rows = bench_normalize(args.mib, args.repeat)
    print(f"normalize, {args.mib:g} MiB bodies, max_line_bytes {MAX_LINE} (single thread)")
    print(f"{'shape':22s} {'MB/s':>8s} {'Mlines/s':>9s} {'lines':>7s}  fast path")
    for r in norm_rows:
        print(
            f"{r['shape']:22s} {r['mb_s']:8.0f} {r['lines_s'] / 1e6:9.2f} {r['lines_out']:7d}"
            f"  {'yes' if r['fast_path'] else 'no'}"
        )

    gz_rows = bench_gunzip(args.repeat)
    print("\ngunzip_limited (gzip -6 access log), MB/s of output")
    for r in gz_rows:
        print(
            f"{r['library']:6s} {r['mib']:4.0f} MiB  ratio {r['ratio']:4.1f}  {r['mb_s_out']:7.0f}"
        )

    sys_rows = bench_syslog(args.syslog_lines)
    print(f"\nsyslog listener, no-op deliver, client in another process ({os.cpu_count()} CPUs)")
    print(
        f"{'case':10s} {'conns':>5s} {'lines':>9s} {'delivered':>9s} {'lines/s':>10s} {'MB/s':>7s}"
    )
    for r in sys_rows:
        print(
            f"{r['case']:10s} {r['connections']:5d} {r['lines_sent']:9d} "
            f"{r['lines_delivered']:9d} {r['lines_s']:10.0f} {r['mb_s']:7.1f}"
        )

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "normalize": norm_rows,
        "gunzip": gz_rows,
        "syslog": sys_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
