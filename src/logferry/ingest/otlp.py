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

from logferry.errors import InputError, LogferryError

Encoding = Literal["protobuf", "json"]
PROTOBUF_TYPE = "application/x-protobuf"
JSON_TYPE = "application/json"
_MAX_ERROR_EXAMPLES = 3

MAX_ANYVALUE_DEPTH = 30
"""Deepest AnyValue nesting (array/kvlist inside array/kvlist) accepted. Chosen below what
protobuf's parser allows (100 message levels: ~31 kvlist levels), so both encodings share it."""
MAX_JSON_DEPTH = 4 * MAX_ANYVALUE_DEPTH + 12
"""Deepest OTLP/JSON nesting (objects and arrays) parsed: a kvlist level is 4 JSON levels."""
MAX_MESSAGES = 1_000_000
"""Most sub-messages (protobuf) or objects and arrays (JSON) one request may hold: bounds the
parser's memory (protobuf: at most ~134 bytes each, so ~130 MiB) and the conversion's CPU."""
MAX_JSON_CONTAINERS = 50_000
"""Most objects and arrays in one OTLP/JSON request: protobuf's JSON parser (`ParseDict`, pure
Python) costs ~30-60 us per object, so this keeps a JSON request within a few CPU seconds.
Senders with more records per request use protobuf (about 100x cheaper to parse)."""


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


class TooDeep(BadOtlpBody):
    """Nesting over MAX_ANYVALUE_DEPTH / MAX_JSON_DEPTH: HTTP 400, the limit named."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is nested deeper than the limit of {MAX_ANYVALUE_DEPTH} AnyValue levels "
            f"(arrays/kvlists inside each other; OTLP/JSON: {MAX_JSON_DEPTH} object/array levels)"
        )
        self.fix = f"flatten attributes and bodies to at most {MAX_ANYVALUE_DEPTH} levels"


class TooBig(InputError):
    """The request would cost more than its bound (messages, records, output): HTTP 413."""

    def __init__(self, message: str) -> None:
        super().__init__(
            "body", message, fix="export fewer log records per request (a smaller batch size)"
        )


def encoding_of(content_type: str) -> Encoding:
    """The OTLP encoding a Content-Type names (parameters such as charset are ignored)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == PROTOBUF_TYPE:
        return "protobuf"
    if media == JSON_TYPE:
        return "json"
    raise UnsupportedContentType(media)


def decode_request(
    body: bytes, encoding: Encoding, *, max_messages: int = MAX_MESSAGES
) -> ExportLogsServiceRequest:
    """Parse a request body; raises BadOtlpBody with the decoder's reason (TooDeep when nested
    too deeply) and TooBig when it holds more than `max_messages` messages."""
    request = ExportLogsServiceRequest()
    if encoding == "protobuf":
        check_protobuf_messages(body, max_messages)
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            if "MaxDepth" in str(exc):
                raise TooDeep("the protobuf body") from None
            raise BadOtlpBody(f"the protobuf body does not decode: {exc or 'malformed'}") from None
        return request
    containers = body.count(b"{") + body.count(b"[")  # >= objects + arrays, at C speed
    most = min(max_messages, MAX_JSON_CONTAINERS)
    if containers > most:
        raise TooBig(
            f"the JSON body holds over {most} objects and arrays "
            "(or send application/x-protobuf, which has a far higher limit)"
        )
    try:
        document = json.loads(body)
    except RecursionError:
        raise TooDeep("the JSON body") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadOtlpBody(f"the JSON body does not parse: {exc}") from None
    if not isinstance(document, dict):
        raise BadOtlpBody("the JSON body must be an object (an ExportLogsServiceRequest)")
    if json_depth_over(document, MAX_JSON_DEPTH):
        raise TooDeep("the JSON body")
    _hex_ids_to_base64(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except RecursionError:
        raise TooDeep("the JSON body") from None
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise BadOtlpBody(f"the JSON body is not an ExportLogsServiceRequest: {exc}") from None
    return request


def json_depth_over(document: Any, limit: int) -> bool:
    """Whether `document` nests objects/arrays deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


# Which length-delimited fields of each OTLP logs message are sub-messages (field -> kind).
_REQ, _RL, _RES, _SL, _SCOPE, _REC, _KV, _AV, _ARR, _KVL, _LEAF = range(11)
_SUB: tuple[dict[int, int], ...] = (
    {1: _RL},  # ExportLogsServiceRequest.resource_logs
    {1: _RES, 2: _SL},  # ResourceLogs.resource, .scope_logs
    {1: _KV, 3: _LEAF},  # Resource.attributes, .entity_refs
    {1: _SCOPE, 2: _REC},  # ScopeLogs.scope, .log_records
    {3: _KV},  # InstrumentationScope.attributes
    {5: _AV, 6: _KV},  # LogRecord.body, .attributes
    {2: _AV},  # KeyValue.value
    {5: _ARR, 6: _KVL},  # AnyValue.array_value, .kvlist_value
    {1: _AV},  # ArrayValue.values
    {1: _KV},  # KeyValueList.values
    {},
)
_MESSAGE_TAGS = (0x0A, 0x12, 0x1A, 0x2A, 0x32)
"""Every sub-message above has field number 1, 2, 3, 5 or 6 and so one of these tag bytes."""


def check_protobuf_messages(body: bytes, max_messages: int) -> None:
    """Raise TooBig when parsing `body` would build more than `max_messages` messages.

    Cheap first: every sub-message starts with one of five tag bytes, so their count (C speed)
    bounds the messages from above; only a body over the bound is walked field by field (by
    hand: protobuf offers no way to count before it allocates), and the walk stops at the limit.
    """
    if sum(body.count(tag) for tag in _MESSAGE_TAGS) <= max_messages:
        return
    if _count_messages(body, max_messages) > max_messages:
        raise TooBig(f"the protobuf body holds over {max_messages} messages")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _count_messages(buf: bytes, limit: int) -> int:
    """Sub-messages in an ExportLogsServiceRequest, stopping past `limit`. Raises BadOtlpBody
    on what it cannot walk (the parser would refuse it too, except groups, which OTLP never
    uses: left to the parser, they would hide the messages after them from the count)."""
    n = len(buf)
    stack: list[tuple[dict[int, int], int]] = []
    fields, end = _SUB[_REQ], n
    i = 0
    count = 0
    try:
        while True:
            if i >= end:
                if i > end:
                    break
                if not stack:
                    return count
                fields, end = stack.pop()
                continue
            tag, i = _varint(buf, i)
            wire = tag & 7
            if wire == 2:
                size, i = _varint(buf, i)
                kind = fields.get(tag >> 3)
                if kind is None:
                    i += size
                    continue
                count += 1
                if count > limit:
                    return count
                if i + size > end:
                    break
                stack.append((fields, end))
                fields, end = _SUB[kind], i + size
            elif wire == 0:
                _, i = _varint(buf, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                raise BadOtlpBody(f"the protobuf body has wire type {wire} at byte {i}")
    except IndexError:
        pass
    raise BadOtlpBody("the protobuf body does not decode: a field runs past its message's end")


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
