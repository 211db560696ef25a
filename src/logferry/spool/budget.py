"""Spool byte budgets: the shared directory limit, and layered per-tenant quotas in front of it.

A `Spool` takes one budget object; `LayeredBudget` is that object for a spool that belongs to a
tenant: it reserves in every layer (quota first, shared last) or in none, so a tenant at its
quota is refused while the shared budget still has room for everybody else, and bytes a tenant
frees are given back to both layers.
"""

from __future__ import annotations

import threading
import time

from logferry.spool.errors import SpoolFull


class _Rate:
    """Bytes/s of commits, smoothed over >= 1 s windows; feeds SpoolFull.retry_after."""

    __slots__ = ("_acc", "_t0", "value")

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._acc = 0
        self.value = 0.0

    def add(self, n: int) -> None:
        now = time.monotonic()
        self._acc += n
        dt = now - self._t0
        if dt >= 1.0:
            inst = self._acc / dt
            self.value = inst if self.value == 0.0 else 0.5 * self.value + 0.5 * inst
            self._t0 = now
            self._acc = 0

    def eta(self, need: int) -> float:
        """Seconds until `need` bytes are likely freed (1 s when no rate is known yet)."""
        if self.value <= 0.0:
            return 1.0
        return min(60.0, max(0.05, need / self.value))


class SpoolBudget:
    """Disk bytes shared by every spool of a directory; `max_bytes=None` means unbounded."""

    def __init__(self, max_bytes: int | None = None, used: int = 0) -> None:
        self.max_bytes = max_bytes
        self._used = used
        self._lock = threading.Lock()
        self.rate = _Rate()

    @property
    def used(self) -> int:
        return self._used

    def try_reserve(self, n: int) -> bool:
        with self._lock:
            if self.max_bytes is not None and self._used + n > self.max_bytes:
                return False
            self._used += n
            return True

    def fits(self, n: int) -> bool:
        """Whether `n` more bytes would be reserved now (a hint: nothing is reserved)."""
        return self.max_bytes is None or self._used + n <= self.max_bytes

    def adjust(self, delta: int) -> None:
        """Account bytes that appear or disappear regardless of the limit (headers, deletes)."""
        with self._lock:
            self._used += delta

    def refusal(self, n: int) -> SpoolFull:
        """The error for a refused `try_reserve(n)` (a layered budget names the layer)."""
        over = self._used + n - (self.max_bytes or 0)
        return SpoolFull(
            f"spool directory is full ({self._used} of {self.max_bytes} bytes)",
            retry_after=self.rate.eta(over),
            fix="Wait for delivery to catch up, or raise the spool max_bytes.",
        )


class _Rates(_Rate):
    """Feeds every layer's commit-rate estimate (each layer's Retry-After uses its own)."""

    def __init__(self, rates: list[_Rate]) -> None:
        super().__init__()
        self._rates = rates

    def add(self, n: int) -> None:
        for rate in self._rates:
            rate.add(n)

    def eta(self, need: int) -> float:
        return self._rates[-1].eta(need)


class LayeredBudget(SpoolBudget):
    """All-or-nothing reservation over `layers` [(label, budget), ...], first refusal wins."""

    def __init__(self, layers: list[tuple[str, SpoolBudget]]) -> None:
        super().__init__(None, 0)
        if not layers:
            raise ValueError("a layered budget needs at least one layer")
        self.layers = layers
        self.rate = _Rates([b.rate for _, b in layers])

    def _tightest(self) -> SpoolBudget:
        bounded = [b for _, b in self.layers if b.max_bytes]
        if not bounded:
            return self.layers[-1][1]
        return max(bounded, key=lambda b: b.used / (b.max_bytes or 1))

    @property
    def used(self) -> int:
        return self._tightest().used

    @property
    def max_bytes(self) -> int | None:
        return self._tightest().max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int | None) -> None:
        if value is not None:
            raise AttributeError("set the limit on a layer, not on the layered budget")

    def try_reserve(self, n: int) -> bool:
        taken: list[SpoolBudget] = []
        for _, budget in self.layers:
            if not budget.try_reserve(n):
                for done in taken:
                    done.adjust(-n)
                return False
            taken.append(budget)
        return True

    def fits(self, n: int) -> bool:
        return all(budget.fits(n) for _, budget in self.layers)

    def adjust(self, delta: int) -> None:
        for _, budget in self.layers:
            budget.adjust(delta)

    def refusal(self, n: int) -> SpoolFull:
        for label, b in self.layers:
            if b.max_bytes is not None and b.used + n > b.max_bytes:
                return SpoolFull(
                    f"{label} is full ({b.used} of {b.max_bytes} bytes)",
                    retry_after=b.rate.eta(b.used + n - b.max_bytes),
                    fix="Wait for delivery to catch up, or raise the limit "
                    "(spool_max_bytes for a customer, spool.max_bytes for the service).",
                )
        return self.layers[-1][1].refusal(n)
