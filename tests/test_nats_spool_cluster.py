"""The NATS spool on a 3-node cluster (replicas 3): kill -9 of the stream leader during
appends. Every append either returns (acknowledged by a quorum) or raises NatsUnavailable;
everything acknowledged is readable afterwards, exactly once."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from pathlib import Path

import pytest

from logferry.local.nats_cluster import NatsCluster
from logferry.spool.nats import NatsBackend, NatsUnavailable, SpoolFenced
from nats_helpers import nats_cluster3  # noqa: F401 - fixture
from nats_spool_helpers import backend, settings, until

pytestmark = pytest.mark.slow


async def read_all_as_owner(d: NatsBackend, want: int) -> bytes:
    """Everything in "k" from the cursor, read by `d` as its owner. The killed server may have
    led the KV bucket too: `d`'s heartbeats then fail for the election's 5–7 s, its lease may
    lapse by its own clock and it steps down (fenced) until it takes "k" again — so a read
    that finds it fenced waits for the ownership to come back and starts over."""
    while True:
        await until(lambda: "k" in d.owned(), "d1 owns k (again)", 120)
        owner = await asyncio.to_thread(d.provider.open, "k")
        try:
            indexed = functools.partial(lambda o: o.end_offset >= want, owner)
            await until(indexed, "owner indexed every ack", 120)
            data = b""
            pos = owner.committed_offset
            while pos < owner.end_offset:
                chunks = await asyncio.to_thread(owner.read, pos, 1 << 20)
                data += b"".join(c.data for c in chunks)
                pos = chunks[-1].end
            return data
        except SpoolFenced:
            await asyncio.sleep(0.5)


def test_stream_leader_killed_during_appends_loses_nothing_acknowledged(
    nats_cluster3: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def run() -> None:
        s = settings(nats_cluster3, replicas=3, max_message_bytes=2048, append_timeout_seconds=20)
        async with backend(s, "d1", tmp_path) as d, backend(s, "i1", tmp_path, deliver=False) as i:
            d.set_endpoints(["k"])
            await until(lambda: "k" in d.owned(), "d1 owns k")
            ingest = await asyncio.to_thread(i.provider.open, "k")
            acked: list[bytes] = []
            failed: list[bytes] = []
            killed = asyncio.Event()

            async def sender(n: int) -> None:
                for j in range(60):
                    # Every 5th request spans several messages (2 KiB each).
                    count = 40 if j % 5 == 0 else 3
                    body = b"".join(
                        b"s%d r%d l%d %s\n" % (n, j, k, b"z" * 80) for k in range(count)
                    )
                    try:
                        await ingest.append(body, count)
                        acked.append(body)
                    except NatsUnavailable:
                        failed.append(body)
                    if j == 20 and n == 0:
                        killed.set()
                    await asyncio.sleep(0.01)

            async def killer() -> None:
                await killed.wait()
                leader = nats_cluster3.stream_leader(ingest.stream)
                assert leader is not None
                nats_cluster3.kill(leader)

            await asyncio.gather(*(sender(n) for n in range(4)), killer())
            assert len(acked) + len(failed) == 240
            assert len(acked) > 100
            want = sum(len(b) for b in acked)
            data = await read_all_as_owner(d, want)
            seen = Counter(data.splitlines(keepends=True))
            for body in acked:
                for line in body.splitlines(keepends=True):
                    assert seen[line] == 1, line[:20]
            for body in failed:
                for line in body.splitlines(keepends=True):
                    assert seen[line] <= 1
            print(f"acked {len(acked)}, failed {len(failed)}")

    asyncio.run(run())


def test_kv_leader_killed_during_commits_keeps_the_cursor_and_the_data(tmp_path: Path) -> None:
    """kill -9 of the endpoint bucket's leader while the owner commits: each commit succeeds or
    raises a SpoolError (no quorum, or fenced after an unanswered write); afterwards the node
    owns the endpoint again, the stored cursor is the last commit that returned (or a later
    one that landed unanswered), and every line from there on is still readable."""
    from logferry.spool.errors import SpoolError

    async def run(cluster: NatsCluster) -> None:
        s = settings(cluster, replicas=3, lease_seconds=20, heartbeat_seconds=1)
        lines = [b"line %04d\n" % i for i in range(400)]
        async with backend(s, "d1", tmp_path) as d:
            d.set_endpoints(["c"])
            await until(lambda: "c" in d.owned(), "d1 owns c", 60)
            spool = await asyncio.to_thread(d.provider.open, "c")
            for i in range(0, 400, 4):
                await spool.append(b"".join(lines[i : i + 4]), 4)
            await until(lambda: spool.end_offset == 4000, "indexed", 60)
            leader = cluster.stream_leader(f"KV_{s.endpoints_bucket}")
            assert leader is not None
            done = 0
            errors = 0
            for k in range(1, 101):
                if k == 30:
                    cluster.kill(leader)
                try:
                    await asyncio.to_thread(spool.commit, 40 * k)
                    done = 40 * k
                except SpoolError:
                    errors += 1
                    await until(lambda: "c" in d.owned(), "owns c again", 60)
                    await asyncio.sleep(0.2)
            await until(lambda: "c" in d.owned(), "owns c at the end", 60)
            spool = await asyncio.to_thread(d.provider.open, "c")
            await until(lambda: spool.end_offset == 4000, "indexed at the end", 60)
            pos = spool.committed_offset
            assert pos >= done
            got = await asyncio.to_thread(spool.read, pos, 1 << 20) if pos < 4000 else []
            assert b"".join(c.data for c in got) == b"".join(lines)[pos:]
            print(f"last commit {done}, cursor {pos}, commit errors {errors}")

    with NatsCluster(tmp_path / "nats", nodes=3) as cluster:  # its own: this one loses a node
        asyncio.run(run(cluster))
