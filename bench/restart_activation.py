"""A restart of `logferry serve` with N active customers: what re-activating them costs.

Each of N customers (own bucket, own role, S3 endpoint, period 1 s) sends one 20-line request;
serve delivers it; serve is stopped and started again on the same state, and every customer
sends one more request. For each of the two rounds: serve's CPU from the first request until
every line is delivered, and the S3 calls serve made into the customers' accounts, counted by a
recording loopback proxy between serve and the emulator. Round 2 is what a deploy costs a
vendor: every active endpoint is activated again (AssumeRole, client, spool, maybe a write
probe) at once.

    .venv/bin/python bench/restart_activation.py --customers 200
    .venv/bin/python bench/restart_activation.py --customers 200 --compare-src /tmp/before/src
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from common import (
    Emulator,
    Serve,
    machine_info,
    make_s3_tenants,
    note,
    print_table,
    read_cpu_split,
    s3_tenant_customers,
    serve_config,
    start_emulator,
    write_results,
)
from logferry.local.latency_proxy import ProxyConfig, ProxyRequest, ProxyResponse, latency_proxy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--lines", type=int, default=20, help="lines per request")
    parser.add_argument(
        "--compare-src",
        type=Path,
        default=None,
        help="also run serve importing logferry from this src/ directory (after this tree's)",
    )
    parser.add_argument("--name", default="restart_activation")
    return parser.parse_args(argv)


class S3Calls:
    """Proxy middleware: S3 calls by operation (told apart by method and query string)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def __call__(self, request: ProxyRequest, forward: Any) -> ProxyResponse:
        if request.service == "s3":
            with self._lock:
                self.counts[operation(request.method, request.path)] += 1
        return await forward()  # type: ignore[no-any-return]

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self.counts = dict(self.counts), Counter()
        return counts


def operation(method: str, path: str) -> str:
    query = path.partition("?")[2]
    if method == "PUT":
        return "UploadPart" if "uploadId=" in query else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if "uploadId=" in query else "POST"
    if method == "DELETE" and "uploadId=" in query:
        return "AbortMultipartUpload"
    return method


def send_round(
    serve: Serve, tenants: list[tuple[str, str, str]], tokens: list[str], lines: list[bytes]
) -> None:
    body = b"\n".join(lines) + b"\n"

    def one(i: int) -> None:
        url = f"{serve.url}/v1/ingest/{tenants[i][0]}/s3"
        headers = {"Authorization": f"Bearer {tokens[i]}"}
        answer = httpx.post(url, content=body, headers=headers, timeout=120)
        if answer.status_code != 202:
            raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(len(tenants))))


def run(
    args: argparse.Namespace,
    emulator: Emulator,
    tenants: list[tuple[str, str, str]],
    tokens: list[str],
    label: str,
    src: Path | None,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"logferry-bench-restart-{label}-"))
    env = {f"TENANT_TOKEN_{i}": token for i, token in enumerate(tokens)}
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    calls = S3Calls()
    rounds: list[dict[str, Any]] = []
    with latency_proxy(emulator.url, ProxyConfig(), middlewares=[calls]) as proxy:
        customers = s3_tenant_customers(tenants, f"{label}/", 1)
        config = serve_config(
            emulator,
            workdir,
            aws={"endpoint_url": proxy.url},
            customers=customers,
            log={"level": "warning"},
        )
        expected = 0
        for round_no in (1, 2):
            serve = Serve(emulator, config, workdir, env=env).start(timeout=300)
            try:
                calls.take()
                user0, sys0 = read_cpu_split(serve.pid)
                t0 = time.monotonic()
                lines = [f"{label} round {round_no} line {j}".encode() for j in range(args.lines)]
                send_round(serve, tenants, tokens, lines)
                expected += len(tenants) * args.lines
                while (
                    serve.metric_sum("logferry_delivered_lines_total") < len(tenants) * args.lines
                ):
                    if time.monotonic() - t0 > 900:
                        raise TimeoutError(f"round {round_no}: not delivered within 900 s")
                    time.sleep(0.5)
                seconds = time.monotonic() - t0
                user1, sys1 = read_cpu_split(serve.pid)
                s3 = calls.take()
            finally:
                serve.terminate()
            cpu = (user1 - user0) + (sys1 - sys0)
            rounds.append(
                {
                    "round": round_no,
                    "seconds_to_delivered": round(seconds, 2),
                    "serve_cpu_seconds": round(cpu, 2),
                    "serve_cpu_ms_per_customer": round(1000 * cpu / len(tenants), 1),
                    "s3_calls": s3,
                    "s3_calls_per_customer": round(sum(s3.values()) / len(tenants), 2),
                }
            )
            note(f"{label} round {round_no}: {rounds[-1]}")
    landed = count_landed(emulator, tenants, f"{label}/")
    return {
        "serve_src": str(src) if src else "this worktree",
        "rounds": rounds,
        "lines_sent": expected,
        "lines_landed": sum(landed.values()),
        "lines_duplicated": sum(n - 1 for n in landed.values() if n > 1),
        "exactly_once": len(landed) == expected and all(n == 1 for n in landed.values()),
    }


def count_landed(
    emulator: Emulator, tenants: list[tuple[str, str, str]], prefix: str
) -> Counter[tuple[str, bytes]]:
    s3 = emulator.client("s3")

    def one(bucket: str) -> list[tuple[str, bytes]]:
        found: list[tuple[str, bytes]] = []
        for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found += [(bucket, raw) for raw in body.split(b"\n")[:-1]]
        return found

    counts: Counter[tuple[str, bytes]] = Counter()
    with ThreadPoolExecutor(8) as pool:
        for found in pool.map(one, [bucket for _, bucket, _ in tenants]):
            counts.update(found)
    return counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    with start_emulator() as emulator:
        note(f"provisioning {args.customers} customers (bucket + role each)")
        tag = f"rs{uuid.uuid4().hex[:5]}"
        tenants = make_s3_tenants(emulator, args.customers, tag)
        tokens = [f"tok-{tag}-{i:05d}-{uuid.uuid4().hex}" for i in range(len(tenants))]
        doc: dict[str, Any] = {"customers": args.customers, "lines_per_request": args.lines}
        doc["runs"] = [run(args, emulator, tenants, tokens, "new", None)]
        if args.compare_src is not None:
            doc["runs"].append(run(args, emulator, tenants, tokens, "old", args.compare_src))
    rows: list[tuple[str, Any]] = [
        ("customers × lines per request", f"{args.customers} × {args.lines}"),
        ("box speed: Python loop CPU s", machine["speed"]["python_loop_cpu_s"]),
    ]
    for result in doc["runs"]:
        src = result["serve_src"]
        for r in result["rounds"]:
            calls = ", ".join(f"{k} {v}" for k, v in sorted(r["s3_calls"].items()))
            rows.append(
                (
                    f"{src}: round {r['round']} CPU ms per customer / S3 calls",
                    f"{r['serve_cpu_ms_per_customer']} / {calls}",
                )
            )
        rows.append(
            (
                f"{src}: lines sent / landed / duplicated",
                f"{result['lines_sent']:,} / {result['lines_landed']:,} / "
                f"{result['lines_duplicated']}",
            )
        )
    print_table("Re-activation after a restart", rows)
    print(f"\nresults: {write_results(args.name, doc, machine)}")
    return 0 if all(r["exactly_once"] for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
