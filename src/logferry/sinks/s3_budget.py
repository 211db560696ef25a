"""A process-wide cap on S3 part bytes in flight, shared by every S3 sink.

Each sink bounds its own parts in flight (`parts_in_flight`), but 1,000 endpoints × 4 parts ×
8 MiB would still be 32 GiB. This budget is the second, global bound: a part is submitted only
when its bytes fit; a sink that finds no room registers its `wake` callback and is woken as soon
as any sink's part finishes (success or failure), so nobody polls and nothing deadlocks (parts
in flight always finish, releasing their bytes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

MIB: Final = 1024 * 1024
DEFAULT_BUDGET_BYTES: Final = 128 * MIB
"""16 parts of 8 MiB: fills 100 MB/s at 50 ms per call many times over, and stays well inside
the service's 256 MiB RSS target."""


class InflightBudget:
    """Bytes of S3 parts submitted to the io pool and not yet finished (thread-safe)."""

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []

    def acquire(self, nbytes: int, waiter: Callable[[], None]) -> bool:
        """Take `nbytes` if they fit (one part larger than the whole budget fits when nothing
        else is in flight); otherwise remember `waiter` to call on the next release."""
        with self._lock:
            if self.used and self.used + nbytes > self.max_bytes:
                if waiter not in self._waiters:
                    self._waiters.append(waiter)
                return False
            self.used += nbytes
            self.peak = max(self.peak, self.used)
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()


_shared = InflightBudget()


def shared_budget() -> InflightBudget:
    """The budget every S3 sink of this process uses unless given its own."""
    return _shared


def configure_shared_budget(max_bytes: int) -> None:
    """Set the process-wide cap (the service calls this once at start-up)."""
    _shared.max_bytes = max_bytes
