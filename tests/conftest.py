"""Shared fixtures: one patched emulator per test session (per xdist worker), unique names, and
the spool backend the service's end-to-end tests run on (tests/backends.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import skip_allowlist
from backends import BACKEND_PARAMS, drop_prefix, nats_spool_table, new_prefix
from logferry.local.emulator import Emulator, start_emulator
from logferry.local.nats_cluster import NatsCluster


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


@pytest.fixture(scope="session")
def spool_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One JetStream node on loopback per session (per xdist worker), started on first use."""
    cluster = NatsCluster(tmp_path_factory.mktemp("spool-nats"), nodes=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _spool_backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "local":
        yield {}
        return
    if request.param != "nats":
        raise ValueError(f"unknown spool backend {request.param!r}")
    cluster: NatsCluster = request.getfixturevalue("spool_nats")
    prefix = new_prefix()
    yield nats_spool_table(cluster.urls, prefix)
    drop_prefix(cluster.urls, prefix)  # a serve a failed test left running fails from here on


@pytest.fixture(params=BACKEND_PARAMS)
def spool_backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The `[spool]` keys that select the backend: {} for "local"; for "nats" the session's
    server and a stream prefix of this test's own, whose streams are dropped afterwards."""
    yield from _spool_backend(request)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def module_spool_backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """`spool_backend` for a module-scoped serve (one stream prefix for the module)."""
    yield from _spool_backend(request)
