"""Cost of one durable save of a small state file: the spool's commit record and the S3 journal.

Every delivered S3 object saves the journal (its decided end) and the spool's committed offset;
every Kinesis batch saves the committed offset. This measures, in one process and interleaved so
both see the same box (its speed moves 2–3× within minutes):
- `replace`: temp file + fdatasync + rename + fsync(dir) (`write_atomic`, how both were saved
  before the slot file),
- `slot`: one pwrite into the slot not holding the newest state + fdatasync (`SlotFile`),
- `spool commit`: `Spool.commit` end to end (locate, line check, the save, segment bookkeeping),
and reports CPU (user + system) and wall time per save. The spool lives under `--dir` (default:
a temp dir under /tmp, the disk serve's spool uses in the benchmarks).

    .venv/bin/python bench/state_save_cost.py [--saves 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from common import box_speed, machine_info, report
from logferry.spool import Spool
from logferry.spool.files import write_atomic
from logferry.spool.slot_file import SlotFile

RECORD = bytes(76)  # the committed record's size (LFCOMIT2 + 7 fields + crc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=400, help="saves per kind per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    p.add_argument("--name", default="state_save_cost", help="results file name")
    return p.parse_args(argv)


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def timed(n: int, save: Callable[[int], None]) -> dict[str, float]:
    u0, s0 = _usage()
    t0 = time.perf_counter()
    for i in range(n):
        save(i)
    wall = time.perf_counter() - t0
    u1, s1 = _usage()
    return {
        "cpu_us": 1e6 * (u1 - u0 + s1 - s0) / n,
        "system_us": 1e6 * (s1 - s0) / n,
        "wall_us": 1e6 * wall / n,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    speed = box_speed()
    root = tempfile.mkdtemp(prefix="logferry-save-", dir=args.dir)
    replaced = os.path.join(root, "replaced")
    slots = SlotFile(os.path.join(root, "slots"))
    slots.save(RECORD)
    spool = Spool(os.path.join(root, "spool"))
    results: dict[str, list[dict[str, float]]] = {"replace": [], "slot": [], "spool commit": []}
    for _ in range(args.rounds):
        results["replace"].append(timed(args.saves, lambda i: write_atomic(replaced, RECORD)))
        results["slot"].append(timed(args.saves, lambda i: slots.save(RECORD)))
        ends = [spool.append_sync(b"x" * 200 + b"\n", 1).end for _ in range(args.saves)]
        results["spool commit"].append(
            timed(args.saves, lambda i, ends=ends: spool.commit(ends[i]))  # type: ignore[misc]
        )
    spool.close()
    summary: dict[str, Any] = {}
    rows: list[tuple[str, Any]] = [
        (
            "box speed: Python loop CPU s / memcpy MB/s",
            f"{speed['python_loop_cpu_s']} / {speed['memcpy_mb_s']}",
        ),
    ]
    for kind, runs in results.items():
        med = {k: round(statistics.median(r[k] for r in runs)) for k in runs[0]}
        summary[kind] = {"median": med, "runs": runs}
        rows.append(
            (
                f"{kind}: CPU / system / wall µs per save (median of {args.rounds})",
                f"{med['cpu_us']:,} / {med['system_us']:,} / {med['wall_us']:,}",
            )
        )
    doc = {"saves": args.saves, "rounds": args.rounds, "speed": speed, "results": summary}
    return report("One durable save of a small state file", rows, args.name, doc, machine)


if __name__ == "__main__":
    raise SystemExit(main())
