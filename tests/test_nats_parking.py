"""An owner follows only its active endpoints (issue 29, "follow only active endpoints").

nats-server refuses a stream's 1,001st consumer (`maximum consumers limit reached`, err 10026,
measured with 2.15.1 although stream and account `max_consumers` are -1). A delivery node that
kept one ordered consumer per owned endpoint could not follow more than 1,000 endpoints of one
stream, and the lines of the others waited. Here, against one real nats-server: idle endpoints
hold no consumer; lines appended by another node wake their endpoint; the owner's own append
wakes it; an endpoint that went idle again gives its consumer back; nothing is lost or doubled
across parking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from logferry.local.nats_cluster import NatsCluster
from logferry.spool.nats import NatsBackend
from nats_helpers import nats_server  # noqa: F401 - fixture
from nats_spool_helpers import backend, settings, until

IDLE = 1.5


async def _consumers(b: NatsBackend, stream: str) -> int:
    info = await asyncio.wrap_future(b.run(b.js.stream_info(stream)))
    return int(info.state.consumer_count)


async def until_async(
    measure: Callable[[], Awaitable[int]], want: int, what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while (got := await measure()) != want:
        assert time.monotonic() < deadline, f"never happened: {what} (last {got}, want {want})"
        await asyncio.sleep(0.2)


async def _read_all(spool: object, start: int) -> bytes:
    chunks = await asyncio.to_thread(spool.read, start, 1 << 30)  # type: ignore[attr-defined]
    return b"".join(c.data for c in chunks)


def test_idle_endpoints_hold_no_consumer_and_wake_for_any_nodes_lines(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def run() -> None:
        s = settings(nats_server, shards=1, idle_follow_seconds=IDLE)
        stream = s.stream_name(0)
        async with backend(s, "d1", tmp_path) as d, backend(s, "i1", tmp_path, deliver=False) as i:
            d.set_endpoints(["a", "b"])
            i.set_endpoints(["a", "b"])
            await until(lambda: {"a", "b"} <= d.owned(), "d1 owns a and b")
            a = await asyncio.to_thread(d.provider.open, "a")
            b = await asyncio.to_thread(d.provider.open, "b")
            # Nothing on their subjects: owned, indexed, and no consumer.
            assert a.parked and b.parked
            assert await _consumers(d, stream) == 0

            # Another node's lines wake the owner (nothing local would).
            elsewhere = await asyncio.to_thread(i.provider.open, "a")
            await elsewhere.append(b"one\ntwo\n", 2)
            await until(lambda: a.end_offset == 8, "the owner indexes the ingest node's lines")
            assert not a.parked and b.parked
            assert await _consumers(d, stream) == 1
            assert d.node_stats()["parked_wakeups_total"] >= 1
            assert await _read_all(a, 0) == b"one\ntwo\n"
            await asyncio.to_thread(a.commit, 8)

            # Idle again: the consumer goes, the subject holds nothing, the cursor stays. A
            # worker polling at the end (an empty read) does not keep it following.
            async def poll_at_end() -> None:
                while not a.parked:
                    assert await asyncio.to_thread(a.read, 8) == []
                    await asyncio.sleep(0.2)

            poller = asyncio.create_task(poll_at_end())
            await until(lambda: a.parked, "a parks after idle_follow_seconds", timeout=30)
            await poller
            # The server drops an ephemeral consumer once nobody listens (within seconds).
            await until_async(lambda: _consumers(d, stream), 0, "a's consumer is gone")
            info = await asyncio.wrap_future(d.run(d.js.stream_info(stream)))
            assert info.state.messages == 0
            assert (a.committed_offset, a.committed_line, a.pending_lines) == (8, 2, 0)

            # The owner's own append wakes it too; positions go on from the cursor.
            await a.append(b"three\n", 1)
            await until(lambda: a.end_offset == 14, "the owner indexes its own append")
            assert await _read_all(a, 8) == b"three\n"
            # And another node's append after a second parking, read exactly once.
            await asyncio.to_thread(a.commit, 14)
            await until(lambda: a.parked, "a parks again", timeout=30)
            await elsewhere.append(b"four\nfive\n", 2)
            await until(lambda: a.end_offset == 24, "woken again by the ingest node")
            assert await _read_all(a, 14) == b"four\nfive\n"
            assert a.pending_lines == 2 and a.committed_line == 3
            assert b.parked and b.end_offset == 0

    asyncio.run(run())


def test_an_owner_of_more_endpoints_than_a_stream_has_consumers_follows_the_active_ones(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """1,100 owned endpoints on one stream: before, following each took a consumer and the
    1,001st was refused; now idle ones take none, and the active ones are followed."""
    keys = [f"e{n:04d}" for n in range(1_100)]
    active = keys[::220]  # 5, spread over the range (the last ones included)

    async def run() -> None:
        s = settings(nats_server, shards=1, idle_follow_seconds=IDLE)
        stream = s.stream_name(0)
        async with backend(s, "d1", tmp_path) as d, backend(s, "i1", tmp_path, deliver=False) as i:
            d.set_endpoints(keys)
            i.set_endpoints(keys)
            await until(lambda: len(d.owned()) == len(keys), "d1 owns every endpoint")
            spools = {}
            for key in keys:
                spools[key] = await asyncio.to_thread(d.provider.open, key)
            assert all(spool.parked for spool in spools.values())
            assert await _consumers(d, stream) == 0
            for n, key in enumerate(active):
                ingest = await asyncio.to_thread(i.provider.open, key)
                await ingest.append(b"line %d\n" % n, 1)
            await until(
                lambda: all(spools[k].pending_lines == 1 for k in active),
                "every active endpoint indexed",
            )
            assert await _consumers(d, stream) == len(active)
            assert sum(spool.parked for spool in spools.values()) == len(keys) - len(active)
            for n, key in enumerate(active):
                assert await _read_all(spools[key], 0) == b"line %d\n" % n

    asyncio.run(run())
