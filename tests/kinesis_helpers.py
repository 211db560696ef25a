"""Kinesis test helpers: guide-exact roles, reading a whole stream as admin, injected faults.

Reusable by later service tests:

- `make_stream` / `kinesis_role` / `role_clients`: a stream and a role in the customer account
  made as Fastly's guide says (trust policy with ExternalId, the exact Kinesis permission policy
  as a managed policy), assumed by the vendor through STS like the service will.
- `read_stream`: every record of every shard (open and closed), read with admin credentials.
- `PutRecordsFaults`: makes chosen records of each PutRecords call fail *before* they are written
  (they are cut out of the request and answered with the real per-record error shape), so
  "exactly once" can be proven, and counts what every call carried.
- `FakeClock`: monotonic clock + sleep that only advance together, for tests without real waits.
- `deliver(sink, chunks)`: the blocking test-only driver over the sink's `feed`/`pump` (the
  service's worker pumps without blocking); bench/kinesis_sink_bench.py uses it too.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.client import BaseClient
from botocore.credentials import Credentials

from logferry.aws.clients import AwsClients
from logferry.aws.names import StreamArn, parse_stream_arn
from logferry.aws.policies import kinesis_permission_policy, trust_policy
from logferry.errors import AwsErrorInfo, LogferryError, SetupError, TransientError
from logferry.local.emulator import Emulator
from logferry.sinks.backoff import wait
from logferry.sinks.kinesis import KinesisSink
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.spool.chunk import Chunk

REGION = "us-east-1"


class FakeClock:
    """`now()` moves only when `sleep()` is called (or `advance()`); sleeps are recorded."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now_value = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now_value

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now_value += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now_value += seconds


def make_stream(emulator: Emulator, name: str, shards: int = 1) -> StreamArn:
    kinesis = emulator.client("kinesis", region=REGION)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    return parse_stream_arn(arn)


def kinesis_role(
    emulator: Emulator,
    role_name: str,
    stream: StreamArn,
    external_id: str,
    *,
    actions: list[str] | None = None,
) -> str:
    """A customer role trusting the vendor with `external_id` and holding the guide's Kinesis
    permission policy (or the same policy with other `actions`), attached as a managed policy as
    the guide's CLI steps do."""
    iam = emulator.client("iam")
    arn = iam.create_role(
        RoleName=role_name,
        AssumeRolePolicyDocument=json.dumps(
            trust_policy("kinesis", external_id, emulator.vendor.account_id)
        ),
    )["Role"]["Arn"]
    document: dict[str, Any] = dict(kinesis_permission_policy(stream))
    if actions is not None:
        document = json.loads(json.dumps(document))
        document["Statement"]["Action"] = actions
    policy_arn = iam.create_policy(
        PolicyName=f"{role_name}-policy", PolicyDocument=json.dumps(document)
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role_name, PolicyArn=policy_arn)
    return str(arn)


def role_clients(emulator: Emulator, role_arn: str, external_id: str) -> AwsClients:
    """AwsClients acting as the role, assumed by the vendor user with the ExternalId."""
    sts = emulator.client("sts", emulator.vendor, region=REGION)
    creds = sts.assume_role(
        RoleArn=role_arn, RoleSessionName="logferry-test", ExternalId=external_id
    )["Credentials"]
    return AwsClients(
        Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]),
        emulator.target,
    )


@dataclass
class KinesisSetup:
    stream: StreamArn
    role_arn: str
    external_id: str
    clients: AwsClients
    endpoint: KinesisEndpoint


def kinesis_setup(
    emulator: Emulator,
    unique: Callable[[str], str],
    *,
    shards: int = 1,
    actions: list[str] | None = None,
    **endpoint_fields: Any,
) -> KinesisSetup:
    """Stream + guide role + assumed clients + an endpoint pointing at them."""
    stream = make_stream(emulator, unique("stream"), shards)
    external_id = unique("cust")
    # actions=None: exactly the guide's permission policy document.
    role_arn = kinesis_role(emulator, unique("role"), stream, external_id, actions=actions)
    clients = role_clients(emulator, role_arn, external_id)
    endpoint = KinesisEndpoint(
        name=endpoint_fields.pop("name", unique("ep")),
        topic=stream.name,
        region=stream.region,
        iam_role=role_arn,
        **endpoint_fields,
    )
    return KinesisSetup(stream, role_arn, external_id, clients, endpoint)


def read_stream(
    emulator: Emulator, stream: StreamArn, *, open_only: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Every record of every shard, in shard order, read as the admin.

    moto 5.2.5 departs from AWS on resharding: SplitShard *moves* a parent's records into its
    children and MergeShards *copies* both parents' records into the new shard (AWS leaves them
    in the closed parents). After a reshard, read the content with `open_only=True` (each record
    then appears exactly once) and tell where records were written from the PutRecords answers
    (`PutRecordsFaults` keeps them in `CallLog.landed`).
    """
    kinesis = emulator.client("kinesis", region=stream.region)
    out: dict[str, list[dict[str, Any]]] = {}
    token: str | None = None
    shards: list[dict[str, Any]] = []
    while True:
        page = (
            kinesis.list_shards(StreamARN=stream.arn, NextToken=token)
            if token
            else kinesis.list_shards(StreamARN=stream.arn)
        )
        shards += page["Shards"]
        token = page.get("NextToken")
        if not token:
            break
    for shard in shards:
        if open_only and "EndingSequenceNumber" in shard["SequenceNumberRange"]:
            continue
        iterator = kinesis.get_shard_iterator(
            StreamARN=stream.arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000, StreamARN=stream.arn)
            records += page["Records"]
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        out[shard["ShardId"]] = records
    return out


def open_shard_ids(emulator: Emulator, stream: StreamArn) -> set[str]:
    shards = emulator.client("kinesis", region=stream.region).list_shards(StreamARN=stream.arn)
    return {
        s["ShardId"]
        for s in shards["Shards"]
        if "EndingSequenceNumber" not in s["SequenceNumberRange"]
    }


@dataclass
class CallLog:
    presented: list[str] = field(default_factory=list)
    """Partition keys the sink put in the request."""
    forwarded: list[str] = field(default_factory=list)
    """Partition keys that actually reached the emulator (were written)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Partition key → synthetic error code given for it."""
    landed: list[str] = field(default_factory=list)
    """ShardId the emulator wrote each forwarded record to (same order as `forwarded`)."""


class PutRecordsFaults:
    """Fail chosen records of each PutRecords call before they reach the emulator.

    `before-parameter-build` removes them from the request (so they are never written) and
    `after-call` puts the real per-record failure shape (`ErrorCode` / `ErrorMessage`) back at
    their positions and raises `FailedRecordCount`. A call whose every record fails never goes out:
    `before-call` answers it directly. `calls` keeps what each call carried.
    """

    def __init__(
        self,
        client: BaseClient,
        *,
        throttle: float = 0.0,
        internal: float = 0.0,
        seed: int = 7,
        on_call: Callable[[int], None] | None = None,
        error_codes: Callable[[int, dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.throttle = throttle
        self.internal = internal
        self.rng = random.Random(seed)
        self.on_call = on_call
        self.error_codes = error_codes
        self.calls: list[CallLog] = []
        self._client = client
        events = client.meta.events
        events.register("before-parameter-build.kinesis.PutRecords", self._before_build)
        events.register("before-call.kinesis.PutRecords", self._before_call)
        events.register("after-call.kinesis.PutRecords", self._after_call)

    def remove(self) -> None:
        events = self._client.meta.events
        events.unregister("before-parameter-build.kinesis.PutRecords", self._before_build)
        events.unregister("before-call.kinesis.PutRecords", self._before_call)
        events.unregister("after-call.kinesis.PutRecords", self._after_call)

    def _code_for(self, call: int, record: dict[str, Any]) -> str | None:
        if self.error_codes is not None:
            return self.error_codes(call, record)
        roll = self.rng.random()
        if roll < self.throttle:
            return "ProvisionedThroughputExceededException"
        if roll < self.throttle + self.internal:
            return "InternalFailure"
        return None

    def _before_build(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        call = len(self.calls)
        log = CallLog()
        self.calls.append(log)
        kept: list[dict[str, Any]] = []
        failures: list[tuple[int, str]] = []
        for index, record in enumerate(params["Records"]):
            log.presented.append(record["PartitionKey"])
            code = self._code_for(call, record)
            if code is None:
                kept.append(record)
                log.forwarded.append(record["PartitionKey"])
            else:
                failures.append((index, code))
                log.failed[record["PartitionKey"]] = code
        context["faults"] = (failures, len(params["Records"]))
        if kept:
            params["Records"] = kept
        if self.on_call is not None:
            self.on_call(call)

    def _before_call(self, context: dict[str, Any], **_: Any) -> Any:
        failures, total = context.get("faults", ([], 0))
        if total and len(failures) == total:
            response = AWSResponse("http://faults.invalid", 200, {}, None)
            return response, {"FailedRecordCount": 0, "Records": []}
        return None

    def _after_call(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "faults" in context and self.calls:
            log = self.calls[-1]
            log.landed = [r.get("ShardId", "") for r in parsed.get("Records", [])]
        failures, _ = context.get("faults", ([], 0))
        if not failures or "Records" not in parsed:
            return
        results = list(parsed["Records"])
        for index, code in failures:
            results.insert(index, {"ErrorCode": code, "ErrorMessage": f"injected {code}"})
        parsed["Records"] = results
        parsed["FailedRecordCount"] = parsed.get("FailedRecordCount", 0) + len(failures)


def lines_of(records: dict[str, list[dict[str, Any]]], *, packed: bool = False) -> list[bytes]:
    """The lines held by records (packed records hold several newline-terminated lines)."""
    out: list[bytes] = []
    for shard_records in records.values():
        for record in shard_records:
            data = record["Data"]
            out.extend(data.split(b"\n")[:-1] if packed else [data])
    return out


def make_chunks(
    lines: list[bytes], per_chunk: int, *, start: int = 0, at: float = 1.7e9
) -> list[Chunk]:
    """Chunks as the spool hands them out: consecutive offsets, newline-terminated lines."""
    chunks: list[Chunk] = []
    offset = start
    for i in range(0, len(lines), per_chunk):
        group = lines[i : i + per_chunk]
        data = b"".join(line + b"\n" for line in group)
        chunks.append(Chunk(offset, offset + len(data), at + i, data, len(group)))
        offset += len(data)
    return chunks


def sample_lines(count: int, *, seed: int = 1, size: int = 120) -> list[bytes]:
    """Distinct log-like lines of about `size` bytes (a few exact repeats on purpose)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i and i % 97 == 0:
            out.append(out[i - 1])  # duplicates must arrive as often as they were sent
            continue
        body = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 /-") for _ in range(size))
        out.append(f"{i:07d} GET /{body}".encode())
    return out


# --- a blocking driver over the Sink interface (moved here from the sink: tests and bench only) ---

_WAIT_SLICE = 0.5


class DeliveryInterrupted(LogferryError):
    """`stop` was set while `deliver` waited (retry backoff or pacing). Nothing is lost: the
    caller keeps the chunks; the first `completed_chunks` of them were fully accepted."""

    def __init__(self, message: str, *, completed_chunks: int, pending_records: int) -> None:
        super().__init__(message, fix="None needed: deliver the remaining chunks again later.")
        self.completed_chunks = completed_chunks
        self.pending_records = pending_records


class KinesisSetupError(SetupError):
    """A SetupError raised by `deliver`, with how far delivery got (`completed_chunks`)."""

    def __init__(
        self, message: str, info: AwsErrorInfo, *, fix: str | None, completed_chunks: int
    ) -> None:
        super().__init__(message, info, fix=fix)
        self.completed_chunks = completed_chunks


def deliver(sink: KinesisSink, chunks: list[Chunk]) -> None:
    """Feed `chunks` and return once Kinesis has accepted every line: the sink's `feed`/`pump`
    driven in a loop on this thread, waiting with the sink's own clock, sleep and stop (the
    service's worker pumps instead and never blocks).

    Raises `KinesisSetupError` (a SetupError) when the customer's setup prevents delivery and
    `DeliveryInterrupted` when `stop` is set during a wait; in both cases the records stay
    queued, the exception's `completed_chunks` says how many leading chunks were fully
    accepted, and calling `deliver` again with the same chunks carries on (lines already
    fed are not fed twice).
    """
    if not chunks:
        return
    for chunk in chunks:
        sink.feed(chunk)
    failures = 0
    while True:
        try:
            delay = sink.pump(caught_up=True)
            failures = 0
        except SetupError as exc:
            raise KinesisSetupError(
                exc.message, exc.info, fix=exc.fix, completed_chunks=_completed(sink, chunks)
            ) from exc
        except TransientError:
            failures += 1
            delay = sink._call_backoff.delay(failures - 1)
        if delay is None:
            return
        if sink._in_flight and not failures:
            # Calls on the I/O pool: wait for an answer (or the pacing delay).
            if sink._stop is not None and sink._stop.is_set():
                raise _interrupted(sink, chunks)
            sink.answered.wait(delay)
            continue
        _wait(sink, delay, chunks, "backoff_seconds" if failures else "paced_seconds")


def _completed(sink: KinesisSink, chunks: list[Chunk]) -> int:
    durable = sink.durable
    return sum(1 for c in chunks if c.end <= durable)


def _wait(sink: KinesisSink, seconds: float, chunks: list[Chunk], counter: str) -> None:
    """Sleep in slices, watching `stop`; raise DeliveryInterrupted when it is set."""
    if seconds <= 0:
        return
    start = sink._clock()
    remaining = seconds
    try:
        while remaining > 0:
            step = min(remaining, _WAIT_SLICE)
            if not wait(step, stop=sink._stop, sleep=sink._sleep):
                raise _interrupted(sink, chunks)
            remaining -= step
    finally:
        elapsed = max(0.0, sink._clock() - start)
        setattr(sink.stats, counter, getattr(sink.stats, counter) + elapsed)


def _interrupted(sink: KinesisSink, chunks: list[Chunk]) -> DeliveryInterrupted:
    done = _completed(sink, chunks)
    pending = sink._progress.outstanding
    return DeliveryInterrupted(
        f"Delivery to {sink.stream_arn} stopped while waiting (retry backoff or shard "
        f"pacing): {pending} records not yet accepted, {done} leading chunks complete.",
        completed_chunks=done,
        pending_records=pending,
    )
