"""How long `logferry serve` takes to become ready with many endpoints (NATS or local spool).

Setup: the emulator, one loopback nats-server (`sync_interval: always`), one customer whose
config file holds `--endpoints` S3 endpoints (one role and bucket). serve is started `--starts`
times on the same NATS and spool directory: the first start creates every registry record and
takes every endpoint; the later ones are restarts, where the config is unchanged. Each figure is
spawn → `/readyz` 200, measured from outside.

    .venv/bin/python bench/nats_startup.py [--endpoints 2000] [--starts 3] [--spool-backend local]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from common import (
    Serve,
    machine_info,
    make_s3_tenants,
    note,
    print_table,
    serve_config,
    spool_backend,
    start_emulator,
    write_results,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", type=int, default=2000)
    p.add_argument("--starts", type=int, default=3, help="the first start, then restarts")
    p.add_argument(
        "--spool-backend",
        choices=("nats", "local"),
        default="nats",
        help="local: the same config on the local spool (its SQLite registry)",
    )
    p.add_argument("--name", default="nats_startup", help="results file name")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="logferry-bench-nats-startup-"))
    emulator = start_emulator()
    try:
        with spool_backend(args.spool_backend, workdir) as backend:
            ((customer, bucket, role_arn),) = make_s3_tenants(
                emulator, 1, f"su{uuid.uuid4().hex[:6]}"
            )
            endpoints = [
                {"type": "s3", "name": f"e{i}", "bucket_name": bucket, "iam_role": role_arn}
                for i in range(args.endpoints)
            ]
            config = serve_config(
                emulator,
                workdir,
                spool=backend.spool_table(),
                customers=[{"id": customer, "endpoints": endpoints}],
            )
            seconds = []
            for start in range(args.starts):
                serve = Serve(emulator, config, workdir / "serve")
                began = time.monotonic()
                serve.start(timeout=600)
                seconds.append(round(time.monotonic() - began, 2))
                note(f"start {start + 1}: ready after {seconds[-1]} s")
                serve.terminate()
    finally:
        emulator.stop()
    doc = {
        "spool_backend": args.spool_backend,
        "endpoints": args.endpoints,
        "first_start_seconds": seconds[0],
        "restart_seconds": seconds[1:],
    }
    path = write_results(args.name, doc, machine)
    print_table(
        f"serve on the {args.spool_backend} spool: spawn to ready",
        [
            ("endpoints (config file, one customer)", args.endpoints),
            ("first start s", seconds[0]),
            ("restarts s", " / ".join(str(s) for s in seconds[1:])),
        ],
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
