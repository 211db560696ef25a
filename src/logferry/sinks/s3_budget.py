"""A process-wide cap on S3 upload bytes in flight, shared by every S3 sink.

Each sink bounds its own parts in flight (`parts_in_flight`), but 1,000 endpoints × 4 parts ×
8 MiB would still be 32 GiB. This budget is the second, global bound (`server.upload_memory_bytes`):
an UploadPart or PutObject body is submitted only when its bytes fit; a sink that finds no room
registers its `wake` callback, stops reading its spool (`S3Sink.wants_data`) and gives its
delivery thread back; it is woken as soon as any sink's call finishes (success or failure), so
nobody polls and nothing deadlocks (calls in flight always finish, releasing their bytes).

Counting bytes is not enough on glibc: part buffers are allocated and freed on many threads, and
glibc's dynamic mmap threshold soon serves 8 MiB buffers from per-thread arenas that keep the
freed memory (a 1 GB drain peaked at 242–283 MiB RSS). `configure_shared_budget` pins the mmap
threshold, so every large buffer is mapped on its own and returned to the system when freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from typing import Final

MIB: Final = 1024 * 1024
DEFAULT_BUDGET_BYTES: Final = 64 * MIB
"""8 parts of 8 MiB: ≈ 200 MB/s at 300 ms per part (real AWS), several times what one box drains,
and with the part buffers returned to the system a 1 GB drain stays far inside 256 MiB RSS."""
MIN_BUDGET_BYTES: Final = 16 * MIB
"""Two parts. A part can exceed `part_size` by up to one member, and a body larger than the
whole budget still goes up alone (never a deadlock); from two parts up that never happens, so
the bytes in flight never exceed the budget."""
LARGE_BUFFER_BYTES: Final = 1 * MIB
"""Allocations from this size up are mapped on their own (glibc M_MMAP_THRESHOLD)."""
_M_MMAP_THRESHOLD: Final = -3  # glibc <malloc.h>


class InflightBudget:
    """Bytes of S3 bodies submitted to the io pool and not yet finished (thread-safe)."""

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.used = 0
        self.peak = 0
        """Highest `used` since start: /metrics shows it, so a test can check the bound held."""
        self.waits = 0
        """Times a body found no room and its sink waited (the budget was binding)."""
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []

    def acquire(self, nbytes: int, waiter: Callable[[], None]) -> bool:
        """Take `nbytes` if they fit (one body larger than the whole budget fits when nothing
        else is in flight); otherwise remember `waiter` to call on the next release."""
        with self._lock:
            if self.used and self.used + nbytes > self.max_bytes:
                self.waits += 1
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

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "max_bytes": self.max_bytes,
                "used": self.used,
                "peak": self.peak,
                "waits": self.waits,
                "waiting": len(self._waiters),
            }


_shared = InflightBudget()


def shared_budget() -> InflightBudget:
    """The budget every S3 sink of this process uses unless given its own."""
    return _shared


def configure_shared_budget(max_bytes: int) -> None:
    """Set the process-wide cap (the service calls this once at start-up) and have large
    buffers returned to the system when freed (see the module docstring)."""
    _shared.max_bytes = max_bytes
    return_large_buffers_to_system()


def return_large_buffers_to_system() -> bool:
    """Pin glibc's mmap threshold at `LARGE_BUFFER_BYTES`; False where there is no glibc
    (musl, macOS: their allocators do not keep freed large blocks the same way)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))
    return False
