"""Per-endpoint history for the console's chart: delivered lines/bytes and errors per minute,
for the last hour, in memory.

Why sampled rather than recorded at delivery time: the delivery worker is being rewritten, so
this module only *observes* what already exists: the service's Prometheus counters
`logferry_delivered_lines`, `logferry_delivered_bytes` and `logferry_delivery_errors`. They
live as long as the process and start at zero, so the first sample of an endpoint needs no
baseline guess. A background task (and every history request) takes the difference since the
previous sample and adds it to the current minute's bucket. History is lost on restart, by
design: it is a glance at the last hour, not a record (Prometheus is the record).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
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


Counters = tuple[int, int, int]
"""(lines delivered, bytes delivered, delivery errors), cumulative since the process started."""


def _delta(now: int, before: int) -> int:
    return now - before if now >= before else now


class EndpointHistory:
    """A ring of per-minute buckets per endpoint, fed by `sample`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._rings: dict[Key, deque[Bucket]] = {}
        self._last: dict[Key, Counters] = {}
        """Kept after an endpoint is deleted: a re-created one continues the same counters."""
        self._lock = threading.Lock()
        self._sampling = threading.Lock()
        """One sample at a time: two threads reading the counters could record an older reading
        after a newer one, which `_delta` would take for a counter restart (double counting)."""
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ feeding

    def record(self, key: Key, lines: int, bytes_: int, errors: int) -> None:
        """Take cumulative counters for `key`; add what changed since last time."""
        with self._lock:
            last = self._last.get(key, (0, 0, 0))
            d_lines = _delta(lines, last[0])
            d_bytes = _delta(bytes_, last[1])
            d_errors = _delta(errors, last[2])
            self._last[key] = (lines, bytes_, errors)
            if not (d_lines or d_bytes or d_errors):
                return
            start = int(self.clock() // BUCKET_SECONDS) * BUCKET_SECONDS
            ring = self._rings.setdefault(key, deque(maxlen=BUCKETS))
            if not ring or ring[-1].start != start:
                ring.append(Bucket(start))
            bucket = ring[-1]
            bucket.lines += d_lines
            bucket.bytes += d_bytes
            bucket.errors += d_errors

    def sample(self, service: Service) -> None:
        """Read the delivery counters of every endpoint once: work proportional to all
        endpoints, so callers run it in a thread, never on the event loop."""
        with self._sampling:
            self._sample(service)

    def _sample(self, service: Service) -> None:
        metrics = service.metrics
        lines = _totals(metrics.delivered_lines)
        bytes_ = _totals(metrics.delivered_bytes)
        errors = _totals(metrics.delivery_errors)
        for key in set(lines) | set(bytes_) | set(errors):
            self.record(key, lines.get(key, 0), bytes_.get(key, 0), errors.get(key, 0))
        with self._lock:
            for key in [k for k in self._rings if k not in service.endpoints]:
                del self._rings[key]  # deleted endpoint: its history goes with it

    # ------------------------------------------------------------------ reading

    def buckets(self, key: Key) -> list[dict[str, Any]]:
        """The last hour, oldest first, one entry per minute (zero-filled)."""
        now = int(self.clock() // BUCKET_SECONDS) * BUCKET_SECONDS
        with self._lock:
            known = {b.start: b for b in self._rings.get(key, ())}
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
                    await asyncio.to_thread(self.sample, service)
                await asyncio.sleep(interval)

        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _totals(counter: Any) -> dict[Key, int]:
    """A labelled Prometheus counter summed per (customer, endpoint) over its other labels."""
    counts: dict[Key, int] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            key = (labels.get("customer", ""), labels.get("endpoint", ""))
            counts[key] = counts.get(key, 0) + int(sample.value)
    return counts
