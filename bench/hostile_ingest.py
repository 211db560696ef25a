"""A hostile customer's ingest requests vs the shared serve: peak RSS and a neighbour's latency.

Not a test. One `logferry serve` against the emulator, two customers with working S3 endpoints:
hostile A and neighbour B. B posts one small body every 0.1 s throughout; each phase runs
`--seconds` with `--hostile` threads of A posting one kind of request non-stop:
- `baseline`: A idle.
- `amplify`: a ~1 MB OTLP/protobuf request whose 30,000 records share a 200 KB resource (as
  JSON lines, about 6 GB: issue 27 saw serve reach 3 GiB RSS in 13 s with it).
- `amplify_16mib`: a 16 MiB OTLP request, 2 KB resource, ~74,000 records of ~200 B (its lines
  would be ~190 MB: the largest body, the largest output bound).
- `gzip_members_over`: /v1/ingest, gzip of 800,000 empty members (16 MiB; over the member cap).
- `gzip_members_under`: /v1/ingest, 99,000 members of one 100-byte line each (accepted).
- `otlp_json_max`: OTLP/JSON just under its 50,000 objects-and-arrays bound (accepted): the
  costliest JSON request (protobuf's JSON parser is pure Python).
Per phase: A's status codes, serve's peak RSS (VmHWM is reset per phase by sampling windows:
`peak_rss_mib` is the max of 0.1 s samples in the phase) and CPU, B's latency percentiles.

    PYTHONPATH=src .venv/bin/python bench/hostile_ingest.py [--seconds 20] [--hostile 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from common import (
    ProcSampler,
    Serve,
    count_bucket_lines,
    machine_info,
    make_s3_role,
    note,
    print_table,
    serve_config,
    start_emulator,
    write_results,
)
from noisy_neighbour import percentiles

TOKENS = {"TOKEN_A": "bench-hostile-a-000000000000", "TOKEN_B": "bench-neighbour-b-1111111111"}


def otlp_request(records: int, resource_bytes: int, record_bytes: int) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(
        KeyValue(key="blob", value=AnyValue(string_value="r" * resource_bytes))
    )
    scope = resource_logs.scope_logs.add()
    filler = "m" * record_bytes
    scope.log_records.extend(
        LogRecord(time_unix_nano=1 + i, body=AnyValue(string_value=f"{i} {filler}"))
        for i in range(records)
    )
    return request.SerializeToString()


def otlp_json(records: int) -> bytes:
    """OTLP/JSON with `records` records of 2 attributes: ~7 objects and arrays per record."""
    logs = [
        {
            "timeUnixNano": str(1_795_860_000_000_000_000 + i),
            "body": {"stringValue": f"GET /api/v1/orders/{i} 200 user=alice"},
            "attributes": [
                {"key": "http.method", "value": {"stringValue": "GET"}},
                {"key": "http.status_code", "value": {"intValue": "200"}},
            ],
        }
        for i in range(records)
    ]
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}
    return json.dumps(doc).encode()


def phases() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """name -> (path suffix, body, headers) of A's request."""
    pb = {"Content-Type": "application/x-protobuf"}
    gz = {"Content-Encoding": "gzip"}
    empty_member = gzip.compress(b"", mtime=0)
    line_members = b"".join(
        gzip.compress(b"%06d " % i + b"x" * 92 + b"\n", mtime=0) for i in range(99_000)
    )
    big = otlp_request(74_000, 2_000, 200)
    assert len(big) <= 16 << 20, len(big)  # within the default server.max_body_bytes
    return {
        "amplify": ("otlp", otlp_request(30_000, 200_000, 10), pb),
        "amplify_16mib": ("otlp", big, pb),
        "gzip_members_over": ("ingest", empty_member * 800_000, gz),
        "gzip_members_under": ("ingest", line_members, gz),
        "otlp_json_max": ("otlp", otlp_json(7_000), {"Content-Type": "application/json"}),
    }


class Neighbour:
    """B: one small body every 0.1 s; latencies per phase."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.latencies: dict[str, list[float]] = {}
        self.codes: dict[str, Counter[int]] = {}
        self.sent = 0
        self.phase = "baseline"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Neighbour:
        self._thread.start()
        return self

    def _run(self) -> None:
        with self.serve.as_token(TOKENS["TOKEN_B"]) as client:
            i = 0
            while not self._stop.is_set():
                phase = self.phase
                t0 = time.monotonic()
                r = client.post("/v1/ingest/cust-b/s3", content=b"b-%08d\n" % i)
                self.latencies.setdefault(phase, []).append(time.monotonic() - t0)
                self.codes.setdefault(phase, Counter())[r.status_code] += 1
                self.sent += r.status_code == 202
                i += 1
                time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def hostile(
    serve: Serve, kind: str, body: bytes, headers: dict[str, str], stop: threading.Event
) -> Callable[[Counter[int], list[float]], None]:
    path = "/v1/otlp/cust-a/s3/v1/logs" if kind == "otlp" else "/v1/ingest/cust-a/s3"

    def run(codes: Counter[int], seconds: list[float]) -> None:
        auth = {"Authorization": f"Bearer {TOKENS['TOKEN_A']}", **headers}
        with httpx.Client(base_url=serve.url, timeout=600, headers=auth) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post(path, content=body)
                    codes[r.status_code] += 1
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1  # type: ignore[index]
                seconds.append(time.monotonic() - t0)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--hostile", type=int, default=2, help="A's concurrent senders")
    parser.add_argument("--only", nargs="*", help="run only these phases")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    emulator = start_emulator()
    doc: dict[str, Any] = {"phase_seconds": args.seconds, "hostile_senders": args.hostile}
    try:
        roles = {
            c: make_s3_role(emulator, f"bench-hostile-{c}", f"cust-{c}", f"hostile-{c}")
            for c in "ab"
        }
        customers = [
            {
                "id": f"cust-{c}",
                "token_env": f"TOKEN_{c.upper()}",
                "endpoints": [
                    {
                        "type": "s3",
                        "name": "s3",
                        "bucket_name": f"bench-hostile-{c}",
                        "iam_role": roles[c],
                        "path": f"{c}/",
                        "period": 2,
                    }
                ],
            }
            for c in "ab"
        ]
        serve = Serve(emulator, serve_config(emulator, work, customers=customers), work, TOKENS)
        serve.start(180)
        sampler = ProcSampler({"serve": serve.pid}).start()
        neighbour = Neighbour(serve).start()
        t0 = time.monotonic()
        time.sleep(args.seconds)
        doc["baseline"] = {"serve": sampler.window("serve", t0, time.monotonic())}
        for name, (kind, body, headers) in phases().items():
            if args.only and name not in args.only:
                continue
            note(f"phase {name}: {len(body):,}-byte body x {args.hostile} senders")
            neighbour.phase = name
            stop = threading.Event()
            codes: Counter[int] = Counter()
            seconds: list[float] = []
            run = hostile(serve, kind, body, headers, stop)
            threads = [
                threading.Thread(target=run, args=(codes, seconds)) for _ in range(args.hostile)
            ]
            t0 = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(args.seconds)
            stop.set()
            for thread in threads:
                thread.join(600)
            doc[name] = {
                "body_bytes": len(body),
                "a_codes": {str(k): v for k, v in codes.items()},
                "a_request": percentiles(seconds),
                "serve": sampler.window("serve", t0, time.monotonic()),
            }
            neighbour.phase = f"after-{name}"
            time.sleep(1)
        neighbour.stop()
        sampler.stop()
        for phase, values in neighbour.latencies.items():
            if phase in doc:
                doc[phase]["b_latency"] = percentiles(values)
                doc[phase]["b_codes"] = {str(k): v for k, v in neighbour.codes[phase].items()}
        t_end = time.monotonic()
        landed = 0
        while time.monotonic() - t_end < 60:
            landed = count_bucket_lines(emulator, "bench-hostile-b")["lines"]
            if landed >= neighbour.sent:
                break
            time.sleep(0.5)
        doc["b_lines_sent"], doc["b_lines_landed"] = neighbour.sent, landed
        doc["serve_peak_rss_mib_overall"] = round(sampler.peak_rss("serve") / (1 << 20), 1)
        serve.terminate()
        rows: list[tuple[str, Any]] = []
        for name in ("baseline", *phases()):
            if name not in doc:
                continue
            phase = doc[name]
            b = phase.get("b_latency", {})
            rows.append(
                (
                    f"{name}: serve peak RSS MiB / CPU s",
                    f"{phase['serve'].get('peak_rss_mib')} / {phase['serve'].get('cpu_seconds')}",
                )
            )
            rows.append(
                (
                    f"{name}: B p50 / p99 / max ms",
                    f"{b.get('p50_ms')} / {b.get('p99_ms')} / {b.get('max_ms')}",
                )
            )
            if "a_codes" in phase:
                rows.append(
                    (
                        f"{name}: A codes, A p50 ms",
                        f"{phase['a_codes']}, {phase['a_request'].get('p50_ms')}",
                    )
                )
        rows.append(("B lines landed / sent", f"{landed} / {neighbour.sent}"))
        print_table("A hostile, B neighbour: serve's memory and B's latency", rows)
        name = "hostile_ingest" + "".join(f"_{p}" for p in args.only or [])
        print(write_results(name, doc, machine_info()))
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
