"""Helpers for the NATS spool tests: settings with short leases, a backend started on the
test's loop, and polling for a condition (no timing in pass/fail: a generous deadline only
bounds a hang)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from logferry.local.nats_cluster import NatsCluster
from logferry.spool.nats import NatsBackend, NatsSpoolSettings

_prefixes = itertools.count(1)


def settings(cluster: NatsCluster, prefix: str | None = None, **kw: Any) -> NatsSpoolSettings:
    """Short leases so takeovers happen within a test; a fresh prefix isolates tests that
    share one server."""
    values: dict[str, Any] = {
        "nats_url": cluster.urls,
        "stream_prefix": prefix or f"T{next(_prefixes)}",
        "shards": 2,
        "max_bytes": 512 * 1024 * 1024,
        "lease_seconds": 6.0,
        "heartbeat_seconds": 0.5,
    }
    values.update(kw)
    return NatsSpoolSettings(**values)


@asynccontextmanager
async def backend(
    s: NatsSpoolSettings, node_id: str, tmp: Path, *, deliver: bool = True
) -> AsyncIterator[NatsBackend]:
    b = NatsBackend(s, node_id=node_id, deliver=deliver, scratch_dir=tmp / node_id)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `cond` until true; fail with `what` if it never becomes true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)
