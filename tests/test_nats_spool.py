"""The NATS spool backend against one real nats-server on loopback: the protocol surface,
positions identical to the local spool, large appends, commit + purge, and a restart that
resumes at the KV cursor with nothing lost or doubled."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from pathlib import Path

import pytest

from logferry.local.nats_cluster import NatsCluster
from logferry.spool import base
from logferry.spool.chunk import Chunk
from logferry.spool.errors import SpoolError, SpoolFull
from logferry.spool.log import LocalSpool
from logferry.spool.nats import (
    EndpointJournal,
    NatsBackend,
    NatsSpool,
    NatsSpoolProvider,
    NatsUnavailable,
    SpoolFenced,
)
from logferry.spool.nats.wire import decode_key, encode_key, split_append
from nats_helpers import nats_server  # noqa: F401 - fixture
from nats_spool_helpers import backend, settings, until


def _typed(spool: NatsSpool, provider: NatsSpoolProvider) -> tuple[base.Spool, base.SpoolProvider]:
    """Never called: mypy checks here that the NATS backend implements both protocols."""
    return spool, provider


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize(
    ("proto", "impl"), [(base.Spool, NatsSpool), (base.SpoolProvider, NatsSpoolProvider)]
)
def test_nats_backend_has_every_protocol_member(proto: type, impl: type) -> None:
    for name in sorted(n for n in vars(proto) if not n.startswith("_")):
        want = vars(proto)[name]
        assert hasattr(impl, name), name
        if isinstance(want, property):
            assert isinstance(getattr(impl, name), property), name
            continue
        have = getattr(impl, name)
        assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), name
        assert _params(have)[: len(_params(want))] == _params(want), name


def test_the_journal_is_a_plain_document_store() -> None:
    """The S3 sink adapts a store of JSON documents; one with `exists` would be taken for a
    typed JournalStore (runtime_checkable protocols compare members only)."""
    members = {n for n in vars(EndpointJournal) if not n.startswith("_")}
    assert members == {
        "load",
        "save",
        "discard",
        "note_upload",
        "forget_upload",
        "noted_uploads",
        "save_setup_proof",
        "setup_proof",
    }
    assert _params(EndpointJournal.save)[1:] == [
        ("doc", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("sync", inspect.Parameter.KEYWORD_ONLY, True),
    ]


def test_errors_are_spool_errors_and_keys_round_trip() -> None:
    assert issubclass(NatsUnavailable, SpoolError) and issubclass(SpoolFenced, SpoolError)
    assert not issubclass(NatsUnavailable, SpoolFull)
    for key in ["abc123", "c/e", "a.b*c>d e", "ünï", "x=y"]:
        token = encode_key(key)
        assert all(c.isalnum() or c in "_-=" for c in token), token
        assert decode_key(token) == key


def test_split_keeps_bytes_and_lines_and_fragments_long_lines() -> None:
    rng = random.Random(7)
    lines = [b"x" * rng.choice([1, 10, 100, 900, 2500, 5000]) + b"\n" for _ in range(300)]
    data = b"".join(lines)
    parts = split_append(data, 1000)
    assert b"".join(p.data for p in parts) == data
    assert sum(p.size for p in parts) == len(data)
    assert sum(p.lines for p in parts) == len(lines)
    assert all(len(p.data) <= 1000 for p in parts)
    for p in parts:
        if p.frag is None:
            assert p.data.endswith(b"\n") and p.size == len(p.data)


def test_start_fails_clearly_without_a_server(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "none")  # configured, never started
    s = settings(cluster, connect_timeout_seconds=1)

    async def run() -> None:
        b = NatsBackend(s, node_id="n1", deliver=False, scratch_dir=tmp_path)
        with pytest.raises(NatsUnavailable) as err:
            await b.start()
        assert "cannot connect" in str(err.value) and err.value.fix
        await b.close()

    asyncio.run(run())


def _requests(seed: int, long_lines: bool) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(40):
        n = rng.choice([1, 1, 2, 5, 30, 200])
        body = b"".join(
            f"r{i} l{j} ".encode() + b"y" * rng.choice([0, 3, 40, 700]) + b"\n" for j in range(n)
        )
        if long_lines and i % 7 == 3:
            body += b"L" * rng.choice([4096, 9000, 20000]) + b"\n"
        out.append(body)
    return out


def test_positions_and_bytes_identical_to_the_local_spool(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Same appends into a LocalSpool and a NatsSpool (small messages, so requests split and
    long lines travel as fragments): the same chunks from every position."""
    requests = _requests(1, long_lines=True)
    local = LocalSpool(tmp_path / "local", name="k")

    async def run() -> None:
        s = settings(nats_server, max_message_bytes=4096)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["k"])
            await until(lambda: "k" in b.owned(), "n1 owns k")
            spool = await asyncio.to_thread(b.provider.open, "k")
            for body in requests:
                await local.append(body, body.count(b"\n"))
                await spool.append(body, body.count(b"\n"))
            await until(lambda: spool.end_offset == local.end_offset, "all indexed")
            assert spool.pending_lines == local.pending_lines
            assert spool.pending_bytes == local.pending_bytes

            def strip(chunks: list[Chunk]) -> list[tuple[int, int, bytes, int]]:
                return [(c.start, c.end, c.data, c.lines) for c in chunks]

            for max_bytes in (1, 5000, 1 << 20):
                pos, got_n, got_l = 0, [], []
                while pos < local.end_offset:
                    a = await asyncio.to_thread(spool.read, pos, max_bytes)
                    b_ = await asyncio.to_thread(local.read, pos, max_bytes)
                    assert strip(a) == strip(b_), (max_bytes, pos)
                    got_n += a
                    got_l += b_
                    pos = a[-1].end
                assert b"".join(c.data for c in got_n) == b"".join(requests)
            # From positions inside requests, and commits there: same line counts.
            boundaries = [0]
            for body in requests:
                base_ = boundaries[-1]
                boundaries += [base_ + i + 1 for i, ch in enumerate(body) if ch == 10]
            for pos in sorted(random.Random(2).sample(boundaries, 25)):
                a = await asyncio.to_thread(spool.read, pos, 3000)
                b_ = await asyncio.to_thread(local.read, pos, 3000)
                assert strip(a) == strip(b_), pos
                await asyncio.to_thread(spool.commit, pos)
                await asyncio.to_thread(local.commit, pos)
                assert spool.committed_line == local.committed_line, pos
                assert spool.pending_lines == local.pending_lines
            with pytest.raises(ValueError):
                await asyncio.to_thread(spool.commit, local.end_offset - 1)
            with pytest.raises(ValueError):
                await asyncio.to_thread(spool.read, 0)

    try:
        asyncio.run(run())
    finally:
        local.close()


def test_16_mib_append_with_a_2_mib_line_round_trips(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    rng = random.Random(3)
    head = b"".join(b"%d " % i + rng.randbytes(60).hex().encode() + b"\n" for i in range(40000))
    big = b"B" * (2 * 1024 * 1024) + b"\n"
    tail_n = (16 * 1024 * 1024 - len(head) - len(big)) // 122
    tail = b"".join(b"t" + rng.randbytes(60).hex().encode() + b"\n" for _ in range(tail_n))
    body = head + big + tail
    assert len(body) > 15 * 1024 * 1024 and body.count(b"\n") == 40001 + tail_n

    async def run() -> None:
        s = settings(nats_server)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["big"])
            await until(lambda: "big" in b.owned(), "owns big")
            spool = await asyncio.to_thread(b.provider.open, "big")
            await spool.append(body, body.count(b"\n"))
            await spool.append(b"after\n", 1)
            await until(lambda: spool.end_offset == len(body) + 6, "indexed")
            chunks = await asyncio.to_thread(spool.read, 0, 1024 * 1024)
            assert len(chunks) == 1  # one request, one chunk (as the local spool)
            assert chunks[0].data == body and chunks[0].lines == body.count(b"\n")
            at = len(head) + len(big)
            rest = await asyncio.to_thread(spool.read, len(head), 1)
            assert rest[0].data == big + tail
            await asyncio.to_thread(spool.commit, at)
            assert spool.committed_line == 40001
            again = await asyncio.to_thread(spool.read, at, 1 << 30)
            assert b"".join(c.data for c in again) == tail + b"after\n"

    asyncio.run(run())


def test_commit_stores_the_cursor_and_purges_below_it(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def run() -> None:
        s = settings(nats_server)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["p"])
            await until(lambda: "p" in b.owned(), "owns p")
            spool = await asyncio.to_thread(b.provider.open, "p")
            for i in range(10):
                await spool.append(b"a%d\nb%d\n" % (i, i), 2)
            await until(lambda: spool.end_offset == 60, "indexed")

            async def stored() -> int:
                info = await asyncio.wrap_future(
                    b.run(b.js.stream_info(spool.stream, subjects_filter=spool.subject))
                )
                return int(info.state.messages)

            assert await stored() == 10
            await asyncio.to_thread(spool.commit, 33)  # inside the 6th message
            assert await stored() == 5
            kv = await asyncio.wrap_future(b.run(b.kv(s.endpoints_bucket)))
            entry = await asyncio.wrap_future(b.run(kv.get(encode_key("p"))))
            record = json.loads(entry.value or b"{}")
            assert record["owner"] == "n1"
            cursor = record["cursor"]
            assert (cursor["skip"], cursor["pos"], cursor["line"]) == (3, 33, 11)
            with pytest.raises(ValueError):
                await asyncio.to_thread(spool.commit, 35)  # inside a line
            await asyncio.to_thread(spool.commit, 60)
            assert await stored() == 0
            assert spool.pending_bytes == 0 and spool.pending_lines == 0
            assert spool.first_pending_accepted_at() is None
            # The owner publishes its backlog for ingest-only nodes.
            await spool.append(b"z\n", 1)
            await until(
                lambda: (b.ownership.record("p") or {}).get("backlog") == {"bytes": 2, "lines": 1},
                "backlog published",
            )

    asyncio.run(run())


def test_restart_resumes_at_the_kv_cursor(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Append, commit inside a request, close; a new backend (another boot of the node) reads
    from the cursor: the same bytes at the same positions, nothing lost or doubled."""
    bodies = [b"".join(b"req%d line%d\n" % (i, j) for j in range(i + 1)) for i in range(30)]
    everything = b"".join(bodies)

    async def run() -> None:
        s = settings(nats_server, max_message_bytes=1024)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["r"])
            await until(lambda: "r" in b.owned(), "owns r")
            spool = await asyncio.to_thread(b.provider.open, "r")
            for body in bodies[:20]:
                await spool.append(body, body.count(b"\n"))
            first20 = sum(map(len, bodies[:20]))
            await until(lambda: spool.end_offset == first20, "indexed")
            cut = sum(map(len, bodies[:12])) + len(b"req12 line0\n")
            await asyncio.to_thread(spool.commit, cut)
            line = spool.committed_line
            first20_text = b"".join(bodies[:20])
        async with backend(s, "n1", tmp_path) as b2:
            b2.set_endpoints(["r"])
            await until(lambda: "r" in b2.owned(), "owns r again")
            spool = await asyncio.to_thread(b2.provider.open, "r")
            assert spool.committed_offset == cut and spool.committed_line == line
            # Resuming inside a message: the end is never below the cursor, not even at once.
            assert spool.end_offset >= cut and spool.pending_bytes >= 0
            want_lines = first20_text[cut:].count(b"\n")
            await until(lambda: spool.pending_lines == want_lines, "the old tail indexed")
            for body in bodies[20:]:
                await spool.append(body, body.count(b"\n"))
            await until(lambda: spool.end_offset == len(everything), "indexed after restart")
            got = await asyncio.to_thread(spool.read, cut, 1 << 30)
            assert got[0].start == cut
            assert b"".join(c.data for c in got) == everything[cut:]
            assert spool.pending_lines == everything[cut:].count(b"\n")
            assert (b2.ownership.record("r") or {})["epoch"] == 2

    asyncio.run(run())


def test_ingest_only_node_appends_and_reads_the_published_backlog(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def run() -> None:
        s = settings(nats_server)
        async with backend(s, "d1", tmp_path) as d, backend(s, "i1", tmp_path, deliver=False) as i:
            d.set_endpoints(["q"])
            i.set_endpoints(["q"])
            await until(lambda: "q" in d.owned(), "d1 owns q")
            ingest = await asyncio.to_thread(i.provider.open, "q")
            assert i.owned() == frozenset()
            await ingest.append(b"one\ntwo\n", 2)
            with pytest.raises(SpoolFenced):
                await asyncio.to_thread(ingest.read, 0)
            owner = await asyncio.to_thread(d.provider.open, "q")
            await until(lambda: owner.end_offset == 8, "owner sees the ingest node's append")
            await until(lambda: i.provider.key_disk_bytes("q") == 8, "backlog reaches ingest")
            assert ingest.pending_lines == 2
            # Every node's shared budget follows the streams' byte counts.
            await until(lambda: i.provider.total_bytes >= 8, "ingest node counts stored bytes")
            ingest.max_bytes = 10
            with pytest.raises(SpoolFull):
                await ingest.append(b"three\n", 1)

    asyncio.run(run())


def test_concurrent_appends_share_messages_and_each_line_is_stored_once(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Group commit: appends that arrive while a publish is in flight go out together."""

    async def run() -> None:
        s = settings(nats_server)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["gc"])
            await until(lambda: "gc" in b.owned(), "owns gc")
            spool = await asyncio.to_thread(b.provider.open, "gc")
            bodies = [b"append %03d line %d\n" % (i, j) for i in range(60) for j in range(2)]
            pairs = [bodies[i] + bodies[i + 1] for i in range(0, len(bodies), 2)]
            await asyncio.gather(*(spool.append(p, 2) for p in pairs))
            total = sum(map(len, pairs))
            await until(lambda: spool.end_offset == total, "all indexed")
            got = await asyncio.to_thread(spool.read, 0, 1 << 20)
            data = b"".join(c.data for c in got)
            assert sorted(data.splitlines(keepends=True)) == sorted(bodies)
            assert spool.pending_lines == len(bodies)
            info = await asyncio.wrap_future(
                b.run(b.js.stream_info(spool.stream, subjects_filter=spool.subject))
            )
            assert 1 <= info.state.messages < len(pairs)

    asyncio.run(run())
