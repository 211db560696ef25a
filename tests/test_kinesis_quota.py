"""The per-shard Kinesis quota middleware, in the latency proxy in front of the emulator.

The quota's clock is a test clock (it moves only when told), so what is admitted is exact; the
records Kinesis holds afterwards are read back as the admin and compared.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.config import Config

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
from logferry.local.kinesis_quota import (
    THROTTLED,
    KinesisQuota,
    hash_key,
    list_shards_with,
    record_size,
)
from logferry.local.latency_proxy import latency_proxy
from logferry.sinks.kinesis import KinesisSink
from logferry.sinks.shard_map import HASH_KEY_MAX

Unique = Callable[[str], str]
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


@pytest.fixture
def admin_kinesis(emulator: Emulator) -> Any:
    return emulator.client("kinesis", region="us-east-1")


def _role_client(clients: AwsClients, url: str) -> Any:
    """The same assumed-role identity, through the proxy, without botocore retries."""
    via = AwsClients(clients.credentials, AwsTarget(endpoint_url=url), config=NO_RETRIES)
    return via.client("kinesis", "us-east-1")


def _entries(count: int, *, size: int = 20, key: str | None = None) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        entry: dict[str, Any] = {"Data": b"%06d" % i + b"x" * (size - 6), "PartitionKey": f"k{i}"}
        if key is not None:
            entry["ExplicitHashKey"] = key
        out.append(entry)
    return out


def test_record_quota_admits_one_seconds_worth_then_the_rate(
    emulator: Emulator, unique: Unique, admin_kinesis: Any
) -> None:
    setup = kinesis_setup(emulator, unique, shards=1)
    clock = FakeClock()
    quota = KinesisQuota(list_shards=list_shards_with(admin_kinesis), clock=clock)
    with latency_proxy(
        emulator.url, middlewares=[quota], rewrite_token=emulator.rewrite_token
    ) as proxy:
        kinesis = _role_client(setup.clients, proxy.url)
        answers = [
            kinesis.put_records(StreamARN=setup.stream.arn, Records=batch)
            for batch in (_entries(500), _entries(500), _entries(500))
        ]
        clock.advance(0.25)  # a quarter second refills 250 records
        later = kinesis.put_records(StreamARN=setup.stream.arn, Records=_entries(300))
    results = [r for answer in answers for r in answer["Records"]]
    assert all("ShardId" in r for r in results[:1000])
    assert all(r.get("ErrorCode") == THROTTLED for r in results[1000:])
    assert "Rate exceeded for shard" in results[-1]["ErrorMessage"]
    assert [a["FailedRecordCount"] for a in answers] == [0, 0, 500]
    assert later["FailedRecordCount"] == 50
    assert [("ShardId" in r) for r in later["Records"]] == [True] * 250 + [False] * 50
    stored = lines_of(read_stream(emulator, setup.stream))
    assert len(stored) == 1000 + 250  # only admitted records were written
    assert quota.stats()["throttled"] == 550 and quota.stats()["records"] == 1250


def test_byte_quota_per_shard_and_answers_merged_in_order(
    emulator: Emulator, unique: Unique, admin_kinesis: Any
) -> None:
    setup = kinesis_setup(emulator, unique, shards=4)
    clock = FakeClock()
    quota = KinesisQuota(list_shards=list_shards_with(admin_kinesis), clock=clock)
    first_shard, last_shard = "0", str(HASH_KEY_MAX)
    big = 100 * 1024
    # 12 records of 100 KiB on the first shard, interleaved with 12 small ones on the last.
    records: list[dict[str, Any]] = []
    for i in range(12):
        records.append(
            {"Data": b"b" * big, "PartitionKey": f"big{i}", "ExplicitHashKey": first_shard}
        )
        records.append(
            {"Data": b"s%d" % i, "PartitionKey": f"small{i}", "ExplicitHashKey": last_shard}
        )
    with latency_proxy(
        emulator.url, middlewares=[quota], rewrite_token=emulator.rewrite_token
    ) as proxy:
        answer = _role_client(setup.clients, proxy.url).put_records(
            StreamARN=setup.stream.arn, Records=records
        )
    results = answer["Records"]
    # 1 MiB per second: ten 100 KiB records (plus keys) fit, the eleventh does not.
    big_ok = [("ShardId" in r) for r in results[0::2]]
    assert big_ok == [True] * 10 + [False] * 2
    assert all("ShardId" in r for r in results[1::2])  # the other shard is not charged
    shard_ids = {r["ShardId"] for r in results[1::2]}
    assert len(shard_ids) == 1 and {r["ShardId"] for r in results[0:20:2]}.isdisjoint(shard_ids)
    assert answer["FailedRecordCount"] == 2
    stored = read_stream(emulator, setup.stream)
    assert sorted(r["PartitionKey"] for rs in stored.values() for r in rs) == sorted(
        [f"big{i}" for i in range(10)] + [f"small{i}" for i in range(12)]
    )


def test_partition_keys_are_routed_by_md5_like_kinesis(
    emulator: Emulator, unique: Unique, admin_kinesis: Any
) -> None:
    setup = kinesis_setup(emulator, unique, shards=4)
    quota = KinesisQuota(list_shards=list_shards_with(admin_kinesis))
    records = [{"Data": b"x", "PartitionKey": f"key-{i}"} for i in range(400)]
    with latency_proxy(
        emulator.url, middlewares=[quota], rewrite_token=emulator.rewrite_token
    ) as proxy:
        answer = _role_client(setup.clients, proxy.url).put_records(
            StreamARN=setup.stream.arn, Records=records
        )
    assert answer["FailedRecordCount"] == 0
    # Where the quota charged each record is where the emulator wrote it.
    assert quota.stats()["per_shard"] == dict(Counter(r["ShardId"] for r in answer["Records"]))
    expected = int(hashlib.md5(b"key-0").hexdigest(), 16)
    assert hash_key({"PartitionKey": "key-0"}) == expected
    data = base64.b64encode(b"abcde").decode()
    assert record_size({"Data": data, "PartitionKey": "pk"}) == 5 + 2


def test_the_sink_retries_throttled_records_until_every_line_arrives_once(
    emulator: Emulator, unique: Unique, admin_kinesis: Any
) -> None:
    """A quota far below what the sink's pacer assumes (another writer, or a smaller shard):
    Kinesis-shaped throttles come back, the sink re-sends only those, nothing is lost."""
    setup = kinesis_setup(emulator, unique, shards=1, max_in_flight_calls=4)
    quota = KinesisQuota(list_shards=list_shards_with(admin_kinesis), records_per_second=200)
    lines = sample_lines(900, size=40)
    with (
        latency_proxy(
            emulator.url, middlewares=[quota], rewrite_token=emulator.rewrite_token
        ) as proxy,
        ThreadPoolExecutor(8) as pool,
    ):
        via = AwsClients(setup.clients.credentials, AwsTarget(endpoint_url=proxy.url))
        sink = KinesisSink(setup.endpoint, via, hostname="node-1", io_executor=pool)
        deliver(sink, make_chunks(lines, 300))
    assert Counter(lines_of(read_stream(emulator, setup.stream))) == Counter(lines)
    stats = quota.stats()
    assert stats["records"] == 900
    assert stats["throttled"] >= 300  # the first 500-record call met a 200-record bucket
    assert sink.stats.throttled == stats["throttled"] == sink.stats.retried_records
