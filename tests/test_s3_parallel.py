"""S3Sink with an io pool: parts of one file go up in parallel, within bounds, and the offset
contract holds when they finish out of order (and across a crash in the middle of it).

Part 1 is held back by a botocore before-send hook (test infrastructure, not our code) so that
later parts finish first; the spool position the sink reports durable must not move past it.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError

from logferry.local.emulator import Emulator
from logferry.sinks.s3 import S3Sink
from logferry.sinks.s3_budget import InflightBudget
from logferry.sinks.s3_journal import Journal
from logferry.spool.chunk import Chunk
from s3_helpers import (
    S3Role,
    decode_object,
    line_counter,
    make_chunks,
    make_s3_role,
    pending_uploads,
)
from test_s3_sink import MIB, T0, Harness, access_lines, hex_lines


@pytest.fixture(scope="module")
def role(emulator: Emulator) -> S3Role:
    return make_s3_role(emulator, lambda p: f"{p}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def pool() -> Any:
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="test-io")
    yield executor
    executor.shutdown(wait=True)


class PartGate:
    """Holds UploadPart number `number` until released; counts UploadParts running at once."""

    def __init__(self, number: int = 1) -> None:
        self.marker = re.compile(rf"[?&]partNumber={number}(&|$)")
        self.release = threading.Event()
        self.fail = False
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def before_send(self, request: Any, **_: Any) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.marker.search(request.url) and request.body:
                self.release.wait(60)
                if self.fail:  # the process "died" with this call in flight
                    raise ConnectionClosedError(endpoint_url=request.url)
        finally:
            with self.lock:
                self.running -= 1


class Driver:
    """Does what the service worker does with a sink: feed while it wants data, pump, and
    sleep until `wake` (or the delay pump returns)."""

    def __init__(self, sink: S3Sink, woken: threading.Event) -> None:
        self.sink = sink
        self.woken = woken
        self.most_in_flight = 0

    def feed_all(self, chunks: list[Chunk], until: Any = None) -> int:
        fed = 0
        while fed < len(chunks):
            if until is not None and until():
                return fed
            if self.sink.wants_data():
                self.sink.feed(chunks[fed])
                fed += 1
            self._note()
            delay = self.sink.pump(caught_up=False)
            self._note()
            if not self.sink.wants_data():
                self.woken.wait(delay or 1.0)
                self.woken.clear()
        return fed

    def finish(self) -> None:
        self.sink.flush()
        for _ in range(10_000):
            if not self.sink.holds_data():
                return
            delay = self.sink.pump(caught_up=True)
            self._note()
            self.woken.wait(delay or 1.0)
            self.woken.clear()
        raise AssertionError("the sink never finished")

    def _note(self) -> None:
        self.most_in_flight = max(self.most_in_flight, self.sink.status()["parts_in_flight"])


def _sink(h: Harness, ep: Any, pool: ThreadPoolExecutor, woken: threading.Event) -> S3Sink:
    return h.sink(
        ep,
        part_size=5 * MIB,
        member_size=MIB,
        io_executor=pool,
        wake=woken.set,
        parts_in_flight=3,
        budget=InflightBudget(64 * MIB),
    )


def _deliver(h: Harness, ep: Any, pool: ThreadPoolExecutor, chunks: list[Chunk]) -> S3Sink:
    """A fresh sink (recovered) that takes every chunk and finishes: the worker's whole loop."""
    woken = threading.Event()
    sink = _sink(h, ep, pool, woken)
    sink.recover()
    driver = Driver(sink, woken)
    driver.feed_all(chunks)
    driver.finish()
    return sink


def test_parts_go_up_in_parallel_and_durable_waits_for_the_gap(
    emulator: Emulator, role: S3Role, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint()  # no compression: 5 MiB parts from ~5 MiB of lines
    lines = hex_lines(260_000)  # ≈ 32 MiB → 6 full parts + a tail
    chunks = list(make_chunks(lines, per_chunk=4000, accepted_at=T0))
    gate = PartGate(1)
    h.s3.meta.events.register("before-send.s3.UploadPart", gate.before_send)
    woken = threading.Event()
    sink = _sink(h, ep, pool, woken)
    sink.recover()
    driver = Driver(sink, woken)
    driver.feed_all(chunks, until=lambda: sink.stats.parts >= 2 and not sink.wants_data())
    # Later parts are in S3, part 1 is not: nothing is durable, nothing journaled.
    assert sink.stats.parts >= 2
    assert sink.durable == 0
    state = Journal(tmp_path).load()
    assert state is not None and state.active is not None and state.active.parts == []
    gate.release.set()
    driver.feed_all(chunks)
    driver.finish()
    objects = h.objects(ep)
    assert len(objects) == 1
    (obj,) = objects.values()
    assert decode_object(obj.body, ep.codec()) == b"".join(c.data for c in chunks)
    assert pending_uploads(emulator, role.bucket) == []
    assert sink.durable == chunks[-1].end
    assert gate.most >= 2  # parts really overlapped
    assert driver.most_in_flight <= 3  # and never more than parts_in_flight


def test_crash_with_a_later_part_uploaded_resumes_without_loss_or_duplicates(
    emulator: Emulator, role: S3Role, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint(compression_codec="gzip")
    lines = hex_lines(240_000)
    chunks = list(make_chunks(lines, per_chunk=4000, accepted_at=T0))
    gate = PartGate(2)
    h.s3.meta.events.register("before-send.s3.UploadPart", gate.before_send)
    woken = threading.Event()
    first = _sink(h, ep, pool, woken)
    first.recover()
    Driver(first, woken).feed_all(chunks, until=lambda: first.stats.parts >= 2)
    state = Journal(tmp_path).load()
    assert state is not None and state.active is not None
    assert [p.number for p in state.active.parts] == [1]  # part 3 is up but not journaled
    durable_at_crash = first.durable
    assert durable_at_crash == state.active.parts[0].end
    gate.fail = True  # kill -9: part 2 never lands
    gate.release.set()
    # `first` is abandoned here; its client keeps the hook, so its part 2 never lands.

    h2 = Harness(emulator, role, tmp_path)
    woken2 = threading.Event()
    second = _sink(h2, ep, pool, woken2)
    resume = second.recover()
    assert resume == durable_at_crash  # the spool kept everything from part 2 on
    # The worker re-feeds from its spool commit (= durable at the crash).
    everything = b"".join(c.data for c in chunks)
    tail = Chunk(resume, len(everything), T0, everything[resume:], 0)
    driver = Driver(second, woken2)
    driver.feed_all([tail])
    driver.finish()
    objects = h.objects(ep)
    assert len(objects) == 1
    (obj,) = objects.values()
    assert line_counter([decode_object(obj.body, ep.codec())]) == Counter(lines)
    assert pending_uploads(emulator, role.bucket) == []
    assert "CreateMultipartUpload" not in h2.operations  # the same upload was resumed


def test_small_objects_fsync_the_journal_only_for_ends_the_data_does_not_imply(
    emulator: Emulator, role: S3Role, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint(period=60)
    lines = access_lines(300)
    # Three periods of 100 lines: the first two files end where the next period's data
    # starts (implied by the data), the last one ends by flush (decided by the clock).
    chunks = list(make_chunks(lines, per_chunk=100, accepted_at=lambda i: T0 + 60 * i))
    woken = threading.Event()
    sink = _sink(h, ep, pool, woken)
    sink.recover()
    before = sink.journal_fsyncs
    driver = Driver(sink, woken)
    driver.feed_all(chunks)
    driver.finish()
    assert len(h.objects(ep)) == 3
    assert line_counter(decode_object(o.body, ep.codec()) for o in h.objects(ep).values()) == (
        Counter(lines)
    )
    # Only the flushed file's end is journaled (one fdatasync in place); each completion
    # is recorded by the worker's spool commit, not by the journal.
    assert sink.journal_fsyncs - before == 1
    state = Journal(tmp_path).load()
    assert state is not None and state.active is None and state.durable == chunks[-1].end


def test_budget_wakes_waiters_when_room_frees() -> None:
    budget = InflightBudget(10)
    woken: list[str] = []
    assert budget.acquire(8, lambda: woken.append("a"))
    assert not budget.acquire(8, lambda: woken.append("b"))
    assert budget.acquire(2, lambda: woken.append("c"))
    budget.release(8)
    assert woken == ["b"] and budget.used == 2
    assert budget.acquire(8, lambda: None) and budget.peak == 10
    big = InflightBudget(4)
    assert big.acquire(100, lambda: None)  # one oversized part goes alone


def test_parallel_parts_through_the_latency_proxy(
    emulator: Emulator, role: S3Role, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """What bench/s3_latency.py relies on: signed gzip bodies and ':' in keys pass the proxy."""
    from logferry.aws.clients import AwsClients, AwsTarget
    from logferry.local.latency_proxy import LinkProfile, ProxyConfig, latency_proxy

    config = ProxyConfig(services={"s3": LinkProfile(delay_ms=20), "default": LinkProfile()})
    with latency_proxy(upstream=emulator.url, config=config) as proxy:
        h = Harness(emulator, role, tmp_path)
        clients = AwsClients(h.clients.session.get_credentials(), AwsTarget(proxy.url))
        h = Harness(emulator, role, tmp_path, clients=clients)
        ep = h.endpoint(compression_codec="gzip")
        lines = hex_lines(120_000)
        chunks = list(make_chunks(lines, per_chunk=4000, accepted_at=T0))
        sink = _deliver(h, ep, pool, chunks)
        s3_calls = proxy.stats()["s3"]["calls"]
    (obj,) = h.objects(ep).values()
    assert ":" in obj.key
    assert decode_object(obj.body, ep.codec()) == b"".join(c.data for c in chunks)
    assert sink.stats.parts >= 2 and s3_calls >= sink.stats.parts + 2
    assert pending_uploads(emulator, role.bucket) == []


def test_objects_and_parts_go_up_without_expect_continue(
    emulator: Emulator, role: S3Role, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """A PutObject sends its body with its headers (no `Expect: 100-continue` round trip, no
    byte-by-byte read of the interim answer), as UploadPart does."""
    from logferry.aws.clients import AwsClients, AwsTarget
    from logferry.local.latency_proxy import (
        ProxyConfig,
        ProxyRequest,
        ProxyResponse,
        latency_proxy,
    )

    seen: list[tuple[str, str, str]] = []

    async def record(request: ProxyRequest, forward: Any) -> ProxyResponse:
        expect = next((v for k, v in request.headers if k.lower() == "expect"), "")
        if request.service == "s3":
            seen.append((request.method, request.path, expect))
        return await forward()  # type: ignore[no-any-return]

    with latency_proxy(emulator.url, ProxyConfig(), middlewares=[record]) as proxy:
        h = Harness(emulator, role, tmp_path)
        clients = AwsClients(h.clients.session.get_credentials(), AwsTarget(proxy.url))
        h = Harness(emulator, role, tmp_path, clients=clients)
        small = h.endpoint(period=60)
        lines = access_lines(300)
        chunks = list(make_chunks(lines, per_chunk=100, accepted_at=lambda i: T0 + 60 * i))
        _deliver(h, small, pool, chunks)
        (tmp_path / "big").mkdir()
        h_big = Harness(emulator, role, tmp_path / "big", clients=clients)
        big = h_big.endpoint(compression_codec="gzip")
        big_chunks = list(make_chunks(hex_lines(120_000), per_chunk=4000, accepted_at=T0))
        _deliver(h_big, big, pool, big_chunks)
    assert len(h.objects(small)) == 3
    assert line_counter(
        decode_object(o.body, small.codec()) for o in h.objects(small).values()
    ) == Counter(lines)
    (obj,) = h_big.objects(big).values()
    assert decode_object(obj.body, big.codec()) == b"".join(c.data for c in big_chunks)
    puts = [e for m, p, e in seen if m == "PUT" and "uploadId=" not in p and "?" not in p]
    parts = [e for m, p, e in seen if m == "PUT" and "partNumber=" in p]
    assert len(puts) == 3 and puts == ["", "", ""], seen
    assert len(parts) >= 2 and set(parts) == {""}, seen


def test_put_object_waits_for_the_shared_budget_and_the_sink_stops_reading(
    emulator: Emulator, role: S3Role, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """A PutObject body counts against the process budget like a part: with the budget full
    (other endpoints' parts), the file waits without a call, the sink asks for no more data
    (its delivery thread is free), and the release wakes it and the object goes up."""
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint(period=60)
    budget = InflightBudget(16 * MIB)
    assert budget.acquire(16 * MIB, lambda: None)  # another endpoint's parts fill it
    woken = threading.Event()
    sink = h.sink(ep, io_executor=pool, wake=woken.set, budget=budget)
    sink.recover()
    lines = access_lines(100)
    (chunk,) = make_chunks(lines, per_chunk=100, accepted_at=T0)
    sink.feed(chunk)
    sink.flush()
    sink.pump(caught_up=True)
    assert "PutObject" not in h.operations
    assert sink.status()["waiting_for_upload_budget"] is True
    assert not sink.wants_data()
    assert budget.waits >= 1 and budget.used == 16 * MIB
    budget.release(16 * MIB)  # the other endpoint's parts finished
    assert woken.wait(10)
    Driver(sink, woken).finish()
    assert h.operations.count("PutObject") == 1
    assert sink.wants_data() and budget.used == 0 and budget.peak == 16 * MIB
    objects = h.objects(ep)
    assert line_counter(decode_object(o.body, ep.codec()) for o in objects.values()) == Counter(
        lines
    )
