"""Several PutRecords calls in flight per endpoint, and one pacer per stream, against the emulator.

The sink runs its calls on a real thread pool (as the service's shared `io_executor`); the
emulator answers them. Concurrency is proven with a barrier inside botocore's call path (the
first calls must all be in flight together or the barrier breaks), never with timings.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kinesis_helpers import (
    FakeClock,
    PutRecordsFaults,
    deliver,
    kinesis_setup,
    lines_of,
    make_chunks,
    read_stream,
    sample_lines,
)
from logferry.errors import TransientError
from logferry.local.emulator import Emulator
from logferry.sinks.kinesis import KinesisSink
from logferry.sinks.pacing import shared_pacer
from logferry.sinks.shard_map import load_shard_map
from logferry.spool.chunk import Chunk

Unique = Callable[[str], str]
THROTTLED = "ProvisionedThroughputExceededException"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="test-aws-io")
    yield executor
    executor.shutdown(wait=True)


def _index_by_key(name: str, chunks: list[Chunk]) -> dict[str, int]:
    """Partition key (`<name>:<offset>`, one line per record) → line number."""
    out: dict[str, int] = {}
    number = 0
    for chunk in chunks:
        offset = chunk.start
        for line in chunk.split_lines():
            out[f"{name}:{offset}"] = number
            offset += len(line) + 1
            number += 1
    return out


def test_calls_overlap_up_to_the_limit_and_every_line_arrives_once(
    emulator: Emulator, unique: Unique, pool: ThreadPoolExecutor
) -> None:
    setup = kinesis_setup(emulator, unique, shards=4, max_in_flight_calls=3)
    woken = threading.Event()
    sink = KinesisSink(
        setup.endpoint, setup.clients, hostname="node-1", io_executor=pool, wake=woken.set
    )
    barrier = threading.Barrier(3, timeout=60)
    lock = threading.Lock()
    active = {"now": 0, "max": 0, "calls": 0}

    def entering(**_: Any) -> None:
        with lock:
            active["calls"] += 1
            first_wave = active["calls"] <= 3
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        if first_wave:
            barrier.wait()  # breaks (and fails the call) unless 3 calls are in flight at once

    def leaving(**_: Any) -> None:
        with lock:
            active["now"] -= 1

    events = sink.client.meta.events
    events.register("before-call.kinesis.PutRecords", entering)
    events.register("after-call.kinesis.PutRecords", leaving)
    lines = sample_lines(6000, size=60)
    chunks = make_chunks(lines, 500)

    deliver(sink, chunks)

    assert Counter(lines_of(read_stream(emulator, setup.stream))) == Counter(lines)
    assert active["max"] == 3, active  # overlapping, and never more than max_in_flight_calls
    assert sink.stats.max_in_flight_seen == 3
    assert sink.stats.in_flight_calls == 0
    assert (sink.stats.records, sink.stats.calls) == (6000, active["calls"])
    assert sink.durable == chunks[-1].end and not sink.holds_data()
    assert woken.is_set(), "a finished call must wake the worker"
    assert sink.status()["max_in_flight_calls"] == 3


def test_pump_never_waits_for_calls_in_flight(
    emulator: Emulator, unique: Unique, pool: ThreadPoolExecutor
) -> None:
    """`pump` returns while every call is blocked in the network; the records stay outstanding
    (holds_data, durable unchanged) until the calls are answered and harvested."""
    setup = kinesis_setup(emulator, unique, shards=2, max_in_flight_calls=2)
    sink = KinesisSink(setup.endpoint, setup.clients, hostname="node-1", io_executor=pool)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold(**_: Any) -> None:
        entered.release()
        assert release.wait(60), "the test never released the calls"

    sink.client.meta.events.register("before-call.kinesis.PutRecords", hold)
    chunks = make_chunks(sample_lines(1500, size=40), 100)
    sink.open(0)
    for chunk in chunks:
        sink.feed(chunk)
    delay = sink.pump(caught_up=True)  # sends two calls, returns without an answer
    assert delay is not None and delay > 0
    assert entered.acquire(timeout=60) and entered.acquire(timeout=60)
    assert sink.stats.in_flight_calls == 2 and sink.stats.calls == 2
    assert sink.pump(caught_up=True) is not None  # still blocked: no third call, no wait
    assert sink.stats.calls == 2
    assert sink.holds_data() and sink.durable == 0
    release.set()
    while sink.holds_data():
        delay = sink.pump(caught_up=True)
        if delay:
            time.sleep(delay)
    assert sink.durable == chunks[-1].end
    assert sink.stats.records == 1500


def test_a_throttled_record_is_retried_alone_while_later_records_flow(
    emulator: Emulator, unique: Unique, pool: ThreadPoolExecutor
) -> None:
    setup = kinesis_setup(emulator, unique, shards=2, max_in_flight_calls=4)
    bound = 800
    sink = KinesisSink(
        setup.endpoint, setup.clients, hostname="node-1", io_executor=pool, max_outstanding=bound
    )
    lines = sample_lines(3000, size=40)
    chunks = make_chunks(lines, 250)
    index = _index_by_key(setup.endpoint.name, chunks)
    stuck_key = next(k for k, i in index.items() if i == 1000)
    lock = threading.Lock()
    tries = {"stuck": 0}
    ahead: list[int] = []  # line numbers presented while the stuck record was not accepted

    def codes(_call: int, record: dict[str, Any]) -> str | None:
        with lock:
            key = record["PartitionKey"]
            if key == stuck_key:
                tries["stuck"] += 1
                if tries["stuck"] <= 5:
                    return THROTTLED
            elif tries["stuck"] and tries["stuck"] <= 5:
                ahead.append(index[key])
        return None

    faults = PutRecordsFaults(sink.client, error_codes=codes)
    deliver(sink, chunks)

    assert Counter(lines_of(read_stream(emulator, setup.stream))) == Counter(lines)
    presented = Counter(k for call in faults.calls for k in call.presented)
    assert presented[stuck_key] == 6
    assert all(n == 1 for k, n in presented.items() if k != stuck_key)  # only it was re-sent
    assert sink.stats.throttled == 5 and sink.stats.retried_records == 5
    # Later records kept flowing while it waited, but never more than max_outstanding ahead.
    assert ahead, "no other record was sent while the throttled one waited"
    assert max(ahead) - 1000 <= bound
    assert max(ahead) >= 1000 + 500, "records after the throttled one stalled"


def test_one_pacer_per_stream_shared_by_endpoints_and_rebuilt_sinks(
    emulator: Emulator, unique: Unique
) -> None:
    setup = kinesis_setup(emulator, unique, shards=1, name="first")
    clock = FakeClock()
    other = setup.endpoint.model_copy(update={"name": "second"})

    def sink(endpoint: Any) -> KinesisSink:
        return KinesisSink(endpoint, setup.clients, clock=clock, sleep=clock.sleep)

    first, second, rebuilt = sink(setup.endpoint), sink(other), sink(setup.endpoint)
    assert first.pacer is second.pacer is rebuilt.pacer
    key = (str(first.client.meta.endpoint_url), setup.endpoint.stream_arn())
    assert shared_pacer(key, clock=clock) is first.pacer
    elsewhere = kinesis_setup(emulator, unique, shards=1)
    assert sink(elsewhere.endpoint).pacer is not first.pacer

    # The first sink fills the shard's second; a rebuilt sink object must wait for it.
    chunks = make_chunks(sample_lines(1000, size=30), 500)
    deliver(first, chunks)
    rebuilt.open(chunks[-1].end)
    rebuilt.feed(make_chunks(sample_lines(10, seed=2), 10, start=chunks[-1].end)[0])
    delay = rebuilt.pump(caught_up=True)
    assert delay is not None and delay > 0.5
    assert rebuilt.stats.calls == 0


def test_two_endpoints_on_one_stream_stay_within_each_shards_quota_together(
    emulator: Emulator, unique: Unique
) -> None:
    setup = kinesis_setup(emulator, unique, shards=2, name="a")
    clock = FakeClock()
    other = setup.endpoint.model_copy(update={"name": "b"})
    sinks = [
        KinesisSink(endpoint, setup.clients, clock=clock, sleep=clock.sleep)
        for endpoint in (setup.endpoint, other)
    ]
    shards = load_shard_map(
        setup.clients.client("kinesis", setup.stream.region), setup.stream.arn, now=0
    )
    assert shards is not None
    sent: list[tuple[float, str]] = []  # (fake time, shard id) of every record sent

    def note(params: dict[str, Any], **_: Any) -> None:
        for record in params["Records"]:
            shard = shards.shard_for_key(int(record["ExplicitHashKey"]))
            assert shard is not None
            sent.append((clock(), shard.shard_id))

    sinks[0].client.meta.events.register("before-parameter-build.kinesis.PutRecords", note)
    assert sinks[0].client is sinks[1].client  # one role: one client, one hook sees both
    lines = {s.endpoint.name: sample_lines(3000, seed=i, size=30) for i, s in enumerate(sinks)}
    start = clock()
    for s in sinks:
        s.open(0)
        for chunk in make_chunks(lines[s.endpoint.name], 500):
            s.feed(chunk)
    while True:
        delays = [d for d in (s.pump(caught_up=True) for s in sinks) if d is not None]
        if not delays:
            break
        if min(delays) > 0:
            clock.sleep(min(delays))

    stored = lines_of(read_stream(emulator, setup.stream))
    assert Counter(stored) == Counter(lines["a"] + lines["b"])
    # 6,000 records on 2 shards at 1,000 records/s each take at least 2 s (the first second's
    # quota goes at once); in no one-second window did a shard get more than 1,000.
    assert clock() - start >= 2.0
    for shard_id in shards.ids():
        times = sorted(t for t, s in sent if s == shard_id)
        for i, t in enumerate(times):
            in_window = bisect.bisect_left(times, t + 1.0) - i
            assert in_window <= 1000, (shard_id, t, in_window)


def test_calls_cancelled_by_a_pool_shutdown_keep_their_records(
    emulator: Emulator, unique: Unique
) -> None:
    """The service shuts its I/O pool down with cancel_futures: queued calls never run, the
    sink says so as a transient error and keeps every record (nothing is marked durable)."""
    setup = kinesis_setup(emulator, unique, shards=4, max_in_flight_calls=4)
    pool = ThreadPoolExecutor(max_workers=1)
    sink = KinesisSink(setup.endpoint, setup.clients, hostname="node-1", io_executor=pool)
    release = threading.Event()
    entered = threading.Event()

    def hold(**_: Any) -> None:
        entered.set()
        assert release.wait(60)

    sink.client.meta.events.register("before-call.kinesis.PutRecords", hold)
    chunks = make_chunks(sample_lines(2000, size=40), 500)
    sink.open(0)
    for chunk in chunks:
        sink.feed(chunk)
    sink.pump(caught_up=True)  # 4 calls: one runs (held), three wait in the pool's queue
    assert entered.wait(60) and sink.stats.in_flight_calls == 4
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    with pytest.raises(TransientError) as info:
        while True:
            sink.pump(caught_up=True)
            time.sleep(0.05)
    assert info.value.code == "ShuttingDown"
    assert sink.holds_data()
    assert sink.durable <= chunks[1].start  # at most the one call that ran was accepted
    pool.shutdown(wait=True)
