"""OTLP logs → JSON lines: decode an ExportLogsServiceRequest and turn each LogRecord into one line.

Decoding the request within its bounds (content types, protobuf / OTLP/JSON, message and
nesting limits) and encoding the answers is `ingest/otlp_wire.py`, re-exported here; this module
turns the decoded records into lines.

One line per LogRecord, keys in this order, empty optional ones left out:

    {"time": "2026-11-30T04:48:54.123456789Z", "severity_text": "INFO", "severity_number": 9,
     "body": <AnyValue as JSON>, "attributes": {...}, "resource": {...},
     "scope": {"name": ..., "version": ...}, "trace_id": "<32 hex>", "span_id": "<16 hex>",
     "event_name": ..., "flags": 1, "dropped_attributes_count": 2}

`time` is RFC 3339 UTC with nanoseconds: the record's time, else its observed time, else the time
the request arrived (the spec asks the receiver to fill in the observed time). AnyValue: strings,
bools, ints and doubles as JSON scalars (non-finite doubles as "NaN"/"Infinity"/"-Infinity", as
protobuf's JSON mapping writes them), arrays as lists, kvlists as objects, bytes as base64, an
unset value as null. A record that cannot become a valid line (a trace or span id of the wrong
length, a profile-only `string_value_strindex`, a line over `max_line_bytes`, which could only be
truncated into invalid JSON) is rejected alone and reported in the response's partial_success.

Bounded cost (docs/security.md): the resource's and scope's attributes are copied into every
line, so a small request can ask for a huge output. Before parsing, the number of messages the
parser would build is bounded (`MAX_MESSAGES`: a protobuf parser spends 50-130 bytes per
message, so a body of empty messages would cost ~60x its size; OTLP/JSON: `MAX_JSON_CONTAINERS`,
for the CPU of protobuf's pure-Python JSON parser); after parsing, the record count
(`max_records`); while converting, the output is counted and conversion stops at
`max_output_bytes` (OutputTooLarge, HTTP 413) — the shared resource/scope JSON is serialised once
and spliced into each line, so conversion work is linear in body + output. AnyValue nesting
deeper than `MAX_ANYVALUE_DEPTH` is refused (TooDeep, HTTP 400), never a RecursionError.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from logferry.errors import LogferryError
from logferry.ingest.otlp_wire import (
    JSON_TYPE,
    MAX_ANYVALUE_DEPTH,
    MAX_JSON_CONTAINERS,
    MAX_JSON_DEPTH,
    MAX_MESSAGES,
    PROTOBUF_TYPE,
    BadOtlpBody,
    Encoding,
    TooBig,
    TooDeep,
    UnsupportedContentType,
    check_protobuf_messages,
    decode_request,
    encode,
    encoding_of,
    json_depth_over,
    status_message,
)

__all__ = [
    "JSON_TYPE",
    "MAX_ANYVALUE_DEPTH",
    "MAX_JSON_CONTAINERS",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGES",
    "PROTOBUF_TYPE",
    "BadOtlpBody",
    "Converted",
    "Encoding",
    "TooBig",
    "TooDeep",
    "Unconvertible",
    "UnsupportedContentType",
    "any_value",
    "check_protobuf_messages",
    "count_records",
    "decode_request",
    "encode",
    "encoding_of",
    "export_response",
    "json_depth_over",
    "key_values",
    "record_document",
    "rfc3339_nanos",
    "status_message",
    "to_lines",
]

_MAX_ERROR_EXAMPLES = 3


# -- conversion ------------------------------------------------------------------------------------


class Unconvertible(LogferryError, ValueError):
    """One record cannot become a line; it is rejected alone (partial success)."""


@dataclass(slots=True)
class Converted:
    """Lines ready for `normalize` plus what was dropped, for partial_success and the metrics."""

    lines: list[bytes] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)

    def error_message(self) -> str:
        """partial_success.error_message: how many were dropped and why (first few reasons)."""
        if not self.rejected:
            return ""
        shown = "; ".join(self.reasons[:_MAX_ERROR_EXAMPLES])
        more = len(self.reasons) - _MAX_ERROR_EXAMPLES
        tail = f"; and {more} more" if more > 0 else ""
        return f"{self.rejected} log record(s) rejected: {shown}{tail}"


def rfc3339_nanos(unix_nanos: int) -> str:
    """`2026-11-30T04:48:54.123456789Z`: UTC, always nine fractional digits."""
    seconds, nanos = divmod(unix_nanos, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def any_value(value: AnyValue, depth: int = 1) -> Any:
    """An OTLP AnyValue as the JSON value a reader expects (TooDeep past MAX_ANYVALUE_DEPTH)."""
    if depth > MAX_ANYVALUE_DEPTH:
        raise TooDeep("an AnyValue")
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        number = value.double_value
        if math.isfinite(number):
            return number
        return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind == "array_value":
        return [any_value(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return key_values(value.kvlist_value.values, depth + 1)
    raise Unconvertible(f"AnyValue {kind} is not supported in logs")


def key_values(pairs: Any, depth: int = 1) -> dict[str, Any]:
    """A repeated KeyValue as an object (a repeated key keeps its last value)."""
    out: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        out[pair.key] = any_value(pair.value, depth)
    return out


def _id_hex(raw: bytes, name: str, size: int) -> str | None:
    if not raw:
        return None
    if len(raw) != size:
        raise Unconvertible(f"{name} must be {size} bytes, not {len(raw)}")
    return binascii.hexlify(raw).decode("ascii")


def record_document(
    record: LogRecord,
    *,
    resource: dict[str, Any],
    scope: dict[str, Any],
    received_nanos: int,
) -> dict[str, Any]:
    """One LogRecord (with its resource's and scope's data) as the line's JSON object."""
    doc = _record_head(record, received_nanos)
    if resource:
        doc["resource"] = resource
    if scope:
        doc["scope"] = scope
    doc.update(_record_tail(record))
    return doc


def _record_head(record: LogRecord, received_nanos: int) -> dict[str, Any]:
    """The line's keys before `resource` (see the module docstring for the order)."""
    stamp = record.time_unix_nano or record.observed_time_unix_nano or received_nanos
    doc: dict[str, Any] = {
        "time": rfc3339_nanos(stamp),
        "severity_text": record.severity_text,
        "severity_number": int(record.severity_number),
        "body": any_value(record.body) if record.HasField("body") else None,
    }
    attributes = key_values(record.attributes)
    if attributes:
        doc["attributes"] = attributes
    return doc


def _record_tail(record: LogRecord) -> dict[str, Any]:
    """The line's keys after `scope`."""
    doc: dict[str, Any] = {}
    trace_id = _id_hex(record.trace_id, "trace_id", 16)
    if trace_id:
        doc["trace_id"] = trace_id
    span_id = _id_hex(record.span_id, "span_id", 8)
    if span_id:
        doc["span_id"] = span_id
    if record.event_name:
        doc["event_name"] = record.event_name
    if record.flags:
        doc["flags"] = record.flags
    if record.dropped_attributes_count:
        doc["dropped_attributes_count"] = record.dropped_attributes_count
    return doc


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def count_records(request: ExportLogsServiceRequest) -> int:
    """LogRecords in `request` (no record is touched: repeated-field lengths only)."""
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


def to_lines(
    request: ExportLogsServiceRequest,
    *,
    max_line_bytes: int,
    received_nanos: int | None = None,
    max_output_bytes: int | None = None,
    max_records: int | None = None,
) -> Converted:
    """Every LogRecord of `request` as one compact JSON line (UTF-8, no newline inside).

    Raises TooBig before converting when the request holds more than `max_records` records, and
    as soon as the lines built so far (newlines included) pass `max_output_bytes`.
    """
    if max_records is not None and (records := count_records(request)) > max_records:
        raise TooBig(f"the request holds {records} log records; the limit is {max_records}")
    received = time.time_ns() if received_nanos is None else received_nanos
    out = Converted()
    total = 0
    for resource_logs in request.resource_logs:
        try:
            resource = key_values(resource_logs.resource.attributes)
        except Unconvertible as exc:
            dropped = sum(len(s.log_records) for s in resource_logs.scope_logs)
            _reject(out, f"resource attributes: {exc}", dropped)
            continue
        resource_json = b',"resource":' + _dumps(resource) if resource else b""
        for scope_logs in resource_logs.scope_logs:
            scope: dict[str, Any] = {}
            if scope_logs.scope.name:
                scope["name"] = scope_logs.scope.name
            if scope_logs.scope.version:
                scope["version"] = scope_logs.scope.version
            # Serialised once per scope and spliced into each line: the same bytes json.dumps
            # writes for the whole document, without re-encoding the resource per record.
            shared = resource_json + (b',"scope":' + _dumps(scope) if scope else b"")
            for record in scope_logs.log_records:
                try:
                    head = _dumps(_record_head(record, received))
                    tail = _dumps(_record_tail(record))
                except Unconvertible as exc:
                    _reject(out, str(exc))
                    continue
                size = len(head) + len(shared) + len(tail) - (1 if len(tail) > 2 else 2)
                if size > max_line_bytes:
                    _reject(
                        out, f"record is {size} bytes as JSON; the line limit is {max_line_bytes}"
                    )
                    continue
                total += size + 1
                if max_output_bytes is not None and total > max_output_bytes:
                    raise TooBig(
                        f"the request's records make over {max_output_bytes} bytes of JSON lines "
                        "(each line repeats its resource and scope)"
                    )
                if len(tail) > 2:
                    out.lines.append(b"".join((head[:-1], shared, b",", tail[1:])))
                else:
                    out.lines.append(b"".join((head[:-1], shared, b"}")))
    return out


def _reject(out: Converted, reason: str, count: int = 1) -> None:
    out.rejected += count
    if reason not in out.reasons:
        out.reasons.append(reason)


# -- answers ---------------------------------------------------------------------------------------


def export_response(converted: Converted) -> ExportLogsServiceResponse:
    """Full success (empty message) or partial_success with the rejected count and why."""
    response = ExportLogsServiceResponse()
    if converted.rejected:
        response.partial_success.rejected_log_records = converted.rejected
        response.partial_success.error_message = converted.error_message()
    return response
