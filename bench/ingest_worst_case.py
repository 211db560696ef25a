"""Worst-case ingest bodies vs a normal one: time and peak memory of `normalize` per MiB.

Not a test (no thresholds): prints a table and writes bench/results/ingest_worst_case.json.
Issue 11 asks that no body shape costs more than a small constant factor of a normal body's
time and memory per byte, because normalisation runs for every tenant on a shared process.

Shapes (each `--mib` MiB, max_line_bytes 256 KiB as in the default config):
  normal         access-log lines of ~205 B (bench/loggen.py)
  invalid_utf8   every byte 0xFF (one giant invalid line: repair + truncation)
  invalid_lines  b"\\xff\\n" repeated (every line needs a repair)
  fffd_mixed     lines holding a valid U+FFFD and one invalid byte
  newlines       nothing but LFs (every line empty)
  giant_line     one ASCII line of the whole size (truncation)
  crlf_runs      b"a\\r\\r\\r\\n" repeated (the CR passes)

Peak memory is tracemalloc's peak of Python allocations during the call (bytes and str
buffers are Python allocations), minus the input itself. `--old REV` also runs the module as of
a git revision (e.g. the per-byte-callback repair) for comparison.

    PYTHONPATH=src .venv/bin/python bench/ingest_worst_case.py [--mib 16] [--repeat 3] [--old REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from logferry.ingest import lines as current  # noqa: E402
from loggen import generate_bytes  # noqa: E402

MAX_LINE = 256 * 1024


def shapes(size: int) -> dict[str, bytes]:
    return {
        "normal": generate_bytes(size)[:size],
        "invalid_utf8": b"\xff" * size,
        "invalid_lines": b"\xff\n" * (size // 2),
        "fffd_mixed": ("x\ufffdy".encode() + b"\xfe\n") * (size // 7),
        "newlines": b"\n" * size,
        "giant_line": b"a" * size,
        "crlf_runs": b"a\r\r\r\n" * (size // 5),
    }


def measure(fn: Callable[[bytes], Any], body: bytes, repeat: int) -> tuple[float, int]:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(body)
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(body)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def load_old(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:src/logferry/ingest/lines.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "lines_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lines_old", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lines_old"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--old", help="git revision of lines.py to compare with")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    modules: dict[str, ModuleType] = {"current": current}
    if args.old:
        modules[f"old@{args.old}"] = load_old(args.old)
    rows: list[dict[str, Any]] = []
    for label, module in modules.items():
        base: tuple[float, int] | None = None
        for shape, body in shapes(size).items():
            mib = len(body) / 2**20
            elapsed, peak = measure(
                lambda b, m=module: m.normalize(b, max_line_bytes=MAX_LINE), body, args.repeat
            )
            if shape == "normal":
                base = (elapsed / mib, peak / mib)
            assert base is not None
            row = {
                "impl": label,
                "shape": shape,
                "mib": round(mib, 2),
                "ms_per_mib": round(1000 * elapsed / mib, 2),
                "peak_mib_per_mib": round(peak / 2**20 / mib, 2),
                "time_x_normal": round((elapsed / mib) / base[0], 1),
                "memory_x_normal": round((peak / mib) / max(base[1], 1), 1),
            }
            rows.append(row)
            print(
                f"{label:>14} {shape:>14}: {row['ms_per_mib']:8.2f} ms/MiB "
                f"({row['time_x_normal']:5.1f}x normal)  peak {row['peak_mib_per_mib']:6.2f} "
                f"MiB/MiB ({row['memory_x_normal']:5.1f}x normal)",
                flush=True,
            )
    out = ROOT / "bench" / "results" / "ingest_worst_case.json"
    out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "machine": {"python": platform.python_version(), "cpu": platform.processor()},
                "max_line_bytes": MAX_LINE,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
