"""Shared fixtures: one patched emulator per test session (per xdist worker), unique names."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

import skip_allowlist
from logferry.local.emulator import Emulator, start_emulator


def pytest_configure(config: pytest.Config) -> None:
    skip_allowlist.configure(config)  # CI=true: a skip not on tests/skip_allowlist.txt fails


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The local AWS emulator over HTTP with IAM enforcement on (vendor + customer accounts)."""
    with start_emulator() as running:
        yield running


@pytest.fixture
def unique() -> Callable[[str], str]:
    """`unique("bkt")` → "bkt-3f9a1c2d": names that never collide within a session."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make
