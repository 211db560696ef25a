"""The Kinesis endpoint as users configure it (Fastly's field names), validated up front.

Fields are Fastly's (`name`, `topic`, `region`, `iam_role`, `format`) plus three of ours:
`packing` (several lines per record, off by default as at Fastly), `oversize` (what happens to a
line larger than the stream's record size limit; never silent, always counted) and
`max_in_flight_calls` (PutRecords calls kept in flight at once, which is what reaches the
stream's quota at real network latency).

The stream ARN is not a field: it is derived from the role's account and partition, the region and
the topic, because the guide's role lives in the account that owns the stream. Validating here,
before any AWS call, turns AWS's vague errors into messages that name the field and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from logferry.aws.names import (
    RoleArn,
    StreamArn,
    parse_role_arn,
    partition_for_region,
    validate_region,
    validate_stream_name,
)
from logferry.errors import InputError
from logferry.sinks.endpoint_base import EndpointBase
from logferry.sinks.endpoint_base import as_value_error as _as_value_error
from logferry.sinks.framing import DEFAULT_MESSAGE_TYPE, MessageType

OversizePolicy = Literal["split", "truncate"]
"""What a line larger than one record becomes (see `KinesisEndpoint.oversize`)."""


class KinesisEndpoint(EndpointBase):
    """One Kinesis logging endpoint: where lines go, as whom, and in which shape."""

    topic: str
    """The Kinesis data stream's name (Fastly calls it `topic`)."""
    region: str
    """The stream's region, e.g. us-east-1."""
    format: MessageType = DEFAULT_MESSAGE_TYPE
    """Per-line framing (`classic`, `loggly`, `logplex`, `blank`), as `message_type` for S3."""
    packing: bool = False
    """False: one line per record, the line without its newline (Fastly's behaviour).
    True: consecutive lines, each newline-terminated, packed into records up to the size limit
    and at most 1 MB, one second of a shard's write quota (far fewer records and PutRecords
    calls; consumers split records on newlines)."""
    max_in_flight_calls: int | None = Field(None, ge=1, le=64)
    """PutRecords calls this endpoint keeps in flight at once (1-64). Unset (the default): four
    per open shard, at least 8 and at most 64, so that the shared pacer (the stream's quota),
    not the number of calls, is the brake at any round trip up to about a second. One call
    carries at most 500 records: at a 100 ms round trip 8 calls move at most ~40,000
    records/s, less than a 64-shard stream takes. A crash replays at most
    `2 × max_in_flight_calls × 500` records (unset: two seconds of the stream's quota, at
    least 8,000; see `KinesisSink`), and never more than a second's quota per shard in
    flight. 1 = one call at a time."""
    oversize: OversizePolicy = "split"
    """A line over the record size limit (1 MiB including the partition key, or the stream's
    MaxRecordSizeInKiB when DescribeStreamSummary is allowed) is never dropped silently:

    - `split` (default, nothing lost): the line is cut into consecutive pieces, each one record on
      the same shard; piece i of n has partition key `<name>:<offset>:<i>/<n>`, so a consumer can
      reassemble them; counted in `oversize_lines`.
    - `truncate`: one record with the first bytes that fit; its partition key is
      `<name>:<offset>:truncated-from-<original length>`; counted in `oversize_lines` and
      `truncated_bytes`.
    """

    @classmethod
    def destination_of(cls, body: Mapping[str, Any]) -> str:
        return f"{body.get('topic')} ({body.get('region', '-')})"

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if value.startswith("arn:"):
            raise ValueError(
                f"{value!r} is an ARN; topic is the stream's name. Use the part after "
                "'stream/' (the account and region come from iam_role and region)."
            )
        try:
            return validate_stream_name(value)
        except InputError as exc:
            raise _as_value_error(exc) from None

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        try:
            return validate_region(value)
        except InputError as exc:
            raise _as_value_error(exc) from None

    @model_validator(mode="after")
    def _check_partition(self) -> KinesisEndpoint:
        role = parse_role_arn(self.iam_role)
        expected = partition_for_region(self.region)
        if role.partition != expected:
            raise ValueError(
                f"iam_role is in partition {role.partition} but region {self.region} belongs to "
                f"{expected}; the role must live in the account that owns the stream. Use a role "
                f"ARN starting with arn:{expected}:iam:: or a region of {role.partition}."
            )
        return self

    def role(self) -> RoleArn:
        return parse_role_arn(self.iam_role)

    def stream(self) -> StreamArn:
        """The stream as an ARN object: partition and account of the role, region, topic."""
        role = self.role()
        return StreamArn(role.partition, self.region, role.account_id, self.topic)

    def stream_arn(self) -> str:
        """`arn:PARTITION:kinesis:REGION:ACCOUNT:stream/TOPIC` (ACCOUNT = iam_role's account)."""
        return self.stream().arn
