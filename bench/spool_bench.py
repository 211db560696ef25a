"""Spool storage benchmark: segmented log vs SQLite WAL, durable appends with group commit.

Both stores get the same treatment: appends from N concurrent asyncio tasks, acknowledged only
after fsync, one fsync (or one SQLite COMMIT with synchronous=FULL) covering every append that
queued while the previous one ran. Then a full sequential read, then a mixed run where a
delivery thread reads and commits while the appenders write.

    .venv/bin/python bench/spool_bench.py [--seconds 2] [--dir /var/tmp/x] [--quick]

Prints a table and writes bench/results/spool.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from logferry.spool import writer as spool_writer
from logferry.spool.log import Spool
from logferry.spool.manager import SpoolManager

LINE = b"x" * 204 + b"\n"  # ~205-byte log lines, the service's sizing assumption


def payload(size: int) -> tuple[bytes, int]:
    n = max(1, size // len(LINE))
    return LINE * n, n


class Store(Protocol):
    async def append(self, data: bytes, lines: int) -> Any: ...
    def read_all(self) -> int: ...
    def consume(self, stop: threading.Event) -> int: ...
    def close(self) -> None: ...


# -- the segmented log (our Spool) ---------------------------------------------------------------


class SegStore:
    name = "segmented-log"

    def __init__(self, path: str) -> None:
        self.spool = Spool(path, executor=ThreadPoolExecutor(4), retire_bytes=1 << 40)

    async def append(self, data: bytes, lines: int) -> Any:
        return await self.spool.append(data, lines)

    def read_all(self) -> int:
        total, off = 0, 0
        while chunks := self.spool.read(off, 1 << 20):
            total += sum(len(c.data) for c in chunks)
            off = chunks[-1].end
        return total

    def consume(self, stop: threading.Event) -> int:
        """Delivery: read 1 MiB batches and commit them, until stopped and drained."""
        total, off = 0, self.spool.committed_offset
        while True:
            chunks = self.spool.read(off, 1 << 20)
            if not chunks:
                if stop.is_set():
                    return total
                self.spool.wait_for_data(off, 0.05)
                continue
            total += sum(len(c.data) for c in chunks)
            off = chunks[-1].end
            self.spool.commit(off)

    def close(self) -> None:
        self.spool.close()


# -- SQLite WAL with the same group commit -------------------------------------------------------


class SqliteStore:
    """Chunks as BLOB rows; one writer thread commits every queued insert in one transaction."""

    name = "sqlite-wal"

    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.db = os.path.join(path, "spool.db")
        self.conn = self._connect()
        self.conn.execute(
            # AUTOINCREMENT: like our offsets, ids must never be reused once rows are deleted
            "CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "accepted_at REAL, lines INTEGER, data BLOB)"
        )
        self.lock = threading.Lock()
        self.queue: list[tuple[bytes, int, asyncio.AbstractEventLoop, asyncio.Future[int]]] = []
        self.flushing = False
        self.pool = ThreadPoolExecutor(1)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every COMMIT: durable acks
        return conn

    async def append(self, data: bytes, lines: int) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        with self.lock:
            self.queue.append((data, lines, loop, fut))
            start = not self.flushing
            self.flushing = True
        if start:
            self.pool.submit(self._flush)
        return await fut

    def _flush(self) -> None:
        while True:
            with self.lock:
                batch, self.queue = self.queue, []
                if not batch:
                    self.flushing = False
                    return
            now = time.time()
            self.conn.execute("BEGIN")
            cur = self.conn.executemany(
                "INSERT INTO chunks (accepted_at, lines, data) VALUES (?, ?, ?)",
                [(now, lines, data) for data, lines, _, _ in batch],
            )
            del cur
            self.conn.execute("COMMIT")
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[int]]] = {}
            for _, _, loop, fut in batch:
                by_loop.setdefault(loop, []).append(fut)
            for loop, futs in by_loop.items():
                loop.call_soon_threadsafe(_finish, futs)

    def read_all(self) -> int:
        conn = self._connect()
        total, last = 0, 0
        while True:
            rows = conn.execute(
                "SELECT id, data FROM chunks WHERE id > ? ORDER BY id LIMIT 256", (last,)
            ).fetchall()
            if not rows:
                conn.close()
                return total
            total += sum(len(r[1]) for r in rows)
            last = rows[-1][0]

    def consume(self, stop: threading.Event) -> int:
        conn = self._connect()
        total, last = 0, 0
        while True:
            rows = conn.execute(
                "SELECT id, data FROM chunks WHERE id > ? ORDER BY id LIMIT 64", (last,)
            ).fetchall()
            if not rows:
                if stop.is_set():
                    conn.close()
                    return total
                time.sleep(0.01)
                continue
            total += sum(len(r[1]) for r in rows)
            last = rows[-1][0]
            conn.execute("DELETE FROM chunks WHERE id <= ?", (last,))  # commit = delete

    def close(self) -> None:
        self.pool.shutdown()
        self.conn.close()


def _finish(futs: list[asyncio.Future[int]]) -> None:
    for f in futs:
        if not f.done():
            f.set_result(0)


# -- runs -----------------------------------------------------------------------------------------


def count_fsyncs() -> tuple[Callable[[], int], Callable[[], None]]:
    calls = [0]
    real = spool_writer._fdatasync

    def counting(fd: int) -> None:
        calls[0] += 1
        real(fd)

    spool_writer._fdatasync = counting

    def restore() -> None:
        spool_writer._fdatasync = real

    return (lambda: calls[0]), restore


async def drive(store: Store, chunk_bytes: int, concurrency: int, seconds: float) -> dict[str, Any]:
    data, lines = payload(chunk_bytes)
    appended = [0]
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await store.append(data, lines)
            appended[0] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    return {
        "appends": appended[0],
        "seconds": dt,
        "mb_s": appended[0] * len(data) / dt / 1e6,
        "lines_s": appended[0] * lines / dt,
    }


def run_one(
    kind: type[SegStore] | type[SqliteStore],
    root: str,
    chunk_bytes: int,
    concurrency: int,
    seconds: float,
    mixed: bool,
) -> dict[str, Any]:
    path = tempfile.mkdtemp(dir=root)
    try:
        store = kind(path)
        get_syncs, restore = count_fsyncs()
        stop = threading.Event()
        consumed = [0]
        consumer = None
        if mixed:
            consumer = threading.Thread(target=lambda: consumed.__setitem__(0, store.consume(stop)))
            consumer.start()
        try:
            res = asyncio.run(drive(store, chunk_bytes, concurrency, seconds))
        finally:
            restore()
        if consumer is not None:
            stop.set()
            consumer.join()
            res["consumed_mb"] = consumed[0] / 1e6
        res["fsyncs"] = get_syncs() if kind is SegStore else None
        if not mixed:
            t0 = time.perf_counter()
            nbytes = store.read_all()
            dt = time.perf_counter() - t0
            res["read_mb_s"] = nbytes / dt / 1e6
        store.close()
        res.update(store=kind.name, chunk_bytes=len(payload(chunk_bytes)[0]), conc=concurrency)
        res["mode"] = "append+deliver" if mixed else "append"
        return res
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def scale_run(root: str, endpoints: int) -> dict[str, Any]:
    """10,000 endpoints: one append each, then idle close; fds, RSS and timings."""
    import gc

    path = tempfile.mkdtemp(dir=root)
    try:
        m = SpoolManager(path, janitor=False, flush_threads=8)
        fds0, rss0 = len(os.listdir("/proc/self/fd")), rss_kib()

        async def fill() -> None:
            sem = asyncio.Semaphore(256)

            async def one(i: int) -> None:
                async with sem:
                    await m.open(f"customer{i % 1000}/endpoint{i}").append(LINE, 1)

            await asyncio.gather(*(one(i) for i in range(endpoints)))

        t0 = time.perf_counter()
        asyncio.run(fill())
        t_fill = time.perf_counter() - t0
        fds_active = len(os.listdir("/proc/self/fd")) - fds0
        t0 = time.perf_counter()
        released = m.close_idle(0)
        t_idle = time.perf_counter() - t0
        gc.collect()
        fds_idle = len(os.listdir("/proc/self/fd")) - fds0
        rss_idle = rss_kib() - rss0
        t0 = time.perf_counter()
        for i in range(0, endpoints, 10):  # reopen 10% after idling (clean notes, no rescans)
            sp = m.open(f"customer{i % 1000}/endpoint{i}")
            assert sp.read(sp.committed_offset)
        t_reopen = (time.perf_counter() - t0) / (endpoints // 10)
        m.close()
        t0 = time.perf_counter()
        m2 = SpoolManager(path, janitor=False)
        keys = m2.keys_on_disk()
        t_restart = time.perf_counter() - t0
        m2.close()
        return {
            "endpoints": endpoints,
            "first_append_all_s": round(t_fill, 2),
            "active_fds": fds_active,
            "idle_close_s": round(t_idle, 3),
            "released": released,
            "idle_fds": fds_idle,
            "idle_rss_kib_delta": rss_idle,
            "reopen_ms_each": round(t_reopen * 1e3, 3),
            "restart_scan_s": round(t_restart, 3),
            "keys_on_disk": len(keys),
        }
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    ap.add_argument("--endpoints", type=int, default=10_000, help="scale run size (0: skip)")
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "spool.json")
    )
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir)
    sizes = [205, 4096, 65536] if not args.quick else [205, 65536]
    concs = [1, 16, 128] if not args.quick else [1, 64]
    configs = [(size, conc, False) for size in sizes for conc in concs]
    configs += [(size, 64, True) for size in (4096, 65536)]
    rows: list[dict[str, Any]] = []
    scale: dict[str, Any] = {}
    try:
        if args.endpoints:
            scale = scale_run(root, args.endpoints)
            print("scale:", json.dumps(scale), flush=True)
        for size, conc, mixed in configs:
            runs: dict[str, list[dict[str, Any]]] = {"seg": [], "sql": []}
            for _ in range(args.repeat):  # interleaved: a noisy disk hurts both stores alike
                runs["seg"].append(run_one(SegStore, root, size, conc, args.seconds, mixed))
                runs["sql"].append(run_one(SqliteStore, root, size, conc, args.seconds, mixed))
            for key in ("seg", "sql"):
                rows.append(median_row(runs[key]))
                print_row(rows[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarize(rows)
    print()
    for line in summary["lines"]:
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "seconds_per_run": args.seconds,
                "line_bytes": len(LINE),
                "rows": rows,
                "scale": scale,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median MB/s, plus the spread of all runs."""
    ordered = sorted(runs, key=lambda r: r["mb_s"])
    row = dict(ordered[len(ordered) // 2])
    row["mb_s_runs"] = [round(r["mb_s"], 1) for r in runs]
    if "read_mb_s" in row:
        row["read_mb_s"] = sorted(r["read_mb_s"] for r in runs)[len(runs) // 2]
    return row


HEADER_PRINTED = [False]


def print_row(r: dict[str, Any]) -> None:
    if not HEADER_PRINTED[0]:
        print(
            f"{'store':<14} {'mode':<15} {'chunk':>6} {'conc':>5} {'appends/s':>10} "
            f"{'MB/s':>8} {'lines/s':>10} {'per fsync':>9} {'read MB/s':>9}"
        )
        HEADER_PRINTED[0] = True
    per = f"{r['appends'] / r['fsyncs']:.1f}" if r.get("fsyncs") else "-"
    read = f"{r['read_mb_s']:.0f}" if "read_mb_s" in r else f"d{r.get('consumed_mb', 0):.0f}MB"
    print(
        f"{r['store']:<14} {r['mode']:<15} {r['chunk_bytes']:>6} {r['conc']:>5} "
        f"{r['appends'] / r['seconds']:>10.0f} {r['mb_s']:>8.1f} {r['lines_s']:>10.0f} "
        f"{per:>9} {read:>9}",
        flush=True,
    )


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def best(store: str, key: str, mode: str = "append") -> float:
        return max(r[key] for r in rows if r["store"] == store and r["mode"] == mode and key in r)

    out: dict[str, Any] = {}
    lines = []
    for key, label in (("mb_s", "durable append MB/s"), ("read_mb_s", "read MB/s")):
        seg, sql = best("segmented-log", key), best("sqlite-wal", key)
        out[key] = {"segmented-log": seg, "sqlite-wal": sql, "ratio": seg / sql}
        lines.append(f"best {label}: segmented {seg:.0f}, sqlite {sql:.0f} ({seg / sql:.1f}x)")
    seg_mixed = best("segmented-log", "mb_s", "append+deliver")
    sql_mixed = best("sqlite-wal", "mb_s", "append+deliver")
    out["append_deliver_mb_s"] = {"segmented-log": seg_mixed, "sqlite-wal": sql_mixed}
    lines.append(f"append while delivering MB/s: segmented {seg_mixed:.0f}, sqlite {sql_mixed:.0f}")
    small = [r for r in rows if r["chunk_bytes"] == len(LINE) and r["mode"] == "append"]
    for r in small:
        if r["conc"] == max(x["conc"] for x in small):
            lines.append(
                f"1-line chunks, {r['conc']} appenders, {r['store']}: {r['lines_s']:.0f} lines/s"
            )
    out["lines"] = lines
    return out


if __name__ == "__main__":
    main()
