"""OTLP logs → JSON lines: decode an ExportLogsServiceRequest and turn each LogRecord into one line.

The messages come from `opentelemetry-proto` and JSON bodies are read with protobuf's own
`json_format`, so field names, int64-as-string and enum handling follow the OTLP/JSON mapping
exactly. The one OTLP-specific twist (trace and span ids are hex in OTLP/JSON, not base64 as
protobuf's generic mapping would have it) is applied to the parsed JSON document before
`ParseDict` sees it.

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
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from logferry.errors import InputError

Encoding = Literal["protobuf", "json"]
PROTOBUF_TYPE = "application/x-protobuf"
JSON_TYPE = "application/json"
_MAX_ERROR_EXAMPLES = 3


class UnsupportedContentType(InputError):
    """The body is neither OTLP protobuf nor OTLP JSON: HTTP 415."""

    def __init__(self, content_type: str) -> None:
        super().__init__(
            "Content-Type",
            f"Content-Type {content_type or '(none)'!r} is not an OTLP encoding",
            fix=f"send {PROTOBUF_TYPE} or {JSON_TYPE}",
        )


class BadOtlpBody(InputError):
    """The body does not decode as an ExportLogsServiceRequest: HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(
            "body",
            message,
            fix="send an ExportLogsServiceRequest (OTLP/HTTP protobuf or JSON encoding)",
        )


def encoding_of(content_type: str) -> Encoding:
    """The OTLP encoding a Content-Type names (parameters such as charset are ignored)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == PROTOBUF_TYPE:
        return "protobuf"
    if media == JSON_TYPE:
        return "json"
    raise UnsupportedContentType(media)


def decode_request(body: bytes, encoding: Encoding) -> ExportLogsServiceRequest:
    """Parse a request body; raises BadOtlpBody with the decoder's reason."""
    request = ExportLogsServiceRequest()
    if encoding == "protobuf":
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise BadOtlpBody(f"the protobuf body does not decode: {exc or 'malformed'}") from None
        return request
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadOtlpBody(f"the JSON body does not parse: {exc}") from None
    if not isinstance(document, dict):
        raise BadOtlpBody("the JSON body must be an object (an ExportLogsServiceRequest)")
    _hex_ids_to_base64(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise BadOtlpBody(f"the JSON body is not an ExportLogsServiceRequest: {exc}") from None
    return request


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """OTLP/JSON writes traceId/spanId in hex; protobuf's JSON mapping reads bytes as base64."""
    for resource_logs in _objects(document.get("resourceLogs", document.get("resource_logs"))):
        scopes = resource_logs.get("scopeLogs", resource_logs.get("scope_logs"))
        for scope_logs in _objects(scopes):
            records = scope_logs.get("logRecords", scope_logs.get("log_records"))
            for record in _objects(records):
                for key in ("traceId", "trace_id", "spanId", "span_id"):
                    value = record.get(key)
                    if not isinstance(value, str):
                        continue
                    try:
                        raw = bytes.fromhex(value)
                    except ValueError:
                        raise BadOtlpBody(
                            f"{key} {value[:40]!r} is not hex (OTLP/JSON writes ids in hex)"
                        ) from None
                    record[key] = base64.b64encode(raw).decode("ascii")


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# -- conversion ------------------------------------------------------------------------------------


class Unconvertible(ValueError):
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


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as the JSON value a reader expects."""
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
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return key_values(value.kvlist_value.values)
    raise Unconvertible(f"AnyValue {kind} is not supported in logs")


def key_values(pairs: Any) -> dict[str, Any]:
    """A repeated KeyValue as an object (a repeated key keeps its last value)."""
    out: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        out[pair.key] = any_value(pair.value)
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
    if resource:
        doc["resource"] = resource
    if scope:
        doc["scope"] = scope
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


def to_lines(
    request: ExportLogsServiceRequest, *, max_line_bytes: int, received_nanos: int | None = None
) -> Converted:
    """Every LogRecord of `request` as one compact JSON line (UTF-8, no newline inside)."""
    received = time.time_ns() if received_nanos is None else received_nanos
    out = Converted()
    for resource_logs in request.resource_logs:
        try:
            resource = key_values(resource_logs.resource.attributes)
        except Unconvertible as exc:
            dropped = sum(len(s.log_records) for s in resource_logs.scope_logs)
            _reject(out, f"resource attributes: {exc}", dropped)
            continue
        for scope_logs in resource_logs.scope_logs:
            scope: dict[str, Any] = {}
            if scope_logs.scope.name:
                scope["name"] = scope_logs.scope.name
            if scope_logs.scope.version:
                scope["version"] = scope_logs.scope.version
            for record in scope_logs.log_records:
                try:
                    doc = record_document(
                        record, resource=resource, scope=scope, received_nanos=received
                    )
                except Unconvertible as exc:
                    _reject(out, str(exc))
                    continue
                line = json.dumps(
                    doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False
                ).encode("utf-8")
                if len(line) > max_line_bytes:
                    _reject(
                        out,
                        f"record is {len(line)} bytes as JSON; the line limit is {max_line_bytes}",
                    )
                    continue
                out.lines.append(line)
    return out


def _reject(out: Converted, reason: str, count: int = 1) -> None:
    out.rejected += count
    if reason not in out.reasons:
        out.reasons.append(reason)


# -- answers ---------------------------------------------------------------------------------------


def encode(message: Message, encoding: Encoding) -> bytes:
    """A response message in the request's encoding (OTLP/JSON: camelCase, int64 as strings)."""
    if encoding == "protobuf":
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode("utf-8")


def export_response(converted: Converted) -> ExportLogsServiceResponse:
    """Full success (empty message) or partial_success with the rejected count and why."""
    response = ExportLogsServiceResponse()
    if converted.rejected:
        response.partial_success.rejected_log_records = converted.rejected
        response.partial_success.error_message = converted.error_message()
    return response


def status_message(code: int, message: str) -> status_pb2.Status:
    """The google.rpc.Status OTLP/HTTP puts in error answers (`code` is a gRPC code)."""
    return status_pb2.Status(code=code, message=message)
