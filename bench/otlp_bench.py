"""Benchmark of the OTLP logs conversion: decode an ExportLogsServiceRequest and turn it into lines.

Not a test: it prints a table and writes bench/results/otlp.json. It measures the in-process
cost the OTLP route adds over /v1/ingest (single thread; the route runs it in a worker thread),
per encoding, for requests shaped like an SDK's batch: 512 records of a ~120-byte string body,
4 attributes, a resource with 3 attributes, trace and span ids.

    PYTHONPATH=src .venv/bin/python bench/otlp_bench.py [--records 512] [--repeat 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from common import machine_info, note, print_table, write_results
from logferry.ingest.otlp import decode_request, to_lines


def make_request(records: int) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in (("service.name", "checkout"), ("host.name", "web-1"), ("env", "prod")):
        resource_logs.resource.attributes.append(
            KeyValue(key=key, value=AnyValue(string_value=value))
        )
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "shop.orders"
    for i in range(records):
        record = scope_logs.log_records.add()
        record.time_unix_nano = 1_795_860_000_000_000_000 + i
        record.severity_number = 9
        record.severity_text = "INFO"
        record.body.string_value = (
            f"GET /api/orders/{i} 200 {i % 997} ms user=u{i % 31} " + "x" * 60
        )
        record.attributes.append(KeyValue(key="http.status", value=AnyValue(int_value=200)))
        record.attributes.append(KeyValue(key="ratio", value=AnyValue(double_value=i / 7)))
        record.attributes.append(KeyValue(key="route", value=AnyValue(string_value="/orders")))
        record.attributes.append(KeyValue(key="ok", value=AnyValue(bool_value=True)))
        record.trace_id = bytes(range(16))
        record.span_id = bytes(range(8))
    return request


def to_json(request: ExportLogsServiceRequest) -> bytes:
    """OTLP/JSON (hex ids) from the protobuf message."""
    import json

    doc = json_format.MessageToDict(request)
    for rl in doc["resourceLogs"]:
        for sl in rl["scopeLogs"]:
            for rec in sl["logRecords"]:
                rec["traceId"] = bytes(range(16)).hex()
                rec["spanId"] = bytes(range(8)).hex()
    return json.dumps(doc).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    machine = machine_info()
    request = make_request(args.records)
    bodies = {"protobuf": request.SerializeToString(), "json": to_json(request)}
    figures: dict[str, dict[str, float]] = {}
    rows: list[tuple[str, object]] = []
    for encoding, body in bodies.items():
        note(f"{encoding}: {len(body):,} bytes per request")
        best = float("inf")
        out_bytes = 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            converted = to_lines(decode_request(body, encoding), max_line_bytes=256 * 1024)  # type: ignore[arg-type]
            best = min(best, time.perf_counter() - start)
            out_bytes = len(converted.data)
        figures[encoding] = {
            "request_bytes": len(body),
            "records_per_s": round(args.records / best),
            "request_ms": round(best * 1000, 2),
            "line_bytes_per_record": round(out_bytes / args.records),
        }
        rows += [
            (f"{encoding}: records/s (best of {args.repeat})", args.records / best),
            (f"{encoding}: ms per {args.records}-record request", best * 1000),
            (f"{encoding}: request bytes", len(body)),
        ]
    rows.append(("JSON line bytes per record", figures["protobuf"]["line_bytes_per_record"]))
    print_table("OTLP decode + convert (one thread)", rows)
    path = write_results("otlp", {"records": args.records, "figures": figures}, machine)
    note(f"wrote {path}")


if __name__ == "__main__":
    main()
