"""The NATS launcher the scale-out tests stand on: it replicates, fails over, deduplicates."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from logferry.local.nats_cluster import NatsCluster


async def _publish_until_ok(
    js: nats.js.JetStreamContext, subject: str, data: bytes, msg_id: str
) -> float:
    """Publish (retrying while there is no leader); seconds spent retrying."""
    start = time.monotonic()
    while True:
        try:
            await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=1)
            return time.monotonic() - start
        except (TimeoutError, nats.errors.Error):
            if time.monotonic() - start > 60:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow  # kill -9 / restart: CI runs it; `make test-fast` stays under 5 min
def test_three_nodes_keep_acknowledged_messages_through_a_leader_kill(tmp_path: Path) -> None:
    async def run(cluster: NatsCluster) -> None:
        nc = await nats.connect(cluster.urls.split(","), max_reconnect_attempts=-1)
        js = nc.jetstream()
        config = StreamConfig(name="T", subjects=["t.>"], num_replicas=3, storage=StorageType.FILE)
        deadline = time.monotonic() + 30
        while True:
            try:
                await js.add_stream(config)
                break
            except nats.errors.Error:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        for i in range(50):
            await _publish_until_ok(js, "t.a", f"m{i}".encode(), f"id{i}")
        # A retried publish inside the duplicate window is not stored twice.
        ack = await js.publish("t.a", b"m0", headers={"Nats-Msg-Id": "id0"})
        assert ack.duplicate
        leader = cluster.stream_leader("T")
        assert leader is not None
        cluster.kill(leader)
        for i in range(50, 60):
            await _publish_until_ok(js, "t.a", f"m{i}".encode(), f"id{i}")
        info = await js.stream_info("T")
        assert info.state.messages == 60
        await nc.close()

    with NatsCluster(tmp_path, nodes=3) as cluster:
        asyncio.run(run(cluster))
        assert sum(node.running for node in cluster.nodes) == 2
