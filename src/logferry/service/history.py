"""Per-endpoint history for the console's chart: delivered lines/bytes and errors per minute,
for the last hour, in memory.

Why sampled rather than recorded at delivery time: the delivery worker is being rewritten, so
this module only *observes* what already exists: each worker's cumulative `stats`
(lines/bytes delivered) and the `logferry_delivery_errors` Prometheus counter. A background
task (and every history request) takes the difference since the previous sample and adds it to
the current minute's bucket. A counter that goes down (the worker was replaced) counts from zero
again. History is lost on restart, by design: it is a glance at the last hour, not a record
(Prometheus is the record).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logferry.service.runtime import Service

BUCKET_SECONDS = 60
BUCKETS = 60
SAMPLE_SECONDS = 5.0

Key = tuple[str, str]


@dataclass
class Bucket:
    start: int
    """Unix time of the minute's start."""
    lines: int = 0
    bytes: int = 0
    errors: int = 0


@dataclass
class _Ring:
    buckets: deque[Bucket] = field(default_factory=lambda: deque(maxlen=BUCKETS))
    last: tuple[int, int, int] | None = None
    """(lines delivered, bytes delivered, errors) at the previous sample."""


def _delta(now: int, before: int) -> int:
    return now - before if now >= before else now


class EndpointHistory:
    """A ring of per-minute buckets per endpoint, fed by `sample`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._rings: dict[Key, _Ring] = {}
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ feeding

    def record(self, key: Key, lines: int, bytes_: int, errors: int) -> None:
        """Take cumulative counters for `key`; add what changed since last time."""
        with self._lock:
            ring = self._rings.setdefault(key, _Ring())
            if ring.last is None:
                # First sight (service start or new endpoint): what was delivered before is
                # not attributable to a minute, so it is not charted.
                ring.last = (lines, bytes_, errors)
                return
            d_lines = _delta(lines, ring.last[0])
            d_bytes = _delta(bytes_, ring.last[1])
            d_errors = _delta(errors, ring.last[2])
            ring.last = (lines, bytes_, errors)
            if not (d_lines or d_bytes or d_errors):
                return
            start = int(self.clock() // BUCKET_SECONDS) * BUCKET_SECONDS
            if not ring.buckets or ring.buckets[-1].start != start:
                ring.buckets.append(Bucket(start))
            bucket = ring.buckets[-1]
            bucket.lines += d_lines
            bucket.bytes += d_bytes
            bucket.errors += d_errors

    def sample(self, service: Service) -> None:
        """Read every live worker's counters and the error counter once."""
        errors = _error_counts(service)
        live = set()
        for key, worker in list(service.workers.items()):
            live.add(key)
            stats = worker.stats
            self.record(key, stats.lines_delivered, stats.bytes_delivered, errors.get(key, 0))
        with self._lock:
            for key in [k for k in self._rings if k not in service.endpoints and k not in live]:
                del self._rings[key]  # deleted endpoint: its history goes with it

    # ------------------------------------------------------------------ reading

    def buckets(self, key: Key) -> list[dict[str, Any]]:
        """The last hour, oldest first, one entry per minute (zero-filled)."""
        now = int(self.clock() // BUCKET_SECONDS) * BUCKET_SECONDS
        with self._lock:
            ring = self._rings.get(key)
            known = {b.start: b for b in ring.buckets} if ring else {}
        out = []
        for i in range(BUCKETS - 1, -1, -1):
            start = now - i * BUCKET_SECONDS
            b = known.get(start) or Bucket(start)
            out.append(
                {"start": float(b.start), "lines": b.lines, "bytes": b.bytes, "errors": b.errors}
            )
        return out

    # ------------------------------------------------------------------ background task

    def start(self, service: Service, interval: float = SAMPLE_SECONDS) -> None:
        async def loop() -> None:
            while True:
                with contextlib.suppress(Exception):  # a glance must never stop the service
                    self.sample(service)
                await asyncio.sleep(interval)

        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _error_counts(service: Service) -> dict[Key, int]:
    """Delivery errors per endpoint, summed over code and kind, from the Prometheus counter."""
    counts: dict[Key, int] = {}
    for metric in service.metrics.delivery_errors.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            key = (labels.get("customer", ""), labels.get("endpoint", ""))
            counts[key] = counts.get(key, 0) + int(sample.value)
    return counts
