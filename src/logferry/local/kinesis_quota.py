"""Real Kinesis per-shard write quotas for the latency proxy (moto never throttles).

A `latency_proxy` middleware: every record of a PutRecords call is routed to its shard the way
Kinesis does it (the 128-bit hash key is the record's `ExplicitHashKey`, else MD5 of its
`PartitionKey`, looked up in the stream's shard hash ranges) and charged to that shard's quota:
1,000 records and 1 MiB (data + partition key) per second. A token bucket per shard holds at most
one second's quota (`burst_seconds`), refilled continuously, so a shard takes a whole second's
worth at once and then the rate, never more. Records over quota are answered with the real
per-record `ProvisionedThroughputExceededException`; only the admitted records are forwarded
(the body is rewritten, hence the emulator's `rewrite_token`), and the emulator's answers are
merged back at their positions. A PutRecord over quota is answered with the whole-call 400.

Shard ranges come from `shards` (stream name → ListShards entries) or, once per stream, from
`list_shards` (a callable doing ListShards, e.g. `emulator_list_shards(emulator)`); they are not
refreshed, so reshard a stream only before the proxy first sees it.

    python -m logferry.local.kinesis_quota --upstream URL --rewrite-token T --shards-file F.json \
        [--kinesis-delay-ms 30 --kinesis-jitter-ms 3]      # prints its URL on the first line
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from logferry.local.latency_proxy import (
    Forward,
    LatencyProxy,
    LinkProfile,
    ProxyConfig,
    ProxyRequest,
    ProxyResponse,
)

SHARD_RECORDS_PER_SECOND = 1_000
SHARD_BYTES_PER_SECOND = 1024 * 1024
THROTTLED = "ProvisionedThroughputExceededException"
_JSON = {"content-type": "application/x-amz-json-1.1"}

ListShards = Callable[[str], list[dict[str, Any]]]
"""Stream ARN or name → its ListShards entries (all pages)."""


@dataclass
class _Bucket:
    """One shard's quota: tokens for records and bytes, at most `burst` seconds' worth."""

    records: float
    bytes: float
    at: float

    def admit(self, size: int, now: float, limits: tuple[int, int], burst: float) -> bool:
        elapsed = max(0.0, now - self.at)
        self.at = now
        self.records = min(limits[0] * burst, self.records + elapsed * limits[0])
        self.bytes = min(limits[1] * burst, self.bytes + elapsed * limits[1])
        if self.records >= 1 and self.bytes >= size:
            self.records -= 1
            self.bytes -= size
            return True
        return False


@dataclass
class _Stream:
    starts: list[int]
    shards: list[tuple[str, int, int]]  # (shard id, start, end) of open shards, by start

    def shard_for(self, key: int) -> str | None:
        i = bisect.bisect_right(self.starts, key) - 1
        if i >= 0 and self.shards[i][1] <= key <= self.shards[i][2]:
            return self.shards[i][0]
        return None


@dataclass
class QuotaStats:
    calls: int = 0
    records: int = 0
    """Records admitted (forwarded)."""
    throttled: int = 0
    """Records answered ProvisionedThroughputExceededException by the quota."""
    per_shard: dict[str, int] = field(default_factory=dict)
    """Records admitted per shard id."""


def stream_name(ref: str) -> str:
    """The stream's name from a StreamARN or StreamName."""
    return ref.rsplit("stream/", 1)[-1] if ref.startswith("arn:") else ref


def hash_key(record: Mapping[str, Any]) -> int:
    explicit = record.get("ExplicitHashKey")
    if explicit:
        return int(explicit)
    return int.from_bytes(hashlib.md5(record["PartitionKey"].encode()).digest(), "big")


def record_size(record: Mapping[str, Any]) -> int:
    """Bytes Kinesis meters: decoded data plus the partition key (UTF-8)."""
    data: str = record.get("Data", "")
    decoded = len(data) * 3 // 4 - (data[-2:].count("=") if data else 0)
    return decoded + len(record["PartitionKey"].encode())


class KinesisQuota:
    """The middleware (see the module docstring). Thread-safe stats; one event loop calls it."""

    def __init__(
        self,
        *,
        shards: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        list_shards: ListShards | None = None,
        records_per_second: int = SHARD_RECORDS_PER_SECOND,
        bytes_per_second: int = SHARD_BYTES_PER_SECOND,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if shards is None and list_shards is None:
            raise ValueError(
                "KinesisQuota needs `shards` (stream → ListShards entries) or "
                "`list_shards` (a callable doing ListShards)"
            )
        self._streams: dict[str, _Stream] = {
            name: _parse(entries) for name, entries in (shards or {}).items()
        }
        self._list_shards = list_shards
        self._limits = (records_per_second, bytes_per_second)
        self._burst = burst_seconds
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()
        self._stats = QuotaStats()
        self._throttle_times: deque[float] = deque()

    # ------------------------------------------------------------------ figures

    def stats(self) -> dict[str, Any]:
        with self._lock:
            s = self._stats
            return {
                "calls": s.calls,
                "records": s.records,
                "throttled": s.throttled,
                "per_shard": dict(s.per_shard),
            }

    def throttled_since(self, since: float) -> int:
        """Records throttled at or after `since` (this middleware's clock)."""
        with self._lock:
            times = list(self._throttle_times)
        return len(times) - bisect.bisect_left(times, since)

    # ------------------------------------------------------------------ the middleware

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        if request.service != "kinesis":
            return await forward()
        operation = request.target.rsplit(".", 1)[-1]
        if operation == "PutRecords":
            return await self._put_records(request, forward)
        if operation == "PutRecord":
            return await self._put_record(request, forward)
        return await forward()

    async def _stream(self, ref: str) -> _Stream | None:
        name = stream_name(ref)
        found = self._streams.get(name)
        if found is None and self._list_shards is not None:
            entries = await asyncio.to_thread(self._list_shards, ref)
            found = self._streams[name] = _parse(entries)
        return found

    def _admit(self, name: str, stream: _Stream, record: Mapping[str, Any], now: float) -> bool:
        shard = stream.shard_for(hash_key(record))
        if shard is None:
            return True  # outside every open shard: let the emulator answer it
        bucket = self._buckets.get((name, shard))
        if bucket is None:
            bucket = self._buckets[(name, shard)] = _Bucket(
                self._limits[0] * self._burst, self._limits[1] * self._burst, now
            )
        admitted = bucket.admit(record_size(record), now, self._limits, self._burst)
        with self._lock:
            if admitted:
                self._stats.records += 1
                self._stats.per_shard[shard] = self._stats.per_shard.get(shard, 0) + 1
            else:
                self._stats.throttled += 1
                self._throttle_times.append(now)
        return admitted

    async def _put_records(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        body = json.loads(request.body)
        ref = body.get("StreamARN") or body.get("StreamName") or ""
        stream = await self._stream(ref)
        with self._lock:
            self._stats.calls += 1
        if stream is None:
            return await forward()
        name = stream_name(ref)
        now = self._clock()
        records = body.get("Records", [])
        admitted = [self._admit(name, stream, r, now) for r in records]
        if all(admitted):
            return await forward()
        kept = [r for r, ok in zip(records, admitted, strict=True) if ok]
        upstream: list[dict[str, Any]] = []
        failed = 0
        if kept:
            answer = await forward(json.dumps({**body, "Records": kept}).encode())
            if answer.status != 200:
                return answer  # the whole call failed upstream: pass that on
            parsed = json.loads(answer.body)
            upstream = parsed.get("Records", [])
            failed = int(parsed.get("FailedRecordCount", 0))
            headers = answer.headers
        else:
            headers = dict(_JSON)
        results: list[dict[str, Any]] = []
        answers = iter(upstream)
        for record, ok in zip(records, admitted, strict=True):
            if ok:
                results.append(next(answers))
                continue
            failed += 1
            shard = stream.shard_for(hash_key(record))
            results.append(
                {
                    "ErrorCode": THROTTLED,
                    "ErrorMessage": f"Rate exceeded for shard {shard} in stream {name}.",
                }
            )
        out = json.dumps({"FailedRecordCount": failed, "Records": results}).encode()
        return ProxyResponse(200, _content_headers(headers), out)

    async def _put_record(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        body = json.loads(request.body)
        ref = body.get("StreamARN") or body.get("StreamName") or ""
        stream = await self._stream(ref)
        with self._lock:
            self._stats.calls += 1
        if stream is None or self._admit(stream_name(ref), stream, body, self._clock()):
            return await forward()
        message = {"__type": THROTTLED, "message": "Rate exceeded for shard."}
        return ProxyResponse(400, dict(_JSON), json.dumps(message).encode())


def _content_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's headers minus those that describe its (replaced) body."""
    drop = {"content-length", "content-md5", "x-amz-crc32"}
    out = {k: v for k, v in headers.items() if k.lower() not in drop}
    if not any(k.lower() == "content-type" for k in out):
        out.update(_JSON)
    return out


def _parse(entries: Sequence[Mapping[str, Any]]) -> _Stream:
    shards = sorted(
        (
            (
                e["ShardId"],
                int(e["HashKeyRange"]["StartingHashKey"]),
                int(e["HashKeyRange"]["EndingHashKey"]),
            )
            for e in entries
            if "EndingSequenceNumber" not in e.get("SequenceNumberRange", {})
        ),
        key=lambda s: s[1],
    )
    return _Stream([s[1] for s in shards], shards)


def list_shards_with(client: Any) -> ListShards:
    """A `list_shards` source from a boto3 Kinesis client (e.g. the emulator's admin)."""

    def source(ref: str) -> list[dict[str, Any]]:
        key = "StreamARN" if ref.startswith("arn:") else "StreamName"
        entries: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {key: ref}
        while True:
            page = client.list_shards(**kwargs)
            entries += page.get("Shards", [])
            token = page.get("NextToken")
            if not token:
                return entries
            kwargs = {"NextToken": token}

    return source


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m logferry.local.kinesis_quota",
        description="The latency proxy with per-shard Kinesis quotas. Prints its URL on the "
        "first line of stdout, then (on stdin EOF or SIGTERM) nothing; quota stats go to "
        "the file given by --stats-file when stdin closes.",
    )
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--rewrite-token", required=True, help="the emulator's rewrite_token")
    parser.add_argument(
        "--shards-file", required=True, help="JSON: stream name → ListShards entries"
    )
    parser.add_argument("--kinesis-delay-ms", type=float, default=0.0)
    parser.add_argument("--kinesis-jitter-ms", type=float, default=0.0)
    parser.add_argument("--stats-file", default=None)
    parser.add_argument("--no-quota", action="store_true", help="latency only")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with open(args.shards_file) as f:
        shards = json.load(f)
    quota = KinesisQuota(shards=shards)
    config = ProxyConfig(
        services={
            "kinesis": LinkProfile(delay_ms=args.kinesis_delay_ms, jitter_ms=args.kinesis_jitter_ms)
        }
    )
    middlewares = [] if args.no_quota else [quota]
    proxy = LatencyProxy(
        args.upstream, config, middlewares, rewrite_token=args.rewrite_token
    ).start()
    print(proxy.url, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        if args.stats_file:
            with open(args.stats_file, "w") as f:
                json.dump({"quota": quota.stats(), "proxy": proxy.stats()}, f)
        proxy.stop()


if __name__ == "__main__":
    main()
