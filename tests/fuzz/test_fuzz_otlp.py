"""Property tests for OTLP/HTTP log bodies: any bytes decode or are refused as bad input,
records round-trip to one JSON line each, and the output stays bounded by the body."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from logferry.errors import InputError
from logferry.ingest.otlp import TooBig, decode_request, encode, to_lines
from logferry.service.otlp import output_limit

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_LINE = 4096


def convert(body: bytes, encoding: str, max_line: int = MAX_LINE) -> list[bytes] | None:
    """The lines a body becomes, or None when it is refused as bad input."""
    try:
        request = decode_request(body, encoding)  # type: ignore[arg-type]
    except InputError:
        return None
    out = to_lines(request, max_line_bytes=max_line, received_nanos=1)
    for line in out.lines:
        assert len(line) <= max_line and b"\n" not in line
        json.loads(line)
    return out.lines


@FUZZ
@given(body=st.binary(max_size=2000), encoding=st.sampled_from(["protobuf", "json"]))
def test_any_body_decodes_or_is_refused_as_bad_input(body: bytes, encoding: str) -> None:
    convert(body, encoding)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)


@FUZZ
@given(
    document=st.dictionaries(
        st.sampled_from(["resourceLogs", "resource_logs", "x"]), json_values, max_size=2
    )
)
def test_any_json_document_decodes_or_is_refused(document: dict[str, object]) -> None:
    convert(json.dumps(document).encode(), "json")


@FUZZ
@given(
    bodies=st.lists(st.text(max_size=50), min_size=1, max_size=20),
    attrs=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3),
    encoding=st.sampled_from(["protobuf", "json"]),
)
def test_records_round_trip_one_json_line_each(
    bodies: list[str], attrs: dict[str, str], encoding: str
) -> None:
    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    for text in bodies:
        record = scope.log_records.add()
        record.body.string_value = text
        record.time_unix_nano = 1_700_000_000_000_000_000
        for key, value in attrs.items():
            record.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    lines = convert(encode(request, encoding), encoding)  # type: ignore[arg-type]
    assert lines is not None
    docs = [json.loads(line) for line in lines]
    assert [d["body"] for d in docs] == bodies
    assert all(d.get("attributes", {}) == attrs for d in docs)


def nested_json(depth: int) -> bytes:
    value = '{"kvlistValue":{"values":[{"key":"k","value":' * depth
    value += '{"stringValue":"x"}' + "}]}}" * depth
    return f'{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{value}}}]}}]}}]}}'.encode()


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deep_json_is_refused_as_bad_input(depth: int) -> None:
    assert convert(nested_json(depth), "json") is None


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand: protobuf itself refuses to
    build a message this deep, and a hostile sender is not bound by that."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


@pytest.mark.parametrize("depth", [200, 5_000])
def test_deep_protobuf_is_refused_as_bad_input(depth: int) -> None:
    value = _field(1, b"x")  # AnyValue.string_value
    for _ in range(depth):  # AnyValue.kvlist_value → KeyValueList.values → KeyValue
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))
    record = _field(5, value)  # LogRecord.body
    body = _field(1, _field(2, _field(2, record)))  # resource_logs → scope_logs → log_records
    assert convert(body, "protobuf") is None


@FUZZ
@given(
    resource_bytes=st.integers(0, 30_000),
    records=st.integers(1, 3000),
    encoding=st.sampled_from(["protobuf", "json"]),
)
def test_output_is_bounded_by_the_body(resource_bytes: int, records: int, encoding: str) -> None:
    """Each line repeats its resource's attributes (1 MB of OTLP once drove serve to 3 GiB):
    with serve's own bound, the lines either fit it or the request is refused while building."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(
        KeyValue(key="big", value=AnyValue(string_value="r" * resource_bytes))
    )
    scope = resource_logs.scope_logs.add()
    for _ in range(records):
        scope.log_records.add().body.string_value = "x"
    body = encode(request, encoding)  # type: ignore[arg-type]
    limit = output_limit(len(body), 16, 64 << 20)  # serve's defaults (README, [server])
    try:
        out = to_lines(request, max_line_bytes=256 * 1024, received_nanos=1, max_output_bytes=limit)
    except TooBig:
        # Refused only when really over: every line here is the same size as a lone record's.
        del scope.log_records[1:]
        one = to_lines(request, max_line_bytes=256 * 1024, received_nanos=1).lines
        assert (len(one[0]) + 1) * records > limit
        return
    total = sum(len(line) + 1 for line in out.lines)
    assert total <= limit, f"{len(body)} bytes in, {total} bytes of lines out"
    assert len(out.lines) == records
