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
from logferry.local.emulator import Emulator
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
