"""Per-tenant rate limits: a token bucket that may go into debt, keyed by customer.

A request is admitted while the bucket is not in debt and then pays its full cost, so a body
larger than one second's allowance still gets through (once), and the tenant then waits until
the debt is repaid: `Retry-After` is exactly that wait. One customer's bucket never touches
another's, which is the point (a flood from A gives A 429s and nobody else).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; thread-safe."""

    __slots__ = ("_clock", "_lock", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait(self) -> float:
        """Seconds until a request would be admitted (0.0: now)."""
        with self._lock:
            self._refill()
            return 0.0 if self._tokens > 0 else (-self._tokens + 1e-9) / self.rate

    def take(self, cost: float, *, debt: bool = True) -> float:
        """Admit and charge `cost` (returns 0.0), else the wait in seconds. With `debt` a
        request is admitted whenever the bucket is not in debt (bodies larger than the burst
        still pass, then the tenant waits); without, only when `cost` tokens are saved up."""
        with self._lock:
            self._refill()
            need = 0.0 if debt else cost - 1e-9
            if self._tokens <= need:
                return (need - self._tokens + 1e-9) / self.rate
            self._tokens -= cost
            return 0.0

    def charge(self, cost: float) -> None:
        """Charge `cost` after the fact (e.g. lines, known only after normalisation)."""
        with self._lock:
            self._refill()
            self._tokens -= cost


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (the header has no fractions)."""
    return str(max(1, math.ceil(seconds)))


class KeyedBuckets:
    """One bucket per key (customer), created on first use with that key's current limits."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, float, float], TokenBucket] = {}
        self._lock = threading.Lock()

    def get(self, key: str, rate: float, burst: float | None = None) -> TokenBucket:
        """The bucket for `key` at `rate`; a changed rate starts a fresh bucket."""
        b = float(burst if burst is not None else rate)
        with self._lock:
            bucket = self._buckets.get((key, rate, b))
            if bucket is None:
                for k in [k for k in self._buckets if k[0] == key]:
                    del self._buckets[k]
                bucket = self._buckets[(key, rate, b)] = TokenBucket(rate, b)
            return bucket

    def forget(self, key: str) -> None:
        with self._lock:
            for k in [k for k in self._buckets if k[0] == key]:
                del self._buckets[k]
