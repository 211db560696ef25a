"""The stream's pacer: a shard never gets more than its budget in any one-second window of the
moments calls *leave* (nor more than half of it in any quarter second), however long a call
waits for an I/O thread and however long its answer takes; and it never holds back a call the
windows have room for.

Properties run the real `ShardPacer` on a fake clock (hypothesis draws the calls, how long each
waits before it leaves and when it is answered); the end-to-end test runs the real sink through
the latency proxy with the emulator's per-shard quota model in front of the emulator.
"""

from __future__ import annotations

import bisect
import heapq
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_helpers import (
    FakeClock,
    deliver,
    kinesis_setup,
    lines_of,
    make_chunks,
    read_stream,
    sample_lines,
)
from logferry.aws.clients import AwsClients, AwsTarget
from logferry.local.emulator import Emulator
from logferry.local.kinesis_quota import KinesisQuota, list_shards_with
from logferry.local.latency_proxy import LinkProfile, ProxyConfig, latency_proxy
from logferry.sinks.kinesis import KinesisSink
from logferry.sinks.pacing import PENDING_LIMIT, PENDING_POLL, Booking, ShardPacer

Unique = Callable[[str], str]
RECORDS, BYTES = 1_000, 1_000_000
BURST_SPAN, BURST_RECORDS, BURST_BYTES = 0.25, 500, 500_000
SHARDS = ("s0", "s1", "s2")

# What one call asks of a shard: never more than a burst (the sink's batches never do).
demand_strategy = st.dictionaries(
    st.sampled_from(SHARDS),
    st.tuples(st.integers(1, BURST_RECORDS), st.integers(1, BURST_BYTES)),
    min_size=1,
    max_size=len(SHARDS),
)
call_strategy = st.tuples(
    demand_strategy,
    st.floats(0, 1.5),  # seconds the sender waits before asking (after its last call)
    st.floats(0, 2.5),  # seconds the call waits for an I/O thread before it leaves
    st.floats(0, 3.0),  # seconds from leaving to the answer
    st.booleans(),  # True: the sender asks again only when told to, False: it retries early
)


def _worst_window(sends: list[tuple[float, int, int]], span: float) -> tuple[int, int]:
    """The most records and bytes that left within any window [t, t + span)."""
    sends = sorted(sends)
    times = [t for t, _, _ in sends]
    worst = (0, 0)
    for i, (t, _, _) in enumerate(sends):
        inside = sends[i : bisect.bisect_left(times, t + span)]
        worst = (
            max(worst[0], sum(r for _, r, _ in inside)),
            max(worst[1], sum(b for _, _, b in inside)),
        )
    return worst


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(call_strategy, min_size=1, max_size=40))
def test_no_shard_gets_more_than_its_budget_in_any_second_whatever_the_latency(
    calls: list[tuple[dict[str, tuple[int, int]], float, float, float, bool]],
) -> None:
    clock = FakeClock(0.0)
    pacer = ShardPacer(clock=clock)
    pending: list[tuple[float, int, Booking, dict[str, tuple[int, int]]]] = []
    left: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    answered: list[float] = []

    def run_until(when: float) -> None:
        """Let every call due to leave by `when` leave, in time order."""
        while pending and pending[0][0] <= when:
            at, _, booking, demand = heapq.heappop(pending)
            clock.advance(max(0.0, at - clock()))
            pacer.started(booking)
            for shard, (records, size) in demand.items():
                left[shard].append((clock(), records, size))
        clock.advance(max(0.0, when - clock()))

    for order, (demand, think, queue, latency, patient) in enumerate(calls):
        run_until(clock() + think)
        early = not patient
        while True:
            booked = pacer.hold(demand)
            if isinstance(booked, Booking):
                break
            assert 0 < booked < float("inf")
            # A patient sender comes back when told; an impatient one first comes back early
            # (and is refused again).
            run_until(clock() + (booked / 2 if early else booked))
            early = False
        heapq.heappush(pending, (clock() + queue, order, booked, demand))
        answered.append(clock() + queue + latency)  # the pacer never needs to know
    run_until(max(answered, default=clock()) + PENDING_LIMIT)

    for shard, sends in left.items():
        records, size = _worst_window(sends, 1.0)
        assert records <= RECORDS and size <= BYTES, (shard, records, size)
        records, size = _worst_window(sends, BURST_SPAN)
        assert records <= BURST_RECORDS and size <= BURST_BYTES, (shard, records, size)


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(st.tuples(demand_strategy, st.floats(0, 1.2)), min_size=1, max_size=30),
    ask=demand_strategy,
)
def test_the_pacer_never_holds_back_what_the_window_has_room_for(
    calls: list[tuple[dict[str, tuple[int, int]], float]], ask: dict[str, tuple[int, int]]
) -> None:
    """Whatever was sent before: a demand that fits every shard's last second and last quarter
    second goes at once, and a refused one is told when it fits, to the microsecond (not
    later: no room is left unused)."""
    clock = FakeClock(0.0)
    pacer = ShardPacer(clock=clock)
    sent: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for demand, gap in calls:
        clock.advance(gap)
        if pacer.reserve(demand) == 0.0:
            for shard, (records, size) in demand.items():
                sent[shard].append((clock(), records, size))

    def fits_at(now: float) -> bool:
        for shard, (records, size) in ask.items():
            for span, most_records, most_bytes in (
                (1.0, RECORDS, BYTES),
                (BURST_SPAN, BURST_RECORDS, BURST_BYTES),
            ):
                recent = [(r, b) for t, r, b in sent[shard] if t + span > now]
                if sum(r for r, _ in recent) + records > most_records:
                    return False
                if sum(b for _, b in recent) + size > most_bytes:
                    return False
        return True

    delay = pacer.delay(ask)
    assert (delay == 0.0) == fits_at(clock())
    if delay > 0:
        assert fits_at(clock() + delay + 1e-9)
        assert not fits_at(clock() + delay - 1e-6)
        clock.advance(delay + 1e-9)
        assert pacer.reserve(ask) == 0.0


def test_a_held_call_counts_from_when_it_leaves_or_gives_its_room_back() -> None:
    clock = FakeClock(0.0)
    pacer = ShardPacer(clock=clock)
    first = pacer.hold({"a": (300, 1_000)})
    assert isinstance(first, Booking)
    clock.advance(5.0)  # waited 5 s for an I/O thread: it has not left, it still counts
    assert pacer.room("a") == (200, 499_000)  # in the quarter second too
    assert pacer.delay({"a": (300, 10)}) == PENDING_POLL  # ask again soon: it leaves soon
    pacer.started(first)
    clock.advance(0.9)
    assert pacer.room("a") == (500, 500_000)  # out of the quarter second, not the second
    assert pacer.delay({"a": (800, 10)}) == pytest.approx(0.1)  # one second from leaving
    second = pacer.hold({"a": (400, 10)})
    assert isinstance(second, Booking)
    assert pacer.room("a") == (100, 499_990)
    pacer.release(second)  # cancelled before it left
    assert pacer.room("a") == (500, 500_000)
    pacer.started(second)  # released: starting it later changes nothing
    assert pacer.room("a") == (500, 500_000)
    # A held call that never starts stops counting after PENDING_LIMIT.
    stuck = pacer.hold({"b": (500, 10)})
    assert isinstance(stuck, Booking) and pacer.room("b") == (0, 499_990)
    clock.advance(PENDING_LIMIT + 1.0)
    assert pacer.room("b") == (BURST_RECORDS, BURST_BYTES)
    pacer.started(stuck)  # ... and counts again from the moment it does leave
    assert pacer.room("b") == (0, 499_990)


def test_every_record_arrives_once_at_the_quota_through_latency_with_no_throttle(
    emulator: Emulator, unique: Unique, admin_kinesis: Any
) -> None:
    """The sink at 100 ms per call through the proxy, the emulator's per-shard quota model
    (1,000 records/s, 1 MiB/s, counted when a call reaches it) in front of the emulator: 6,000
    one-line records on 2 shards, three seconds of quota. Every line once, not one throttle."""
    setup = kinesis_setup(emulator, unique, shards=2)
    quota = KinesisQuota(list_shards=list_shards_with(admin_kinesis))
    config = ProxyConfig(services={"kinesis": LinkProfile(delay_ms=100, jitter_ms=3)})
    lines = sample_lines(6000, size=60)
    answered = threading.Event()
    with (
        latency_proxy(emulator.url, config, [quota], rewrite_token=emulator.rewrite_token) as proxy,
        ThreadPoolExecutor(16) as pool,
    ):
        via = AwsClients(setup.clients.credentials, AwsTarget(endpoint_url=proxy.url))
        sink = KinesisSink(
            setup.endpoint, via, hostname="node-1", io_executor=pool, wake=answered.set
        )
        deliver(sink, make_chunks(lines, 500))
    stored = lines_of(read_stream(emulator, setup.stream))
    assert Counter(stored) == Counter(lines)
    stats = quota.stats()
    assert stats["throttled"] == 0 and sink.stats.throttled == 0
    assert stats["records"] == 6000 == sink.stats.records
    assert sorted(stats["per_shard"].values()) == [3000, 3000]
    assert sink.stats.max_in_flight_seen > 1 and answered.is_set()


@pytest.mark.parametrize(
    ("shards", "calls", "outstanding"), [(1, 8, 8000), (8, 32, 16_000), (40, 64, 64_000)]
)
def test_by_default_the_calls_in_flight_follow_the_stream_so_the_pacer_is_the_brake(
    emulator: Emulator, unique: Unique, shards: int, calls: int, outstanding: int
) -> None:
    """Unset `max_in_flight_calls`: four calls per open shard (8 to 64), so that a stream's
    quota, not the number of calls, bounds the rate at round trips up to about a second;
    what a crash may replay is two seconds of the stream's quota (at least 8,000 records,
    never more than `2 × calls × 500`)."""
    setup = kinesis_setup(emulator, unique, shards=shards)
    assert setup.endpoint.max_in_flight_calls is None
    with ThreadPoolExecutor(2) as pool:
        sink = KinesisSink(setup.endpoint, setup.clients, hostname="node-1", io_executor=pool)
        deliver(sink, make_chunks(sample_lines(10, size=20), 10))
    assert sink.status()["max_in_flight_calls"] == calls
    assert sink._max_outstanding == outstanding <= 2 * calls * 500
    chosen = setup.endpoint.model_copy(update={"max_in_flight_calls": 3})
    explicit = KinesisSink(chosen, setup.clients, io_executor=pool)
    assert (explicit._max_in_flight, explicit._max_outstanding) == (3, 3000)


@pytest.fixture
def admin_kinesis(emulator: Emulator) -> Any:
    return emulator.client("kinesis", region="us-east-1")
