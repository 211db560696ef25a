"""CPU per durable append when appends arrive one at a time: the spool under many small tenants.

`group_sync_bench.py` measures appends of many spools arriving together (one sync covers them
all). A vendor's small tenants mostly do not arrive together: requests are spread over the
second, so each append pays the whole path alone — the hand-offs from the event loop to the
threads that write and sync and back, and a sync of its own. Here one event loop appends 20
lines (~1.8 KB) to spool `i mod N` every `--gap` seconds (a task each, not awaited in turn),
then waits for every acknowledgement. Reported per append: process user and system CPU with
the cost of the same loop sleeping alone subtracted, and sync rounds.

To compare code versions, run it with the other version on PYTHONPATH (`common` then leaves
it before the repository's `src`):

    .venv/bin/python bench/spread_appends.py [--spools 200] [--appends 2000] [--gap 0.002]
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/spread_appends.py --name spread_before
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import box_speed, machine_info, print_table, write_results
from logferry.spool import SpoolManager

LINE = b"GET /assets/img/logo.png HTTP/1.1 200 5123 Mozilla/5.0 (X11; Linux x86_64) 0123456789\n"


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def one_run(spools: int, appends: int, gap: float, mode: str) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="logferry-spread-", dir="/var/tmp") as tmp,
        SpoolManager(Path(tmp), janitor=False, group_sync=mode) as manager,
    ):
        handles = [manager.open(f"ep{i}") for i in range(spools)]
        data = LINE * 20

        async def warm() -> None:  # segment files exist: only appends are measured
            for h in handles:
                await h.append(LINE, 1)

        async def load() -> None:
            tasks = []
            for i in range(appends):
                tasks.append(asyncio.ensure_future(handles[i % spools].append(data, 20)))
                await asyncio.sleep(gap)
            await asyncio.gather(*tasks)

        async def idle() -> None:
            for _ in range(appends):
                await asyncio.sleep(gap)

        asyncio.run(warm())
        group = manager._group_sync
        syncs0 = group.syncs if group else 0
        u0, s0 = cpu()
        asyncio.run(load())
        u1, s1 = cpu()
        syncs = (group.syncs if group else 0) - syncs0
        asyncio.run(idle())
        u2, s2 = cpu()
    return {
        "user_us": 1e6 * ((u1 - u0) - (u2 - u1)) / appends,
        "system_us": 1e6 * ((s1 - s0) - (s2 - s1)) / appends,
        "cpu_us": 1e6 * ((u1 - u0 + s1 - s0) - (u2 - u1 + s2 - s1)) / appends,
        "appends_per_sync": appends / syncs if syncs else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spools", type=int, default=200)
    p.add_argument("--appends", type=int, default=2000)
    p.add_argument("--gap", type=float, default=0.002, help="seconds between two appends")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", default="syncfs", help="spool.group_sync: syncfs or fdatasync")
    p.add_argument("--name", default="spread_appends")
    args = p.parse_args(argv)
    machine, speed = machine_info(), box_speed()
    import logferry

    runs = [one_run(args.spools, args.appends, args.gap, args.mode) for _ in range(args.rounds)]
    med = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
    print_table(
        "Spread appends",
        [
            ("code", logferry.__file__),
            ("box speed: Python loop CPU s", speed["python_loop_cpu_s"]),
            ("spools / appends / gap s", f"{args.spools} / {args.appends} / {args.gap}"),
            ("CPU µs per append (median of rounds)", med["cpu_us"]),
            ("  user / system µs", f"{med['user_us']} / {med['system_us']}"),
            ("appends per sync round", med["appends_per_sync"]),
        ],
    )
    doc: dict[str, Any] = {"args": vars(args), "code": logferry.__file__, "speed": speed}
    doc |= {"median": med, "runs": runs}
    print(f"\nresults: {write_results(args.name, doc, machine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
