"""NATS JetStream servers for the tests: started by the tests themselves, on loopback only.

`nats_server` is one JetStream node per test module; `nats_cluster3` a 3-node cluster (replicas
3, for leader kills). Both run with `sync_interval: always` (logferry.local.nats_cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from logferry.local.nats_cluster import NatsCluster


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
