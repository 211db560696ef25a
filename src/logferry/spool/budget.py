"""Layered spool budgets: a tenant's quota checked before the shared directory limit.

A `Spool` takes one budget object; `LayeredBudget` is that object for a spool that belongs to a
tenant: it reserves in every layer (quota first, shared last) or in none, so a tenant at its
quota is refused while the shared budget still has room for everybody else, and bytes a tenant
frees are given back to both layers.
"""

from __future__ import annotations

from logferry.spool.log import SpoolBudget, SpoolFull, _Rate


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
    def used(self) -> int:  # type: ignore[override]
        return self._tightest().used

    @property
    def max_bytes(self) -> int | None:  # type: ignore[override]
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
