"""OTLP/HTTP logs on the wire: content types, request decoding within bounds, answer encoding.

The messages come from `opentelemetry-proto` and JSON bodies are read with protobuf's own
`json_format`, so field names, int64-as-string and enum handling follow the OTLP/JSON mapping
exactly. The one OTLP-specific twist (trace and span ids are hex in OTLP/JSON, not base64 as
protobuf's generic mapping would have it) is applied to the parsed JSON document before
`ParseDict` sees it.

Bounded cost (docs/security.md): before parsing, the number of messages the parser would build is
bounded (`MAX_MESSAGES`: a protobuf parser spends 50-130 bytes per message, so a body of empty
messages would cost ~60x its size; OTLP/JSON: `MAX_JSON_CONTAINERS`, for the CPU of protobuf's
pure-Python JSON parser), and so is the nesting (`MAX_ANYVALUE_DEPTH`, `MAX_JSON_DEPTH`: TooDeep,
HTTP 400, never a RecursionError). Turning records into lines is `ingest/otlp.py`.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from logferry.errors import InputError

Encoding = Literal["protobuf", "json"]
PROTOBUF_TYPE = "application/x-protobuf"
JSON_TYPE = "application/json"

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


# -- answers ---------------------------------------------------------------------------------------


def encode(message: Message, encoding: Encoding) -> bytes:
    """A response message in the request's encoding (OTLP/JSON: camelCase, int64 as strings)."""
    if encoding == "protobuf":
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode("utf-8")


def status_message(code: int, message: str) -> status_pb2.Status:
    """The google.rpc.Status OTLP/HTTP puts in error answers (`code` is a gRPC code)."""
    return status_pb2.Status(code=code, message=message)
