"""Layered spool budgets: a tenant's quota is checked before the shared limit, all or nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from logferry.spool import SpoolFull, SpoolManager
from logferry.spool.budget import LayeredBudget
from logferry.spool.log import SpoolBudget


def test_quota_refuses_its_tenant_and_frees_on_drop(tmp_path: Path) -> None:
    quota = SpoolBudget(4096)
    layered: dict[str, LayeredBudget] = {}

    def budget_for(key: str) -> SpoolBudget | None:
        if not key.startswith("a/"):
            return None
        if "a" not in layered:
            layered["a"] = LayeredBudget([("customer 'a' quota", quota)])
            layered["a"].layers.append(("shared", manager.budget))
        return layered["a"]

    manager = SpoolManager(tmp_path, max_bytes="1MiB", budget_for=budget_for, janitor=False)

    async def run() -> None:
        a1, a2, b = manager.open("a/1"), manager.open("a/2"), manager.open("b/1")
        line = b"x" * 999 + b"\n"
        await a1.append(line, 1)
        await a2.append(line, 1)
        with pytest.raises(SpoolFull, match="customer 'a' quota is full") as full:
            for _ in range(10):
                await a1.append(line * 2, 2)
        assert full.value.retry_after > 0
        assert quota.used <= 4096
        for _ in range(20):  # another tenant is untouched by A's quota
            await b.append(line, 1)
        shared_before = manager.budget.used
        used_by_a = quota.used
        manager.drop("a/1")
        manager.drop("a/2")
        assert quota.used == 0
        assert manager.budget.used == shared_before - used_by_a

    try:
        asyncio.run(run())
    finally:
        manager.close()


def test_refusal_rolls_back_earlier_layers() -> None:
    first, second = SpoolBudget(100), SpoolBudget(10)
    layered = LayeredBudget([("first", first), ("second", second)])
    assert not layered.try_reserve(50)
    assert (first.used, second.used) == (0, 0)
    assert "second is full" in str(layered.refusal(50))
    assert layered.try_reserve(10) and (first.used, second.used) == (10, 10)
    layered.adjust(-10)
    assert (first.used, second.used) == (0, 0)
