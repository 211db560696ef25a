"""The Kinesis delivery engine against the patched emulator, with faults injected per record.

Every delivery test reads the whole stream back as the customer's admin and compares multisets
of lines, so "arrived exactly once" is checked on the data itself, not on our own counters.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from kinesis_helpers import (
    DeliveryInterrupted,
    FakeClock,
    KinesisSetup,
    KinesisSetupError,
    PutRecordsFaults,
    deliver,
    kinesis_role,
    kinesis_setup,
    lines_of,
    make_chunks,
    open_shard_ids,
    read_stream,
    role_clients,
    sample_lines,
)
from logferry.aws.clients import AwsClients
from logferry.errors import SetupError
from logferry.local.emulator import Emulator
from logferry.sinks.kinesis import DEFAULT_MAX_RECORD_BYTES, KinesisSink
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.sinks.pacing import ShardPacer, ThrottleMonitor
from logferry.sinks.shard_map import HASH_KEY_MAX, Shard, ShardMap, parse_shards

Unique = Callable[[str], str]


def _sink(setup: KinesisSetup, clock: FakeClock, **kwargs: Any) -> KinesisSink:
    return KinesisSink(
        setup.endpoint,
        kwargs.pop("clients", setup.clients),
        clock=clock,
        sleep=clock.sleep,
        hostname="node-1",
        **kwargs,
    )


def _within(counts: list[int], tolerance: float = 0.10) -> bool:
    mean = sum(counts) / len(counts)
    return all(abs(c - mean) <= tolerance * mean for c in counts)


# --- exactly once under partial failures ---------------------------------------------------------


def test_partial_failures_arrive_exactly_once_and_only_failed_records_are_resent(
    emulator: Emulator, unique: Unique
) -> None:
    setup = kinesis_setup(emulator, unique, shards=4)
    clock = FakeClock()
    sink = _sink(setup, clock)
    faults = PutRecordsFaults(sink.client, throttle=0.30, internal=0.05, seed=11)
    lines = sample_lines(3000)

    deliver(sink, make_chunks(lines, 250))

    stored = read_stream(emulator, setup.stream)
    assert Counter(lines_of(stored)) == Counter(lines)  # every line, exactly once
    presented = Counter(k for call in faults.calls for k in call.presented)
    forwarded = Counter(k for call in faults.calls for k in call.forwarded)
    failed = Counter(k for call in faults.calls for k in call.failed)
    assert set(forwarded.values()) == {1} and len(forwarded) == len(lines)
    # Each record was presented once plus once per failure: nothing else was sent again.
    assert all(presented[key] == 1 + failed[key] for key in presented)
    codes = Counter(code for call in faults.calls for code in call.failed.values())
    assert codes["ProvisionedThroughputExceededException"] > 500
    assert codes["InternalFailure"] > 50
    stats = sink.stats
    assert stats.retried_records == sum(failed.values())
    assert stats.throttled == codes["ProvisionedThroughputExceededException"]
    assert stats.internal_failures == codes["InternalFailure"]
    assert (stats.records, stats.lines, stats.calls) == (3000, 3000, len(faults.calls))
    assert clock.sleeps, "failed records must wait for their backoff before being re-sent"


def test_whole_call_failures_are_retried_by_the_sink(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, shards=2)
    # botocore's own retries off: the sink alone must bring the records through.
    clients = AwsClients(
        setup.clients.session.get_credentials(),
        emulator.target,
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    clock = FakeClock()
    sink = _sink(setup, clock, clients=clients)
    failures = {"left": 3}

    def unavailable(**_: Any) -> Any:
        if failures["left"] == 0:
            return None
        failures["left"] -= 1
        body = {"Error": {"Code": "ServiceUnavailable", "Message": "try later"}}
        return AWSResponse("http://faults.invalid", 503, {}, None), body

    sink.client.meta.events.register("before-call.kinesis.PutRecords", unavailable)
    lines = sample_lines(800, seed=3)
    deliver(sink, make_chunks(lines, 100))
    assert Counter(lines_of(read_stream(emulator, setup.stream))) == Counter(lines)
    assert sink.stats.failed_calls == 3
    assert sink.stats.backoff_seconds > 0
    assert sink.status()["state"] == "ok"


# --- spread and resharding -----------------------------------------------------------------------


def test_spread_is_even_and_follows_update_shard_count_mid_run(
    emulator: Emulator, unique: Unique
) -> None:
    setup = kinesis_setup(emulator, unique, shards=4)
    clock = FakeClock()
    sink = _sink(setup, clock)
    admin = emulator.client("kinesis")
    reshard_at = 4
    parents = open_shard_ids(emulator, setup.stream)

    def reshard(call: int) -> None:
        if call == reshard_at:  # between two PutRecords calls of one deliver()
            admin.update_shard_count(
                StreamARN=setup.stream.arn, TargetShardCount=8, ScalingType="UNIFORM_SCALING"
            )

    faults = PutRecordsFaults(sink.client, on_call=reshard)
    lines = sample_lines(8000, seed=5, size=60)
    deliver(sink, make_chunks(lines, 500))

    stored = read_stream(emulator, setup.stream, open_only=True)
    assert Counter(lines_of(stored)) == Counter(lines)
    children = open_shard_ids(emulator, setup.stream)
    assert len(children) == 8 and not children & parents
    before = Counter(s for call in faults.calls[:reshard_at] for s in call.landed)
    after = Counter(s for call in faults.calls[reshard_at:] for s in call.landed)
    # Before the reshard: the 4 shards evenly (round-robin gives exactly 500 each).
    assert set(before) == parents and _within(list(before.values())), before
    # After it: nothing went to a closed shard, and the 8 open ones share the rest evenly.
    assert set(after) == children and _within(list(after.values())), after
    assert sum(after.values()) == len(lines) - sum(before.values())
    assert sink.stats.misrouted_records > 0  # how the stale map was noticed
    assert sink.status()["open_shards"] == 8
    assert set(sink.status()["shard_ids"]) == children


def test_split_and_merge_between_deliveries(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, shards=2)
    sink = _sink(setup, FakeClock())
    faults = PutRecordsFaults(sink.client)
    admin = emulator.client("kinesis")

    log_end = [0]  # a spool never reuses a position: each delivery continues the log

    def deliver_and_count(lines: list[bytes]) -> Counter[str]:
        """Where records landed, leaving out the one call that finds the map stale."""
        first_call = len(faults.calls)
        misrouted = sink.stats.misrouted_records
        chunks = make_chunks(lines, 200, start=log_end[0])
        log_end[0] = chunks[-1].end
        deliver(sink, chunks)
        if sink.stats.misrouted_records > misrouted:
            first_call += 1
        return Counter(s for call in faults.calls[first_call:] for s in call.landed)

    sent = sample_lines(400, seed=1)
    assert sorted(deliver_and_count(sent).values()) == [200, 200]
    shards = admin.list_shards(StreamARN=setup.stream.arn)["Shards"]
    first = shards[0]
    start, end = (int(first["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    admin.split_shard(
        StreamARN=setup.stream.arn,
        ShardToSplit=first["ShardId"],
        NewStartingHashKey=str((start + end) // 2),
    )
    three = open_shard_ids(emulator, setup.stream)
    misrouted = sink.stats.misrouted_records
    more = sample_lines(1100, seed=2)
    after_split = deliver_and_count(more)
    assert sink.stats.misrouted_records > misrouted  # the first call showed the split
    assert set(after_split) == three and len(three) == 3
    assert sorted(after_split.values()) == [200, 200, 200]

    children = sorted(three - {shards[1]["ShardId"]})
    admin.merge_shards(
        StreamARN=setup.stream.arn, ShardToMerge=children[0], AdjacentShardToMerge=children[1]
    )
    two = open_shard_ids(emulator, setup.stream)
    last = sample_lines(900, seed=3)
    after_merge = deliver_and_count(last)
    assert set(after_merge) == two and len(two) == 2
    assert sorted(after_merge.values()) == [200, 200]
    stored = read_stream(emulator, setup.stream, open_only=True)
    assert Counter(lines_of(stored)) == Counter(sent + more + last)


def test_list_shards_is_paginated(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, shards=5)
    sink = _sink(setup, FakeClock())
    sink.list_shards_page_size = 2
    calls: list[dict[str, Any]] = []
    sink.client.meta.events.register(
        "before-parameter-build.kinesis.ListShards", lambda params, **_: calls.append(dict(params))
    )
    deliver(sink, make_chunks(sample_lines(500), 100))
    assert len(calls) == 3 and all("StreamName" not in c for c in calls)
    stored = read_stream(emulator, setup.stream)
    assert sorted(len(v) for v in stored.values()) == [100] * 5


# --- permissions and setup errors ----------------------------------------------------------------


def test_guide_policy_is_enough_and_describe_denial_is_harmless(
    emulator: Emulator, unique: Unique
) -> None:
    setup = kinesis_setup(emulator, unique, shards=1)  # exactly the guide's permission policy
    sink = _sink(setup, FakeClock())
    sink.healthcheck()
    lines = sample_lines(50)
    deliver(sink, make_chunks(lines, 10))
    assert Counter(lines_of(read_stream(emulator, setup.stream))) == Counter(lines)
    status = sink.status()
    assert status["state"] == "ok"
    assert status["describe_stream_summary"] == "denied"
    assert status["max_record_bytes"] == DEFAULT_MAX_RECORD_BYTES
    assert status["under_provisioned"] is None
    # A second delivery does not ask DescribeStreamSummary again (CloudTrail stays quiet).
    asked: list[str] = []
    sink.client.meta.events.register(
        "before-call.kinesis.DescribeStreamSummary", lambda **_: asked.append("x")
    )
    deliver(sink, make_chunks(lines, 10, start=10_000))
    assert asked == []


def test_without_list_shards_the_error_names_the_action(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, actions=["kinesis:PutRecords"])
    sink = _sink(setup, FakeClock())
    with pytest.raises(SetupError) as info:
        sink.healthcheck()
    assert "kinesis:ListShards" in str(info.value)
    assert info.value.code == "AccessDeniedException"
    with pytest.raises(KinesisSetupError) as delivering:
        deliver(sink, make_chunks(sample_lines(5), 5))
    assert "kinesis:ListShards" in (delivering.value.fix or "")
    assert delivering.value.completed_chunks == 0
    status = sink.status()
    assert status["state"] == "error"
    assert "kinesis:ListShards" in status["error"]["fix"]


def test_without_put_records_the_error_names_the_action(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, actions=["kinesis:ListShards"])
    sink = _sink(setup, FakeClock())
    sink.healthcheck()  # ListShards alone is allowed
    with pytest.raises(KinesisSetupError) as info:
        deliver(sink, make_chunks(sample_lines(5), 5))
    assert "kinesis:PutRecords" in (info.value.fix or "")
    assert read_stream(emulator, setup.stream) == {"shardId-000000000000": []}


def test_missing_stream_is_a_setup_error(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique)
    endpoint = setup.endpoint.model_copy(update={"topic": unique("missing")})
    # A role whose guide policy names the missing stream, so IAM lets the call through.
    external_id = unique("cust")
    role = kinesis_role(emulator, unique("role"), endpoint.stream(), external_id)
    endpoint = endpoint.model_copy(update={"iam_role": role})
    sink = KinesisSink(
        endpoint, role_clients(emulator, role, external_id), clock=FakeClock(), sleep=lambda s: None
    )
    with pytest.raises(KinesisSetupError) as info:
        deliver(sink, make_chunks(sample_lines(3), 3))
    assert info.value.code == "ResourceNotFoundException"
    assert "Create the stream" in (info.value.fix or "")


def test_kms_errors_are_setup_errors_and_nothing_is_lost(
    emulator: Emulator, unique: Unique
) -> None:
    setup = kinesis_setup(emulator, unique)
    sink = _sink(setup, FakeClock())

    def kms_denied(**_: Any) -> Any:
        body = {
            "Error": {"Code": "KMSAccessDeniedException", "Message": "no access to key"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return AWSResponse("http://faults.invalid", 400, {}, None), body

    sink.client.meta.events.register("before-call.kinesis.PutRecords", kms_denied)
    chunks = make_chunks(sample_lines(20), 10)
    with pytest.raises(KinesisSetupError) as info:
        deliver(sink, chunks)
    assert info.value.code == "KMSAccessDeniedException"
    assert "kms:GenerateDataKey" in (info.value.fix or "")
    assert info.value.completed_chunks == 0
    assert sink.status()["state"] == "error"
    # The caller still has the chunks; once the key is fixed they go through.
    sink.client.meta.events.unregister("before-call.kinesis.PutRecords", kms_denied)
    deliver(sink, chunks)
    assert len(lines_of(read_stream(emulator, setup.stream))) == 20
    assert sink.status()["state"] == "ok"


def test_describe_stream_summary_raises_the_record_limit_when_allowed(
    emulator: Emulator, unique: Unique
) -> None:
    setup = kinesis_setup(
        emulator,
        unique,
        actions=["kinesis:PutRecords", "kinesis:ListShards", "kinesis:DescribeStreamSummary"],
    )
    sink = _sink(setup, FakeClock())

    def large_records(parsed: dict[str, Any], **_: Any) -> None:
        # moto 5.2.5 does not report MaxRecordSizeInKiB; AWS does for large-record streams.
        parsed["StreamDescriptionSummary"]["MaxRecordSizeInKiB"] = 4096

    sink.client.meta.events.register("after-call.kinesis.DescribeStreamSummary", large_records)
    deliver(sink, make_chunks(sample_lines(10), 10))
    status = sink.status()
    assert status["describe_stream_summary"] == "allowed"
    assert status["max_record_bytes"] == 4 * 1024 * 1024


# --- throttling status and stopping --------------------------------------------------------------


def test_persistent_throttling_shows_under_provisioned(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, shards=1)
    clock = FakeClock()
    sink = _sink(setup, clock)
    # Each call "takes" 2 s of stream time, so 30 % throttling lasts well over 30 s.
    PutRecordsFaults(sink.client, throttle=0.3, seed=3, on_call=lambda _: clock.advance(2.0))
    deliver(sink, make_chunks(sample_lines(6000, size=40), 500))
    message = sink.status()["under_provisioned"]
    assert message is not None
    assert message.startswith(
        "stream under-provisioned: 1 open shards, ≈2 needed for the observed rate"
    )
    assert "% of records throttled" in message
    # Once throttling stops for a while, the warning goes away by itself.
    clock.advance(120)
    assert sink.status()["under_provisioned"] is None


def test_stop_interrupts_retries_and_keeps_the_data(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique)
    clock = FakeClock()
    stop = threading.Event()
    sink = KinesisSink(setup.endpoint, setup.clients, clock=clock, sleep=clock.sleep, stop=stop)
    chunks = make_chunks(sample_lines(30), 10)
    second_chunk = chunks[1].start

    def throttle_from_second_chunk(call: int, record: dict[str, Any]) -> str | None:
        if call == 4:
            stop.set()
        offset = int(record["PartitionKey"].rsplit(":", 1)[1])
        return "ProvisionedThroughputExceededException" if offset >= second_chunk else None

    faults = PutRecordsFaults(sink.client, error_codes=throttle_from_second_chunk)
    with pytest.raises(DeliveryInterrupted) as info:
        deliver(sink, chunks)
    assert info.value.completed_chunks == 1  # the caller may drop the first chunk only
    assert info.value.pending_records == 20
    assert len(faults.calls) == 5
    stored = lines_of(read_stream(emulator, setup.stream))
    assert Counter(stored) == Counter(chunks[0].split_lines())
    # After the first call, every call carried only records throttled before.
    assert len(faults.calls[0].presented) == 30
    assert sink.stats.throttled == sum(len(c.presented) for c in faults.calls) - 10


# --- record shapes: oversize, packing, framing ---------------------------------------------------


@pytest.mark.parametrize("packing", [False, True])
def test_oversize_lines_are_split_into_marked_pieces(
    emulator: Emulator, unique: Unique, packing: bool
) -> None:
    setup = kinesis_setup(emulator, unique, packing=packing)
    sink = _sink(setup, FakeClock())
    big = bytes(range(32, 127)) * (5 * 1024 * 1024 // 95 // 2)  # ≈2.5 MiB
    lines = [b"before", big, b"after"]
    deliver(sink, make_chunks(lines, 3))
    stored = read_stream(emulator, setup.stream)
    records = [r for shard in stored.values() for r in shard]
    pieces = sorted(
        (
            r
            for r in records
            if ":" in r["PartitionKey"].rsplit(":", 1)[-1] or "/" in r["PartitionKey"]
        ),
        key=lambda r: int(r["PartitionKey"].rsplit(":", 1)[1].split("/")[0]),
    )
    assert [p["PartitionKey"].rsplit(":", 1)[1] for p in pieces] == ["1/3", "2/3", "3/3"]
    assert len({r["PartitionKey"].rsplit(":", 1)[0] for r in pieces}) == 1  # same line offset
    whole = b"".join(p["Data"] for p in pieces)
    assert whole == (big + b"\n" if packing else big)
    assert all(len(p["Data"]) + len(p["PartitionKey"]) <= DEFAULT_MAX_RECORD_BYTES for p in pieces)
    assert sink.stats.oversize_lines == 1
    assert sink.stats.split_records == 3
    assert sink.stats.lines == 3


def test_oversize_truncate_is_counted_and_marked(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, oversize="truncate")
    sink = _sink(setup, FakeClock())
    big = b"x" * (DEFAULT_MAX_RECORD_BYTES + 1000)
    deliver(sink, make_chunks([b"small", big], 2))
    records = [r for shard in read_stream(emulator, setup.stream).values() for r in shard]
    cut = next(r for r in records if "truncated-from-" in r["PartitionKey"])
    assert cut["PartitionKey"].endswith(f":truncated-from-{len(big)}")
    assert len(cut["Data"]) + len(cut["PartitionKey"]) == DEFAULT_MAX_RECORD_BYTES
    assert big.startswith(cut["Data"])
    assert sink.stats.oversize_lines == 1
    assert sink.stats.truncated_bytes == len(big) - len(cut["Data"])


def test_packing_puts_many_lines_in_few_records(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, shards=2, packing=True)
    sink = _sink(setup, FakeClock())
    lines = sample_lines(20_000, size=100)
    deliver(sink, make_chunks(lines, 1000))
    stored = read_stream(emulator, setup.stream)
    records = [r for shard in stored.values() for r in shard]
    assert Counter(lines_of(stored, packed=True)) == Counter(lines)
    # ≈2.2 MB of lines in records of up to 64 KiB; records never span chunks (≈102 KB each:
    # two records per chunk), so a replay from any record boundary rebuilds the same records.
    assert len(records) == 40
    assert all(r["Data"].endswith(b"\n") for r in records)
    assert all(len(r["Data"]) + len(r["PartitionKey"]) <= 64 * 1024 for r in records)
    assert (sink.stats.records, sink.stats.lines) == (len(records), 20_000)
    # Keys name the first line's offset and the line count.
    first = min(records, key=lambda r: int(r["PartitionKey"].split(":")[1].split("+")[0]))
    count = first["Data"].count(b"\n")
    assert first["PartitionKey"] == f"{setup.endpoint.name}:0+{count}"


def test_format_frames_each_line(emulator: Emulator, unique: Unique) -> None:
    setup = kinesis_setup(emulator, unique, format="classic", name="LogTest")
    sink = _sink(setup, FakeClock())
    deliver(sink, make_chunks([b"hello", b"world"], 2, at=1467671846.0))
    records = sorted(
        (r for shard in read_stream(emulator, setup.stream).values() for r in shard),
        key=lambda r: int(r["PartitionKey"].split(":")[1]),
    )
    assert [r["Data"].split(b": ", 1)[1] for r in records] == [b"hello", b"world"]
    assert records[0]["Data"].startswith(b"<134>2016-07-04T22:37:26Z node-1 LogTest[")
    # Partition keys are the lines' offsets in the log, not in the framed output.
    assert [r["PartitionKey"] for r in records] == ["LogTest:0", "LogTest:6"]


# --- pure parts: shard map and pacing ------------------------------------------------------------


def test_shard_map_round_robin_keys_and_closed_shards() -> None:
    third = (HASH_KEY_MAX + 1) // 3

    def entry(shard_id: str, start: int, end: int, closed: bool = False) -> dict[str, Any]:
        sequence = {"StartingSequenceNumber": "1"}
        if closed:
            sequence["EndingSequenceNumber"] = "9"
        return {
            "ShardId": shard_id,
            "HashKeyRange": {"StartingHashKey": str(start), "EndingHashKey": str(end)},
            "SequenceNumberRange": sequence,
        }

    raw = [
        entry("s0", 0, HASH_KEY_MAX, closed=True),
        entry("s2", third, HASH_KEY_MAX),
        entry("s1", 0, third - 1),
    ]
    shards, closed = parse_shards(raw)
    assert closed == 1
    shard_map = ShardMap(shards, loaded_at=0.0, closed=closed)
    assert shard_map.ids() == ["s1", "s2"] and shard_map.covers_keyspace()
    rng = random.Random(1)
    picked = []
    for _ in range(6):
        shard = shard_map.peek()
        key = int(shard.random_key(rng))
        assert shard.contains(key) and shard_map.shard_for_key(key) is shard
        picked.append(shard.shard_id)
        shard_map.advance()
    assert picked == ["s1", "s2"] * 3
    assert Shard("x", 5, 5).random_key(rng) == "5"


def test_pacer_keeps_each_shard_within_a_second_of_quota() -> None:
    clock = FakeClock(0.0)
    pacer = ShardPacer(clock=clock)
    assert pacer.delay({"a": (1000, 100_000)}) == 0.0  # a whole second's quota at once
    pacer.commit({"a": (1000, 100_000)})
    assert pacer.delay({"a": (1, 10)}) == pytest.approx(1.0)
    assert pacer.delay({"b": (500, 10)}) == 0.0  # other shards are independent
    clock.advance(0.4)
    pacer.commit({"b": (10, 999_000)})
    assert pacer.delay({"b": (1, 2000)}) == pytest.approx(1.0)  # bytes limit too
    assert pacer.delay({"a": (1, 10), "b": (1, 10)}) == pytest.approx(0.6)
    clock.advance(0.6)
    assert pacer.delay({"a": (1000, 10)}) == 0.0
    # A record bigger than a second's bytes goes alone, on an idle shard.
    assert pacer.delay({"c": (1, 4_000_000)}) == 0.0
    pacer.commit({"c": (1, 4_000_000)})
    assert pacer.delay({"c": (1, 10)}) == pytest.approx(4.0)  # ... and holds it 4 s at 1 MB/s
    pacer.retain(["a"])
    assert pacer.delay({"c": (1, 10)}) == 0.0


def test_throttle_monitor_needs_persistence() -> None:
    clock = FakeClock(0.0)
    monitor = ThrottleMonitor(clock=clock)
    for _ in range(10):  # 20 s of 50 % throttling: not yet persistent
        monitor.note(500, 50_000, 250)
        clock.advance(2.0)
    assert monitor.estimate(2) is None
    for _ in range(10):
        monitor.note(500, 50_000, 250)
        clock.advance(2.0)
    estimate = monitor.estimate(2)
    assert estimate is not None and estimate.needed_shards == 4  # half accepted → twice the shards
    assert estimate.message().startswith("stream under-provisioned: 2 open shards, ≈4 needed")
    clock.advance(16.0)
    assert monitor.estimate(2) is None  # the last throttle is no longer recent


def test_endpoint_model_is_the_sink_input() -> None:
    endpoint = KinesisEndpoint(
        name="e", topic="t", region="us-east-1", iam_role="arn:aws:iam::123456789012:role/r"
    )
    sink = KinesisSink(endpoint, AwsClients())
    assert sink.stream_arn == "arn:aws:kinesis:us-east-1:123456789012:stream/t"
    assert sink.status()["state"] == "idle"


def test_pacer_room_is_what_the_window_still_takes() -> None:
    from logferry.sinks.pacing import ShardPacer

    now = [100.0]
    pacer = ShardPacer(clock=lambda: now[0])
    # At most half a second's quota in any quarter second, a second's in any second.
    assert pacer.room("s1") == (500, 500_000)
    pacer.commit({"s1": (1, 600_000)})
    assert pacer.room("s1") == (499, 0)
    assert pacer.room("s2") == (500, 500_000)
    now[0] += 0.5  # the first entry left the quarter second, not the second
    pacer.commit({"s1": (10, 300_000)})
    assert pacer.room("s1") == (490, 100_000)
    now[0] += 0.6  # the first entry left the one-second window, the second the quarter
    assert pacer.room("s1") == (500, 500_000)


def test_a_sink_that_no_longer_holds_its_endpoint_sends_no_put_records(
    emulator: Emulator, unique: Unique
) -> None:
    """`SinkContext.holds` False (NATS: this node's lease lapsed, another node owns the
    endpoint): no PutRecords leaves, the sink raises SpoolFenced, and its records are back in
    its queue in order (the spool keeps them for the new owner)."""
    from logferry.spool.errors import SpoolFenced

    setup = kinesis_setup(emulator, unique, shards=2)
    holding = [True]
    sink = _sink(setup, FakeClock(), holds=lambda: holding[0])
    first = sample_lines(200)
    first_chunks = make_chunks(first, 50)
    deliver(sink, first_chunks)
    holding[0] = False
    later = [b"after the lease lapsed %d" % i for i in range(100)]
    with pytest.raises(SpoolFenced, match=r"PutRecords .* not sent"):
        deliver(sink, make_chunks(later, 50, start=first_chunks[-1].end))
    assert Counter(lines_of(read_stream(emulator, setup.stream))) == Counter(first)
    holding[0] = True  # this node owns it again (a new epoch): the queued records go out
    sink.pump(caught_up=True)
    deliver(sink, [])
    while sink.pump(caught_up=True) is not None:
        pass
    assert Counter(lines_of(read_stream(emulator, setup.stream))) == Counter(first + later)
