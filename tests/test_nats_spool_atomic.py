"""A multi-part append on the NATS spool is stored whole or not at all (one JetStream atomic
batch), and a retry of an append that was stored — its answer lost — stores nothing twice.

Before atomic batches a request refused half-way (a full stream, a lost connection) left its
first parts stored; they were delivered, and the sender's retry of the refused request stored
them again: a duplicate in the customer's bucket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from logferry.local.nats_cluster import NatsCluster
from logferry.spool.errors import SpoolFull
from logferry.spool.nats import NatsBackend, NatsUnavailable
from logferry.spool.nats.publish import (
    H_BATCH_ID,
    H_BATCH_SEQ,
    AppendPublisher,
    most_parts,
)
from logferry.spool.nats.wire import H_ACC, H_ID, H_LINES, H_REQ, H_SIZE, split_append
from nats_helpers import nats_server  # noqa: F401 - fixture
from nats_spool_helpers import backend, settings, until

KIB = 1024


async def _on(b: NatsBackend, coro: Any) -> Any:
    """Run `coro` on the backend's loop (its connection lives there)."""
    return await asyncio.wrap_future(b.run(coro))


async def _messages(b: NatsBackend, stream: str) -> int:
    info = await _on(b, b.js.stream_info(stream))
    return int(info.state.messages)


def _lines(n: int, size: int = KIB, tag: str = "l") -> bytes:
    return b"".join(f"{tag}{i:08d}".encode().ljust(size - 1, b".") + b"\n" for i in range(n))


def test_an_append_refused_half_way_leaves_nothing_behind(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """One shard's stream has room for 256 KiB. Another ingest node (its own quota knows
    nothing of this node's) fills most of it; this node's 128 KiB request in 16 KiB messages
    then runs out of room part-way: refused as a whole (SpoolFull, 429 to the sender), and no
    part of it is stored or ever delivered."""

    async def run() -> None:
        s = settings(nats_server, shards=1, max_bytes=256 * KIB, max_message_bytes=16 * KIB)
        async with backend(s, "n1", tmp_path) as b, backend(s, "n2", tmp_path, deliver=False) as o:
            b.set_endpoints(["fill", "half"])
            await until(lambda: {"fill", "half"} <= set(b.owned()), "owns both")
            fill = await asyncio.to_thread(o.provider.open, "fill")
            for i in range(12):  # 12 × 16 KiB through the other node, inside the room
                await fill.append(_lines(16, tag=f"a{i}-"), 16)
            half = await asyncio.to_thread(b.provider.open, "half")
            before = await _messages(b, half.stream)
            assert before == 12
            big = _lines(128)
            assert len(split_append(big, s.max_message_bytes)) == 8
            with pytest.raises(SpoolFull):
                await half.append(big, 128)
            assert await _messages(b, half.stream) == before
            owned_fill = await asyncio.to_thread(b.provider.open, "fill")
            await until(lambda: owned_fill.end_offset == 12 * 16 * KIB, "A's lines indexed")
            await asyncio.to_thread(owned_fill.commit, owned_fill.end_offset)  # room again
            small = _lines(3, tag="s")
            await half.append(small, 3)
            await until(lambda: half.end_offset == len(small), "the small append indexed")
            chunks = await asyncio.to_thread(half.read, 0)
            assert b"".join(c.data for c in chunks) == small

    asyncio.run(run())


def _append_messages(data: bytes, request: str, limit: int) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for i, part in enumerate(split_append(data, limit)):
        headers = {
            H_ID: f"{request}:{i}",
            H_SIZE: str(part.size),
            H_LINES: str(part.lines),
            H_ACC: "1.0",
            H_REQ: request,
        }
        out.append((part.data, headers))
    return out


def test_a_retry_of_a_stored_append_and_of_an_abandoned_one_store_each_once(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two failures the sender never sees: (1) the commit's answer is lost after the server
    stored the batch — the retry is told "already stored" and adds nothing; (2) the connection
    dies after some parts, before the commit — the server drops the try, and the retry (a new
    batch id, the same message ids) stores every part once."""

    async def run() -> None:
        s = settings(nats_server, shards=1, max_message_bytes=16 * KIB)
        async with backend(s, "n1", tmp_path) as b:
            b.set_endpoints(["retry"])
            await until(lambda: "retry" in b.owned(), "owns retry")
            spool = await asyncio.to_thread(b.provider.open, "retry")
            publisher = AppendPublisher(
                b.nc, b.js, spool.subject, name="retry", stream=spool.stream, append_timeout=10
            )
            first = _append_messages(_lines(100), "req-1", s.max_message_bytes)
            assert len(first) == 7
            await _on(b, publisher.publish(first, "req-1"))
            await _on(b, publisher.publish(first, "req-1"))  # the same append, sent again
            assert await _messages(b, spool.stream) == 7

            second = _append_messages(_lines(50, tag="m"), "req-2", s.max_message_bytes)

            async def abandoned() -> None:  # parts 1..3 of a try whose commit never left
                for i, (data, headers) in enumerate(second[:3], start=1):
                    marked = {**headers, H_BATCH_ID: "req-2.lost", H_BATCH_SEQ: str(i)}
                    await b.nc.publish(spool.subject, data, headers=marked)
                await b.nc.flush()

            await _on(b, abandoned())
            assert await _messages(b, spool.stream) == 7
            await _on(b, publisher.publish(second, "req-2"))
            assert await _messages(b, spool.stream) == 7 + len(second)

            expected = _lines(100) + _lines(50, tag="m")
            await until(lambda: spool.end_offset == len(expected), "both appends indexed")
            got = b""
            while len(got) < len(expected):
                chunks = await asyncio.to_thread(spool.read, len(got))
                got += b"".join(c.data for c in chunks)
            assert got == expected

    asyncio.run(run())


def test_the_largest_body_fits_one_batch() -> None:
    """The default 16 MiB body in the default ~1 MiB messages is far below the 1,000-message
    batch limit, even in the worst case of lines just over half a message."""
    from logferry.spool.nats.settings import NatsSpoolSettings

    message = NatsSpoolSettings.model_fields["max_message_bytes"].default
    assert most_parts(16 * 1024 * KIB, message) <= 40
    half = message // 2 + 1
    data = (b"y" * (half - 1) + b"\n") * 20
    assert len(split_append(data, message)) <= most_parts(len(data), message)
    over = (b"z" * message + b"\n") * 10  # each line two fragments
    assert len(split_append(over, message)) <= most_parts(len(over), message)


class _Js:
    """A JetStream context whose every publish ends the way `failure` says."""

    def __init__(self, failure: BaseException) -> None:
        self.failure = failure
        self.tries = 0

    async def publish(self, *_: Any, **__: Any) -> None:
        self.tries += 1
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "maybe_stored"),
    [
        (nats.errors.TimeoutError(), True),  # sent, never answered: may commit later
        (nats.js.errors.APIError(code=409, err_code=10158, description="in process"), True),
        (nats.errors.NoRespondersError(), False),  # no stream leader received it
        (nats.js.errors.ServiceUnavailableError(code=503, err_code=10008), False),
    ],
)
def test_an_unanswered_publish_says_it_may_still_be_stored(
    failure: BaseException, maybe_stored: bool
) -> None:
    """The 503 after the append budget tells the sender the truth: a try that went out and
    was never answered may still be stored when the quorum returns (the sender's retry may
    then deliver it twice); refusals and tries nobody received may not."""
    js = _Js(failure)
    publisher = AppendPublisher(
        None,  # type: ignore[arg-type]  # one message: only `js` is used
        js,  # type: ignore[arg-type]
        "lf.00.x",
        name="x",
        stream="LF_00",
        append_timeout=0.3,
    )
    with pytest.raises(NatsUnavailable) as info:
        asyncio.run(publisher.publish([(b"line\n", {H_ID: "r:0"})], "r"))
    assert js.tries >= 2  # retried within the budget first
    assert info.value.maybe_stored is maybe_stored
