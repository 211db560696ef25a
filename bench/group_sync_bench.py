"""CPU and wall time per acknowledged append when many endpoints' small appends arrive together.

The issue-15 shape at the spool alone: N spools of one SpoolManager, R rounds; each round
appends one small chunk (20 lines, ~2 KB) to every spool at once from one event loop and waits
for all acknowledgements. Modes: `own` (each spool fdatasyncs its own file on the flush pool,
as before the group sync), `fdatasync` (the sync thread fdatasyncs each file), `syncfs` (the
sync thread calls syncfs once per round of whatever was written). Process CPU (kernel time
included) ÷ appends is the figure serve pays per request for durability.

    .venv/bin/python bench/group_sync_bench.py --spools 200 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import machine_info, note, write_results
from logferry.spool import SpoolManager

LINE = b"GET /assets/img/logo.png HTTP/1.1 200 5123 Mozilla/5.0 (X11; Linux x86_64) 0123456789\n"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(mode: str, spools: int, rounds: int, root: Path) -> dict[str, Any]:
    group = None if mode == "own" else mode
    with SpoolManager(root / mode, janitor=False, group_sync=group) as m:
        handles = [m.open(f"ep{i}") for i in range(spools)]
        data = LINE * 20

        async def load() -> None:
            for _ in range(rounds):
                await asyncio.gather(*(s.append(data, 20) for s in handles))

        asyncio.run(_warm(handles))  # segment files exist: only appends are measured
        c0, t0 = cpu(), time.perf_counter()
        asyncio.run(load())
        c1, t1 = cpu(), time.perf_counter()
        sync = m._group_sync
        appends = spools * rounds
        return {
            "mode": mode,
            "appends": appends,
            "cpu_us_per_append": round((c1 - c0) * 1e6 / appends, 1),
            "cpu_us_per_line": round((c1 - c0) * 1e6 / appends / 20, 2),
            "wall_ms_per_round": round((t1 - t0) * 1e3 / rounds, 2),
            "sync_rounds": sync.syncs if sync else None,
        }


async def _warm(spools: list[Any]) -> None:
    for spool in spools:
        await spool.append(LINE, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spools", type=int, default=200)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--modes", default="own,fdatasync,syncfs")
    p.add_argument("--name", default="group_sync")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="logferry-group-sync-", dir="/var/tmp") as tmp:
        for mode in args.modes.split(","):
            row = run(mode, args.spools, args.rounds, Path(tmp))
            note(str(row))
            rows.append(row)
    write_results(
        args.name,
        {"spools": args.spools, "rounds": args.rounds, "runs": rows},
        machine_info(),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
