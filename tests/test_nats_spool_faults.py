"""The NATS spool when things go wrong: a full stream, a server restart (appends fail
clearly, then resume; the owner re-takes its endpoint and resumes at its cursor), and a
fragmented line whose appender died half-way (skipped the same way by every reader)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from logferry.local.nats_cluster import NatsCluster
from logferry.spool.errors import SpoolFull
from logferry.spool.nats import NatsBackend, NatsUnavailable
from logferry.spool.nats.wire import H_ACC, H_FRAG, H_ID, H_LINES, H_REQ, H_SIZE
from nats_helpers import nats_server  # noqa: F401 - fixture
from nats_spool_helpers import backend, settings, until


def test_a_full_stream_refuses_with_retry_after_and_takes_data_again_after_commit(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def run() -> None:
        s = settings(nats_server, shards=1, max_bytes=64 * 1024)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["full"])
            await until(lambda: "full" in b.owned(), "owns full")
            spool = await asyncio.to_thread(b.provider.open, "full")
            line = b"x" * 1023 + b"\n"
            stored = 0
            with pytest.raises(SpoolFull) as err:
                for _ in range(200):
                    await spool.append(line, 1)
                    stored += 1
            assert err.value.retry_after > 0
            assert 0 < stored < 64
            await until(lambda: spool.end_offset == stored * 1024, "every ack indexed")
            await asyncio.to_thread(spool.commit, spool.end_offset)
            await spool.append(line, 1)  # purged: room again
            await until(lambda: spool.pending_lines == 1, "the new line is there")

    asyncio.run(run())


@pytest.mark.slow  # kill -9 / restart: CI runs it; `make test-fast` stays under 5 min
def test_server_restart_fails_appends_clearly_then_resumes_at_the_cursor(
    tmp_path: Path,
) -> None:
    with NatsCluster(tmp_path / "nats", nodes=1) as cluster:

        async def run() -> None:
            s = settings(cluster, append_timeout_seconds=2)
            async with backend(s, "n1", tmp_path) as b:
                b.set_endpoints(["k"])
                await until(lambda: "k" in b.owned(), "owns k")
                spool = await asyncio.to_thread(b.provider.open, "k")
                await spool.append(b"a\nb\n", 2)
                await until(lambda: spool.end_offset == 4, "indexed")
                await asyncio.to_thread(spool.commit, 2)
                node = cluster.nodes[0]
                cluster.kill(node)
                await until(lambda: not b.connected, "the backend sees the outage")
                with pytest.raises(NatsUnavailable):
                    await spool.append(b"lost\n", 1)
                # Longer than the lease: the node gives the endpoint up by its own clock.
                await until(lambda: "k" not in b.owned(), "ownership lost by the lease clock")
                cluster.start_node(node)
                await until(lambda: b.connected, "reconnected", 60)
                await until(lambda: "k" in b.owned(), "owns k again", 60)
                assert (b.ownership.record("k") or {})["epoch"] == 2
                await spool.append(b"c\n", 1)
                await until(lambda: spool.end_offset == 6, "resumed from the cursor")
                got = await asyncio.to_thread(spool.read, spool.committed_offset)
                assert spool.committed_offset == 2
                assert b"".join(c.data for c in got) == b"b\nc\n"

        asyncio.run(run())


def test_an_abandoned_fragment_group_is_skipped_once_it_cannot_complete(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An appender that died after the first fragment of a long line: a group still within
    the duplicate window blocks the positions after it (it may complete); one older than the
    window is skipped. A completed group is one line."""

    async def run() -> None:
        s = settings(nats_server, max_message_bytes=1024)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["g"])
            await until(lambda: "g" in b.owned(), "owns g")
            spool = await asyncio.to_thread(b.provider.open, "g")

            async def piece(req: str, i: int, n: int, size: int, acc: float, data: bytes) -> None:
                headers = {
                    H_ID: f"{req}:{i}",
                    H_SIZE: str(size if i == 0 else 0),
                    H_LINES: "1" if i == 0 else "0",
                    H_ACC: repr(acc),
                    H_REQ: req,
                    H_FRAG: f"0/{i}/{n}",
                }
                await asyncio.wrap_future(b.run(b.js.publish(spool.subject, data, headers=headers)))

            old = time.time() - 10 * s.duplicate_window_seconds
            await piece("dead:1", 0, 2, 1501, old, b"D" * 1024)  # never completed, too old
            await spool.append(b"after-dead\n", 1)
            await until(lambda: spool.end_offset == 11, "the dead group is skipped")
            now = time.time()
            await piece("slow:1", 0, 2, 1501, now, b"S" * 1024)  # may still complete
            await spool.append(b"after-slow\n", 1)
            for _ in range(10):
                await asyncio.sleep(0.1)
                assert spool.end_offset == 11  # blocked behind the incomplete group
            await piece("slow:1", 1, 2, 0, now, b"S" * 476 + b"\n")
            await until(lambda: spool.end_offset == 11 + 1501 + 11, "completed group")
            got = await asyncio.to_thread(spool.read, 0, 1 << 20)
            assert b"".join(c.data for c in got) == (
                b"after-dead\n" + b"S" * 1500 + b"\n" + b"after-slow\n"
            )
            assert spool.pending_lines == 3

    asyncio.run(run())


def test_the_heartbeat_ttl_follows_a_changed_lease(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A nodes bucket made with a shorter TTL would expire heartbeats before the lease they
    stand for: the backend resets it to lease_seconds."""

    async def run() -> None:
        s = settings(nats_server, lease_seconds=3.0)
        async with backend(s, "n1", tmp_path):
            pass
        longer = s.model_copy(update={"lease_seconds": 8.0})
        async with backend(longer, "n1", tmp_path) as b:
            info = await asyncio.wrap_future(b.run(b.js.stream_info(f"KV_{s.nodes_bucket}")))
            assert info.config.max_age == pytest.approx(8.0)

    asyncio.run(run())


def test_closing_while_the_server_is_gone_does_not_raise(tmp_path: Path) -> None:
    """A node stopped (SIGTERM) while its NATS server is down: the client holds heartbeats it
    could not send, and closing it wrote them to the lost connection. The close raised
    ConnectionResetError (CI caught it in a test's teardown after a leader kill); closing a
    lost connection has nothing left to lose."""
    cluster = NatsCluster(tmp_path / "nats", nodes=1).start()
    try:

        async def run() -> None:
            s = settings(cluster, lease_seconds=30.0, heartbeat_seconds=0.2)
            b = NatsBackend(s, node_id="n1", deliver=True, scratch_dir=tmp_path / "n1")
            await b.start()
            b.set_endpoints(["k"])
            await until(lambda: "k" in b.owned(), "owns k")
            cluster.kill(cluster.nodes[0])
            await until(lambda: not b.connected, "sees the server gone")
            await asyncio.sleep(1.0)  # heartbeats pile up in the client's pending buffer
            await b.close()

        asyncio.run(run())
    finally:
        cluster.stop()
