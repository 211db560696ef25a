"""Bounded cost for every ingest request (issue 27), the bounds as functions: gzip decoding linear
in the body, OTLP output/messages/records bounded before or while building, nesting limits, and
the answers for spool failures. Through a real serve: test_ingest_serve_bounds.py."""

from __future__ import annotations

import errno
import gzip
import json
import os
import tracemalloc

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from pydantic import ValidationError

from logferry.ingest.lines import BadGzip, TooManyGzipMembers, gunzip_limited
from logferry.ingest.otlp import (
    MAX_ANYVALUE_DEPTH,
    MAX_JSON_CONTAINERS,
    BadOtlpBody,
    TooBig,
    TooDeep,
    decode_request,
    record_document,
    to_lines,
)
from logferry.service.config import ServerConfig
from logferry.service.ingest_body import storage_refusal
from logferry.service.otlp import OUTPUT_FLOOR_BYTES, output_limit
from logferry.spool import SpoolBroken, SpoolClosed, SpoolFull
from logferry.spool.nats import NatsUnavailable
from test_ingest_serve_bounds import (
    DEPTH_LIMIT,
    EMPTY_MEMBER,
    amplifying_request,
    deep_json,
    kv,
    nested_value,
    request_with_body,
)

# -- gzip: linear in the body ----------------------------------------------------------------------


def test_many_tiny_gzip_members_never_copy_the_rest_of_the_body() -> None:
    """The old loop copied the undecoded rest (`unused_data`) once per member: quadratic work,
    and a copy as large as the body at the first member. Now a member copies about its own size."""
    body = EMPTY_MEMBER * 50_000 + gzip.compress(b"last\n", mtime=0)
    tracemalloc.start()
    try:
        assert gunzip_limited(body, 1 << 20) == b"last\n"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(body) // 4, f"peak {peak} bytes for a {len(body)}-byte body"


def test_gzip_members_decode_across_the_feed_windows() -> None:
    """Members of every size, split anywhere by the growing feed windows, decode exactly."""
    lines = [f"line {i} ".encode() * (i % 700) + b"\n" for i in range(400)]
    body = b"".join(gzip.compress(line, mtime=0) for line in lines) + b"\x00" * 3
    assert gunzip_limited(body, 10 << 20) == b"".join(lines)
    with pytest.raises(BadGzip, match="trailing bytes"):
        gunzip_limited(body + b"\x01", 10 << 20)


def test_gzip_member_count_is_capped_with_a_clear_error() -> None:
    with pytest.raises(TooManyGzipMembers, match="more than 100 gzip members") as err:
        gunzip_limited(EMPTY_MEMBER * 101, 1 << 20, max_members=100)
    assert err.value.fix is not None and "one gzip stream" in err.value.fix
    assert gunzip_limited(EMPTY_MEMBER * 100, 1 << 20, max_members=100) == b""


# -- OTLP: output, messages, nesting -------------------------------------------------------------


def test_spliced_lines_are_exactly_json_dumps_of_the_document() -> None:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(kv("service.name", "svc é"))
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "lib"
    records = [
        LogRecord(),
        LogRecord(time_unix_nano=3, body=AnyValue(string_value='x\n"')),
        LogRecord(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, flags=1, event_name="e"),
        LogRecord(attributes=[kv("a", "b")], dropped_attributes_count=2),
    ]
    scope.log_records.extend(records)
    bare = request.resource_logs.add().scope_logs.add()  # no resource, no scope
    bare.log_records.append(LogRecord(severity_text="WARN"))
    converted = to_lines(request, max_line_bytes=4096, received_nanos=7)
    expected = [
        record_document(
            r, resource={"service.name": "svc é"}, scope={"name": "lib"}, received_nanos=7
        )
        for r in records
    ] + [record_document(bare.log_records[0], resource={}, scope={}, received_nanos=7)]
    assert converted.lines == [
        json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() for doc in expected
    ]


def test_output_is_counted_while_building_and_stops_at_the_bound() -> None:
    request = amplifying_request(records=2_000, resource_bytes=10_000)
    with pytest.raises(TooBig, match="over 1000000 bytes of JSON lines") as err:
        to_lines(request, max_line_bytes=1 << 20, max_output_bytes=1_000_000)
    assert err.value.fix is not None and "fewer log records" in err.value.fix
    # The same request under a large enough bound converts whole.
    assert len(to_lines(request, max_line_bytes=1 << 20, max_output_bytes=30 << 20).lines) == 2000


def test_record_count_is_bounded_before_converting() -> None:
    with pytest.raises(TooBig, match="holds 11 log records; the limit is 10"):
        to_lines(amplifying_request(11, 1), max_line_bytes=4096, max_records=10)


def test_protobuf_message_count_is_bounded_before_parsing() -> None:
    empty_records = ExportLogsServiceRequest()
    scope = empty_records.resource_logs.add().scope_logs.add()
    scope.log_records.extend(LogRecord() for _ in range(5_000))
    body = empty_records.SerializeToString()
    with pytest.raises(TooBig, match="over 4000 messages"):
        decode_request(body, "protobuf", max_messages=4_000)
    assert len(decode_request(body, "protobuf", max_messages=5_002).resource_logs) == 1
    # Bytes that look like message tags inside strings do not count: the exact walk decides.
    digits = ExportLogsServiceRequest()
    digits.resource_logs.add().resource.attributes.append(kv("k", "2" * 10_000))
    assert decode_request(digits.SerializeToString(), "protobuf", max_messages=10).resource_logs


def test_json_object_count_is_bounded_before_parsing() -> None:
    body = json.dumps({"resourceLogs": [{} for _ in range(2_000)]}).encode()
    with pytest.raises(TooBig, match="over 1000 objects and arrays"):
        decode_request(body, "json", max_messages=1_000)


def test_anyvalue_nesting_at_the_limit_converts_and_one_more_is_refused() -> None:
    ok = request_with_body(nested_value(MAX_ANYVALUE_DEPTH))
    parsed = decode_request(ok.SerializeToString(), "protobuf")
    assert len(to_lines(parsed, max_line_bytes=1 << 16).lines) == 1
    deep = request_with_body(nested_value(MAX_ANYVALUE_DEPTH + 1))
    parsed = decode_request(deep.SerializeToString(), "protobuf")
    with pytest.raises(TooDeep, match=f"limit of {MAX_ANYVALUE_DEPTH} AnyValue levels"):
        to_lines(parsed, max_line_bytes=1 << 16)


@pytest.mark.parametrize("levels", [MAX_ANYVALUE_DEPTH + 1, 400, 10_000])
def test_deep_otlp_json_is_a_400_naming_the_limit(levels: int) -> None:
    with pytest.raises(TooDeep, match=f"limit of {MAX_ANYVALUE_DEPTH} AnyValue levels"):
        to_lines(decode_request(deep_json(levels), "json"), max_line_bytes=1 << 20)


def test_storage_failures_map_to_503_or_507_with_retry_after() -> None:
    def os_error(code: int) -> OSError:
        return OSError(code, os.strerror(code))

    full = SpoolFull("spool x: the disk is full", retry_after=5)
    full.__cause__ = os_error(errno.ENOSPC)
    cases: list[tuple[BaseException, int, str]] = [
        (full, 507, "disk is full"),
        (os_error(errno.ENOSPC), 507, "disk is full"),
        (os_error(errno.EMFILE), 503, "file descriptors (EMFILE)"),
        (os_error(errno.ENFILE), 503, "file descriptors (ENFILE)"),
        (os_error(errno.EROFS), 503, "EROFS"),
        (os_error(errno.EIO), 503, "EIO"),
        (SpoolBroken("spool x stopped"), 503, "stopped after a storage error"),
        (SpoolClosed("spool x is closed"), 503, "being closed"),
        (NatsUnavailable("NATS is unreachable"), 503, "nothing of this request was kept"),
        (NatsUnavailable("no quorum ack", maybe_stored=True), 503, "may still store it"),
    ]
    for exc, status, text in cases:
        refusal = storage_refusal(exc)
        assert refusal is not None, exc
        assert (refusal.status, text in refusal.message) == (status, True), refusal
        assert refusal.retry_after >= 1 and refusal.fix
    assert storage_refusal(SpoolFull("quota", retry_after=1)) is None  # the routes' own 429
    assert storage_refusal(ValueError("not storage")) is None


def test_the_serve_tests_use_the_real_depth_limit() -> None:
    assert DEPTH_LIMIT == MAX_ANYVALUE_DEPTH


def test_otlp_output_bound_is_a_multiple_of_the_body_between_floor_and_cap() -> None:
    floor, cap = OUTPUT_FLOOR_BYTES, 64 << 20
    assert output_limit(1_000, 8.0, cap) == floor  # a small request may still repeat a resource
    assert output_limit(2 << 20, 8.0, cap) == 16 << 20
    assert output_limit(16 << 20, 8.0, cap) == cap  # memory per request stays bounded
    with pytest.raises(ValidationError, match="otlp_max_output_ratio"):
        ServerConfig(otlp_max_output_ratio=0.5)
    assert ServerConfig(otlp_max_output_bytes="32MiB").otlp_max_output_bytes == 32 << 20


def test_otlp_json_has_its_own_lower_object_bound() -> None:
    records = [{"body": {"stringValue": "x"}} for _ in range(MAX_JSON_CONTAINERS // 2)]
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}).encode()
    with pytest.raises(TooBig, match="send application/x-protobuf"):
        decode_request(body, "json")


def test_a_body_the_message_walk_cannot_follow_is_refused_not_parsed() -> None:
    """A group (wire type 3) after the records: the parser would skip it as an unknown field,
    so the walk must not stop there and leave the rest uncounted; it refuses the body."""
    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    scope.log_records.extend(LogRecord(severity_text="2" * 10) for _ in range(1_000))
    body = request.SerializeToString()  # ~12,000 tag-like bytes, 1,002 messages: walked
    assert decode_request(body, "protobuf", max_messages=5_000).resource_logs
    with pytest.raises(BadOtlpBody, match="wire type 3"):
        decode_request(body + b"\x7b\x7c", "protobuf", max_messages=5_000)  # field 15 group
    cut = body + b"\x0a\x05\x12"  # a ResourceLogs of 5 bytes with 1 left
    with pytest.raises(BadOtlpBody, match="runs past"):
        decode_request(cut, "protobuf", max_messages=5_000)
