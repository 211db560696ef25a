"""NATS JetStream servers for the tests: started by the tests themselves, on loopback only.

`nats_server` is one JetStream node per test module; `nats_cluster3` a 3-node cluster (replicas
3, for leader kills). Both run with `sync_interval: always` (logferry.local.nats_cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from service_helpers import NodeProcess, base_config, nats_spool


def _cluster(tmp: Path, nodes: int) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp, nodes=nodes).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from _cluster(tmp_path_factory.mktemp("nats1"), 1)


@pytest.fixture(scope="module")
def nats_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from _cluster(tmp_path_factory.mktemp("nats3"), 3)


def nats_node(
    emulator: Emulator,
    nats: NatsCluster,
    tmp_path: Path,
    name: str,
    role: str,
    prefix: str,
    *,
    server: dict[str, Any] | None = None,
    **spool: Any,
) -> NodeProcess:
    """One `logferry serve --role ROLE` on the NATS backend (not started), its files under
    `tmp_path / name`; `spool` adds `[spool]` keys (e.g. replicas = 3)."""
    config = base_config(
        emulator,
        tmp_path / name / "spool",
        server={"idle_flush_seconds": 1, **(server or {})},
        spool=nats_spool(nats.urls, prefix, name, **spool),
    )
    return NodeProcess(emulator, config, tmp_path / name, role)
