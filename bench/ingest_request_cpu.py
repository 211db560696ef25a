"""CPU of one small ingest request inside serve's ASGI app: the plain-ASGI ingest route
(`IngestFastPath`) against the FastAPI route alone, on one real Service, interleaved.

Why in process: the event loop's share of a small request is what the fast path changes, and
through a socket it drowns in the box's noise (its speed moves 2–3× within minutes). Both apps
drive the same Service (spool, group commit, fsyncs included: the CPU is the whole process's),
alternating every `--batch` requests so both see the same box. `--profile` adds a cProfile of
each app (event-loop thread only) to the results.

Setup: the emulator, one customer with its own S3 role and endpoint (period 3600: no object is
written while it runs). Requests: `--lines` lines of ~100 B per body, `--concurrency` at a time.

    .venv/bin/python bench/ingest_request_cpu.py [--requests 4000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    ADMIN_TOKEN,
    box_speed,
    machine_info,
    make_s3_tenants,
    note,
    print_table,
    serve_config,
    start_emulator,
    write_results,
)
from logferry.local.asgi_call import asgi_request
from logferry.local.toml_out import to_toml
from logferry.service.config import load_config

TOKEN = "bench-ingest-request-cpu-token-0123456789"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000, help="requests per app")
    p.add_argument("--lines", type=int, default=20, help="lines per request body")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--batch", type=int, default=200, help="requests per turn before switching")
    p.add_argument("--profile", action="store_true", help="cProfile each app once more")
    p.add_argument("--name", default="ingest_request_cpu", help="results file name")
    return p.parse_args(argv)


async def measure(args: argparse.Namespace, config_path: Path, customer: str) -> dict[str, Any]:
    from logferry.service.api import create_app
    from logferry.service.ingest_route import IngestFastPath
    from logferry.service.runtime import Service

    service = Service(load_config(config_path))
    await service.start()
    try:
        fastapi_app = create_app(service)
        apps = {"fastapi_route": fastapi_app, "fast_path": IngestFastPath(fastapi_app, service)}
        body = b"".join(
            f"{customer} {i:05d} GET /assets/img/logo.png HTTP/1.1 200 5123 Mozilla/5.0\n".encode()
            for i in range(args.lines)
        )
        headers = [
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
        ]

        async def turn(app: Any, n: int) -> None:
            path = f"/v1/ingest/{customer}/s3"
            for _ in range(n // args.concurrency):
                answers = await asyncio.gather(
                    *(
                        asgi_request(app, "POST", path, headers, body)
                        for _ in range(args.concurrency)
                    )
                )
                for sent in answers:
                    if sent[0]["status"] != 202:
                        raise SystemExit(f"ingest answered {sent}")

        for app in apps.values():  # warm both (first append opens the spool, first token lookup)
            await turn(app, 50 * args.concurrency)
        cpu = dict.fromkeys(apps, 0.0)
        done = dict.fromkeys(apps, 0)
        speeds = [box_speed()]
        while min(done.values()) < args.requests:
            for label, app in apps.items():
                t = time.process_time()
                await turn(app, args.batch)
                cpu[label] += time.process_time() - t
                done[label] += args.batch
        speeds.append(box_speed())
        out: dict[str, Any] = {
            label: {
                "requests": done[label],
                "cpu_us_per_request": round(cpu[label] / done[label] * 1e6),
                "cpu_us_per_line": round(cpu[label] / done[label] / args.lines * 1e6, 1),
            }
            for label in apps
        }
        out["speed_before_after"] = speeds
        if args.profile:
            for label, app in apps.items():
                prof = cProfile.Profile(time.thread_time)
                prof.enable()
                await turn(app, min(args.requests, 2000))
                prof.disable()
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
                out[label]["profile_top_own"] = text.getvalue().splitlines()[:40]
        return out
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    emulator = start_emulator()
    try:
        ((customer, bucket, role),) = make_s3_tenants(emulator, 1, "irc")
        work = Path(tempfile.mkdtemp(prefix="logferry-bench-irc-"))
        config = serve_config(
            emulator,
            work,
            customers=[
                {
                    "id": customer,
                    "token_env": "IRC_TOKEN",
                    "endpoints": [
                        {
                            "type": "s3",
                            "name": "s3",
                            "bucket_name": bucket,
                            "iam_role": role,
                            "period": 3600,
                        }
                    ],
                }
            ],
            log={"level": "warning"},
        )
        path = work / "logferry.toml"
        path.write_text(to_toml(config))
        os.environ.update(emulator.vendor.env(emulator.url))
        os.environ.pop("AWS_ENDPOINT_URL", None)
        os.environ["IRC_TOKEN"] = TOKEN
        os.environ[config["auth"]["admin_token_env"]] = ADMIN_TOKEN
        note(f"{args.requests} requests of {args.lines} lines per app, interleaved")
        import uvloop

        doc = uvloop.run(measure(args, path, customer))
    finally:
        emulator.stop()
    doc.update(
        {"lines_per_request": args.lines, "concurrency": args.concurrency, "batch": args.batch}
    )
    result = write_results(args.name, doc, machine)
    before, after = doc["fastapi_route"], doc["fast_path"]
    print_table(
        "CPU per small ingest request (whole process, in-process ASGI)",
        [
            (
                "box loop s (before / after)",
                " / ".join(str(s["python_loop_cpu_s"]) for s in doc["speed_before_after"]),
            ),
            ("FastAPI route µs/request", before["cpu_us_per_request"]),
            ("fast path µs/request", after["cpu_us_per_request"]),
            ("ratio", round(before["cpu_us_per_request"] / after["cpu_us_per_request"], 2)),
        ],
    )
    print(f"\nresults: {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
