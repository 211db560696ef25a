"""Where the serve process spends its CPU during the S3 end-to-end run (py-spy sampling).

Runs bench/s3_throughput.py unchanged and attaches `py-spy record` to the serve process while
the load runs (non-blocking, so the profiled process is not paused), then folds the collapsed
stacks into: samples per thread kind (event loop / delivery pool / other), the top functions by
own samples (the leaf frame: for C calls like zlib that is the Python line that called it) and by
inclusive samples (anywhere on the stack). py-spy only samples threads that are not idle, so the
percentages are of busy samples; divide by the run's wall time × rate to get cores.

py-spy is not a runtime dependency: `.venv/bin/pip install py-spy` (it needs ptrace rights on the
serve process; root or the same user with kernel.yama.ptrace_scope=0).

    .venv/bin/python bench/profile_s3.py [--lines 2000000] [--period 5] [--rate 200]
        [s3_throughput flags] → bench/results/profile_s3.json (+ profile_s3.collapsed.txt.gz)
    # A flame graph of the same run instead of the summary:
    #   py-spy record --pid <serve pid> --format flamegraph -o s3.svg --nonblocking
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import s3_throughput
from common import RESULTS, Serve, note, print_table

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """'compress (logferry/sinks/codecs.py:42)' → 'compress (sinks/codecs.py:42)'."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("/site-packages/", "/src/logferry/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path}{':' + m['line'] if m['line'] else ''})"


def function_of(frame: str) -> str:
    """The function without its line: inclusive time must not split one function by line."""
    m = _FRAME.match(short(frame))
    return f"{m['func']} ({m['file']})" if m else frame


def thread_kind(root: str) -> str:
    """'thread (15636): deliver_0' → 'deliver'; py-spy --threads puts the name in the root."""
    name = root.split(": ", 1)[1] if ": " in root else root
    return re.sub(r"[_ -]?\d+$", "", name)


_GENERIC = ("threading.py", "concurrent/futures/", "runpy", "typer/", "click/", "asyncio/runners")


def interesting(fn: str) -> bool:
    """Inclusive ranking without the frames every stack has (thread bootstrap, CLI, loop)."""
    return not any(g in fn for g in _GENERIC) and not fn.startswith(("<module>", "main ("))


def summarize(collapsed: Path, top: int = 25) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = 0
    for raw in collapsed.read_text(errors="replace").splitlines():
        stack_text, _, count_text = raw.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack_text.split(";") if f]
        root = frames[0] if frames and frames[0].startswith("thread ") else "thread: ?"
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        kinds[thread_kind(root)] += count
        own[short(frames[-1])] += count
        for fn in {function_of(f) for f in frames}:
            if interesting(fn):
                inclusive[fn] += count
            if "(logferry/" in fn and "logferry/cli.py" not in fn and "commands/" not in fn:
                ours[fn] += count

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": k, "samples": v, "pct": round(100 * v / max(1, total), 1)}
            for k, v in counter.most_common(top)
        ]

    return {
        "busy_samples": total,
        "by_thread_kind": pct(kinds),
        "top_own": pct(own),
        "top_inclusive": pct(inclusive),
        "top_inclusive_logferry": pct(ours),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (py-spy --gil): who uses the serial resource",
    )
    parser.add_argument(
        "--out", default="profile_s3", help="results name (.json, .collapsed.txt.gz)"
    )
    ours, rest = parser.parse_known_args(argv)
    args = s3_throughput.parse_args(rest)
    args.name = "s3_throughput_profiled"
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    collapsed = RESULTS / f"{ours.out}.collapsed.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    recorder: list[subprocess.Popen[bytes]] = []
    started: list[float] = []

    def attach(serve: Serve) -> None:
        cmd = [
            py_spy, "record", "--pid", str(serve.pid), "--rate", str(ours.rate),
            "--format", "raw", "--nonblocking", "--threads", "-o", str(collapsed),
        ] + (["--gil"] if ours.gil else [])  # fmt: skip
        note("attaching: " + " ".join(cmd))
        recorder.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(1.0)  # py-spy needs a moment to attach before the load starts
        started.append(time.monotonic())

    def detach(_: Serve) -> dict[str, Any]:
        proc = recorder[0]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        return {
            "profiled_seconds": round(time.monotonic() - started[0], 1),
            "py_spy": cmd_tail(err),
        }

    figures = s3_throughput.run(args, on_serve=attach, on_done=detach)
    summary = summarize(collapsed)
    packed = collapsed.with_name(collapsed.name + ".gz")  # ~10x smaller in the repository
    packed.write_bytes(gzip.compress(collapsed.read_bytes()))
    collapsed.unlink()
    summary["rate_hz"] = ours.rate
    summary["gil_only"] = ours.gil
    summary["profiled_seconds"] = figures.get("profiled_seconds")
    summary["run"] = {
        k: figures[k]
        for k in (
            "lines",
            "bulk_lines_per_s",
            "e2e_lines_per_s",
            "serve_cpu_seconds",
            "e2e_seconds",
        )
    }
    seconds = summary["profiled_seconds"] or 1
    summary["busy_cores_avg"] = round(summary["busy_samples"] / ours.rate / seconds, 2)
    out = RESULTS / f"{ours.out}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(
        f"serve process profile: {summary['busy_samples']} busy samples at {ours.rate} Hz "
        f"(≈{summary['busy_cores_avg']} busy threads on average)",
        [(r["frame"], f"{r['pct']}%") for r in summary["by_thread_kind"]],
    )
    print_table(
        "top functions by own samples",
        [(r["frame"], f"{r['pct']}%") for r in summary["top_own"][:15]],
    )
    print_table(
        "top functions by inclusive samples",
        [(r["frame"], f"{r['pct']}%") for r in summary["top_inclusive"][:12]],
    )
    print_table(
        "logferry functions by inclusive samples",
        [(r["frame"], f"{r['pct']}%") for r in summary["top_inclusive_logferry"][:20]],
    )
    print(f"\nprofile: {out}\nstacks:  {packed} (gunzip for speedscope / flamegraph.pl)")
    return 0


def cmd_tail(err: bytes) -> str:
    return err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else ""


if __name__ == "__main__":
    raise SystemExit(main())
