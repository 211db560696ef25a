"""CPU of a running process per thread group (user and system), e.g. serve under a bench load.

Why not py-spy alone: with many Python threads, a thread waiting for the GIL sits in a C call
and py-spy samples it as busy (no Python frame, "active"); under the small-tenants load py-spy
reported the event loop thread at 0.74 cores while /proc said 0.35. This reads the kernel's
per-thread utime/stime twice, `--seconds` apart, and names threads from one `py-spy dump`
(Python thread names like `deliver_3`, `aws-io_12`, grouped without their number).

    .venv/bin/python bench/thread_cpu.py --pid $(pgrep -f "logferry.cli serve") --seconds 20
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]), int(fields[12]))
    return out


def thread_names(pid: int) -> dict[int, str]:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    dump = subprocess.run(
        [py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
    ).stdout
    return {
        int(m.group(1)): re.sub(r"_\d+$", "", m.group(2))
        for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump)
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    before = thread_times(args.pid)
    time.sleep(args.seconds)
    after = thread_times(args.pid)
    names = thread_names(args.pid)
    groups: dict[str, list[float]] = {}
    for tid, (user, system) in after.items():
        u0, s0 = before.get(tid, (0, 0))
        row = groups.setdefault(names.get(tid, "(unnamed)"), [0.0, 0.0, 0.0])
        row[0] += (user - u0) / _CLK_TCK / args.seconds
        row[1] += (system - s0) / _CLK_TCK / args.seconds
        row[2] += 1
    total = sum(r[0] + r[1] for r in groups.values())
    print(f"{'threads':20} {'n':>3} {'user':>7} {'system':>7}  cores over {args.seconds:g} s")
    for name, (user, system, n) in sorted(groups.items(), key=lambda kv: -sum(kv[1][:2])):
        if user + system >= 0.001:
            print(f"{name:20} {int(n):3d} {user:7.3f} {system:7.3f}")
    print(f"{'total':20} {'':3} {total:15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
