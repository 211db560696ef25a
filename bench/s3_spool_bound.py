"""Spool bytes held by an S3 endpoint with `period = 3600` under steady ingest (issue 10).

The contract: once a multipart part is uploaded and journaled, the spool may be committed up to
it, so an open hour-long file holds only about one part's worth of data (plus what is not yet
uploaded) in the spool, not the whole hour. Before the fix the spool grows with everything
ingested until the file closes.

What runs: the patched emulator, a bucket and the guide's role, one `logferry serve` process with
one S3 endpoint (`period` 3600, no idle flush: the file stays open for the whole run), and this
process posting ~512 KiB bodies of realistic access-log lines (bench/loggen.py) at a steady rate.
Every second it samples:
- the spool's bytes on disk (sum of file sizes under <spool>/data, the `du` a user would run),
- `logferry_spool_pending_bytes` from /metrics,
- the bytes accepted so far (202s), and, every 5 s, the parts of the open multipart upload
  (ListMultipartUploads / ListParts as the customer's admin).

Figures: max / median / last spool bytes, the same as a fraction of bytes ingested, the parts
uploaded and their sizes, and the sink's part size. Results: bench/results/<name>.json.

    .venv/bin/python bench/s3_spool_bound.py [--duration 180] [--rate-mb 3] [--codec gzip]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from common import (
    MiB,
    Serve,
    loggen_bodies,
    machine_info,
    make_s3_role,
    note,
    print_table,
    serve_config,
    start_emulator,
    write_results,
)
from logferry.sinks.s3 import DEFAULT_PART_SIZE

TOKEN = "bench-customer-token-000000000000"
CODEC_FIELDS = {
    "gzip": {"compression_codec": "gzip"},
    "zstd": {"compression_codec": "zstd"},
    "none": {},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of steady ingest")
    p.add_argument("--rate-mb", type=float, default=3.0, help="ingest rate, MB/s")
    p.add_argument("--body-kib", type=int, default=512)
    p.add_argument("--codec", choices=sorted(CODEC_FIELDS), default="gzip")
    p.add_argument("--lines", type=int, default=400_000, help="distinct lines (bodies cycle)")
    p.add_argument("--name", default="s3_spool_bound", help="results file name")
    return p.parse_args(argv)


def disk_bytes(root: Path) -> int:
    """Bytes of every file under `root` (what `du --apparent-size` counts)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def open_parts(s3: Any, bucket: str) -> list[int]:
    """Sizes of the parts of every open multipart upload in `bucket`."""
    sizes: list[int] = []
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        sizes += [int(p["Size"]) for p in parts.get("Parts", [])]
    return sizes


def run(args: argparse.Namespace) -> dict[str, Any]:
    bodies = loggen_bodies(args.lines, args.body_kib * 1024)
    workdir = Path(tempfile.mkdtemp(prefix="logferry-bench-spool-bound-"))
    emulator = start_emulator()
    serve: Serve | None = None
    samples: list[dict[str, Any]] = []
    accepted = {"bytes": 0, "lines": 0, "requests": 0, "non_202": 0}
    stop = threading.Event()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        customer = "bench-customer"
        role_arn = make_s3_role(emulator, bucket, customer, "bench-s3-logging")
        endpoint = {
            "type": "s3",
            "name": "s3",
            "bucket_name": bucket,
            "iam_role": role_arn,
            "path": "logs/",
            "period": 3600,
            **CODEC_FIELDS[args.codec],
        }
        config = serve_config(
            emulator,
            workdir,
            server={"idle_flush_seconds": 0},
            customers=[{"id": customer, "token_env": "BENCH_TOKEN", "endpoints": [endpoint]}],
        )
        serve = Serve(emulator, config, workdir, env={"BENCH_TOKEN": TOKEN}).start()
        spool_data = workdir / "spool" / "data"
        s3 = emulator.client("s3")
        rate = args.rate_mb * 1e6

        def load() -> None:
            """Post bodies so that accepted bytes track `rate` × elapsed."""
            url = f"{serve.url}/v1/ingest/{customer}/s3"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            t0 = time.monotonic()
            i = 0
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    ahead = accepted["bytes"] / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        stop.wait(ahead)
                        continue
                    body, lines = bodies[i % len(bodies)]
                    i += 1
                    r = client.post(url, content=body, headers=headers)
                    accepted["requests"] += 1
                    if r.status_code == 202:
                        accepted["bytes"] += len(body)
                        accepted["lines"] += lines
                    else:
                        accepted["non_202"] += 1
                        stop.wait(1.0)

        loader = threading.Thread(target=load, daemon=True)
        started = time.monotonic()
        loader.start()
        note(f"ingesting {args.rate_mb} MB/s for {args.duration:.0f} s")
        parts: list[int] = []
        while (elapsed := time.monotonic() - started) < args.duration:
            time.sleep(1.0)
            if int(elapsed) % 5 == 0:
                with contextlib.suppress(Exception):
                    parts = open_parts(s3, bucket)
            pending = None
            with contextlib.suppress(Exception):
                pending = serve.metric_sum("logferry_spool_pending_bytes")
            samples.append(
                {
                    "t": round(time.monotonic() - started, 2),
                    "spool_disk_bytes": disk_bytes(spool_data),
                    "pending_bytes": pending,
                    "ingested_bytes": accepted["bytes"],
                    "parts": len(parts),
                    "part_bytes": sum(parts),
                }
            )
        stop.set()
        loader.join(60)
        parts = open_parts(s3, bucket)
        status = serve.status(customer, "s3")
    finally:
        stop.set()
        if serve is not None:
            serve.kill9()  # the hour-long file is not the subject; do not wait for its upload
        emulator.stop()

    disk = [s["spool_disk_bytes"] for s in samples]
    ingested = accepted["bytes"]
    figures = {
        "duration_s": args.duration,
        "target_rate_mb_s": args.rate_mb,
        "achieved_rate_mb_s": round(ingested / 1e6 / args.duration, 2),
        "codec": args.codec,
        "ingested_mb": round(ingested / 1e6, 1),
        "ingested_lines": accepted["lines"],
        "non_202": accepted["non_202"],
        "spool_disk_max_mb": round(max(disk) / 1e6, 1),
        "spool_disk_median_mb": round(statistics.median(disk) / 1e6, 1),
        "spool_disk_last_mb": round(disk[-1] / 1e6, 1),
        "spool_max_over_ingested": round(max(disk) / max(1, ingested), 3),
        "spool_last_over_ingested": round(disk[-1] / max(1, ingested), 3),
        "part_size_mib": DEFAULT_PART_SIZE / MiB,
        "parts_uploaded": len(parts),
        "uploaded_part_mb": round(sum(parts) / 1e6, 1),
        "endpoint_state": status.get("state"),
        "pending_lines_at_end": status.get("lines", {}).get("pending"),
    }
    return {"figures": figures, "samples": samples}


def main() -> None:
    args = parse_args()
    machine = machine_info()
    result = run(args)
    print_table("S3 spool bound (period 3600, steady ingest)", list(result["figures"].items()))
    path = write_results(args.name, {"args": vars(args), **result}, machine)
    note(f"wrote {path}")


if __name__ == "__main__":
    main()
