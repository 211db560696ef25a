"""Benchmark of the S3 codecs and message_type framing on realistic access logs.

Not a test: it prints a table and writes bench/results/codecs.json. It measures, per candidate
(library, level), single-thread compression throughput in MB/s of *input* and the compression
ratio (input / output), compressing the data as independent members of `--member-mib` MiB (the
way the S3 sink compresses each chunk / part). Its figures choose the gzip library in
src/logferry/sinks/codecs.py.

    PYTHONPATH=src .venv/bin/python bench/codecs_bench.py [--mib 64] [--member-mib 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cramjam
import zstandard
from isal import igzip, isal_zlib

from logferry.sinks import codecs as lf_codecs
from logferry.sinks.framing import frame
from loggen import generate_bytes

try:
    from zlib_ng import zlib_ng
except ImportError:  # optional candidate
    zlib_ng = None  # type: ignore[assignment]

MiB = 1024 * 1024
Compressor = Callable[[bytes], bytes]


def _members(data: bytes, member: int) -> list[bytes]:
    """Split on line boundaries into members of about `member` bytes."""
    out: list[bytes] = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", min(len(data) - 1, start + member - 1))
        end = len(data) if end < 0 else end + 1
        out.append(data[start:end])
        start = end
    return out


def candidates() -> dict[str, tuple[str, Compressor, Callable[[bytes], bytes]]]:
    """name → (family, compress one member, decompress whole file)."""
    c: dict[str, tuple[str, Compressor, Callable[[bytes], bytes]]] = {}
    for lvl in (1, 2, 3, 6, 8, 9):
        c[f"zlib-{lvl}"] = (
            "gzip",
            lambda d, lv=lvl: zlib.compress(d, lv, wbits=31),
            igzip.decompress,
        )
    for lvl in (0, 1, 2, 3):
        c[f"isal-{lvl}"] = (
            "gzip",
            lambda d, lv=lvl: isal_zlib.compress(d, lv, wbits=31),
            igzip.decompress,
        )
    if zlib_ng is not None:
        for lvl in (1, 2, 3, 6, 8, 9):
            c[f"zlib-ng-{lvl}"] = (
                "gzip",
                lambda d, lv=lvl: zlib_ng.compress(d, lv, wbits=31),
                igzip.decompress,
            )
    for lvl in (1, 3):
        # ZstdCompressor is not thread-safe: the codec keeps one context per thread.
        zc = lf_codecs.get_codec("zstd", lvl)
        c[f"zstd-{lvl}"] = ("zstd", zc.compress, zc.decompress)
    c["snappy-framed"] = (
        "snappy",
        lambda d: bytes(cramjam.snappy.compress(d)),
        lambda d: bytes(cramjam.snappy.decompress(d)),
    )
    for lvl in range(1, 10):
        codec = lf_codecs.get_codec("gzip", lvl)
        c[f"logferry-gzip_level-{lvl}"] = ("logferry", codec.compress, codec.decompress)
    return c


def _best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_codec(
    name: str,
    comp: Compressor,
    decomp: Callable[[bytes], bytes],
    members: list[bytes],
    total: int,
    repeat: int,
    threads: int,
) -> dict[str, object]:
    outs = [comp(m) for m in members]  # warm-up + output for ratio and round trip
    blob = b"".join(outs)
    if decomp(blob) != b"".join(members):
        raise SystemExit(f"{name}: concatenated members do not round-trip")
    secs = _best_time(lambda: [comp(m) for m in members], repeat)
    dsecs = _best_time(lambda: decomp(blob), repeat)
    row: dict[str, object] = {
        "name": name,
        "mb_per_s": round(total / secs / 1e6, 1),
        "decompress_mb_per_s": round(total / dsecs / 1e6, 1),
        "ratio": round(total / len(blob), 2),
        "out_bytes": len(blob),
    }
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            tsecs = _best_time(lambda: list(pool.map(comp, members)), repeat)
        row[f"mb_per_s_{threads}_threads"] = round(total / tsecs / 1e6, 1)
    return row


def bench_framing(data: bytes, repeat: int, member: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    chunks = _members(data, member)
    for mt in ("blank", "classic", "loggly", "logplex"):

        def run(mt: str = mt) -> list[bytes]:
            return [
                frame(ch, mt, hostname="cache-ams1", service="access", accepted_at=1.7e9)
                for ch in chunks
            ]

        out_len = sum(len(x) for x in run())
        secs = _best_time(run, repeat)
        rows.append(
            {
                "name": f"frame-{mt}",
                "mb_per_s": round(len(data) / secs / 1e6, 1),
                "growth": round(out_len / len(data), 3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark logferry codecs and framing.")
    p.add_argument("--mib", type=float, default=64.0, help="size of the generated log (MiB)")
    p.add_argument("--member-mib", type=float, default=1.0, help="bytes per member (MiB)")
    p.add_argument("--repeat", type=int, default=3, help="runs per candidate (best is kept)")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--only", default="", help="comma-separated name prefixes to run")
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "codecs.json"
    )
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    data = generate_bytes(int(args.mib * MiB), seed=42)
    gen_s = time.perf_counter() - t0
    members = _members(data, int(args.member_mib * MiB))
    total = len(data)
    print(
        f"{total / MiB:.1f} MiB of access-log lines (generated in {gen_s:.1f}s), "
        f"{len(members)} members of ~{args.member_mib} MiB, best of {args.repeat}, "
        f"threads={args.threads}"
    )
    only = tuple(x for x in args.only.split(",") if x)
    rows: list[dict[str, object]] = []
    for name, (family, comp, decomp) in candidates().items():
        if only and not name.startswith(only):
            continue
        row = bench_codec(name, comp, decomp, members, total, args.repeat, args.threads)
        row["family"] = family
        rows.append(row)
        tcol = f"mb_per_s_{args.threads}_threads"
        print(
            f"  {name:26} {row['mb_per_s']:8.1f} MB/s  ratio {row['ratio']:6.2f}  "
            f"decomp {row['decompress_mb_per_s']:8.1f} MB/s"
            + (f"  {args.threads}T {row[tcol]:8.1f} MB/s" if tcol in row else "")
        )
    if not only or any("frame".startswith(o) or o.startswith("frame") for o in only):
        for row in bench_framing(data, args.repeat, int(args.member_mib * MiB)):
            rows.append(row)
            print(f"  {row['name']:26} {row['mb_per_s']:8.1f} MB/s  growth x{row['growth']}")

    result = {
        "input_bytes": total,
        "member_bytes": int(args.member_mib * MiB),
        "repeat": args.repeat,
        "threads": args.threads,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
            "isal": __import__("isal").__version__,
            "zlib_ng": getattr(__import__("zlib_ng"), "__version__", None) if zlib_ng else None,
            "zstandard": zstandard.__version__,
            "cramjam": cramjam.__version__,
        },
        "gzip_backend": lf_codecs.GZIP_BACKEND,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
