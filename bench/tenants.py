"""Many tenants: RSS of 10,000 idle configured endpoints, and AssumeRole calls per role.

1. Idle cost: `logferry serve` started with no endpoint, then with `--endpoints` static endpoints
   (half S3, half Kinesis; `--per-customer` per customer, each customer its own roles), each
   measured after /readyz plus `--settle` seconds and one /metrics scrape (which walks every
   endpoint). KiB per endpoint = (RSS with them − RSS without) ÷ endpoints. The second start
   with the same spool directory (endpoints now also in the SQLite store) is measured as well.
2. Credential reuse: `session_duration_seconds = 900` (the shortest STS allows); several S3
   endpoints share one role and several Kinesis endpoints share another; lines are posted to
   every endpoint every second for a while, then nothing for longer than the worker idle exit
   (30 s, so every worker and sink is dropped and rebuilt), then again. AssumeRole calls are
   read from /metrics (`logferry_sts_assume_role_total`, outcome ok) and divided by the roles.

   The broker wraps botocore `RefreshableCredentials` with an advisory window of duration/4 and
   a mandatory one of duration/6, so a 900 s token is refreshed once 675 s have passed. Runs
   shorter than that must show exactly one call per role; `--lifetime-seconds 1000` shows the
   refresh (two calls per role: one per token lifetime).

    .venv/bin/python bench/tenants.py [--endpoints 10000] [--lifetime-seconds 100]
    .venv/bin/python bench/tenants.py --endpoints 0 --lifetime-seconds 1000 --name tenants_lifetime
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from common import (
    Emulator,
    ProcSampler,
    Serve,
    count_bucket_lines,
    count_stream_records,
    machine_info,
    make_kinesis_role,
    make_s3_role,
    mib,
    note,
    print_table,
    read_rss,
    serve_config,
    start_emulator,
    write_results,
)

TOKEN = "bench-customer-token-tenants-000"
KiB = 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, default=10_000)
    p.add_argument("--per-customer", type=int, default=10)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--lifetime-seconds", type=float, default=100.0)
    p.add_argument("--sharing", type=int, default=5, help="endpoints per shared role (each type)")
    p.add_argument("--name", default="tenants", help="results file name")
    return p.parse_args(argv)


def static_customers(n: int, per_customer: int) -> list[dict[str, Any]]:
    """n endpoints, alternating S3 / Kinesis, `per_customer` per customer (roles per customer)."""
    customers = []
    for c in range((n + per_customer - 1) // per_customer):
        account = f"{100000000000 + c:012d}"
        endpoints = []
        for e in range(min(per_customer, n - c * per_customer)):
            if e % 2 == 0:
                endpoints.append(
                    {
                        "type": "s3",
                        "name": f"s3-{e}",
                        "bucket_name": f"tenant-{c}-logs",
                        "iam_role": f"arn:aws:iam::{account}:role/logferry-s3-logging",
                        "path": f"cdn/{e}/%Y/%m/%d/",
                        "period": 300,
                        "gzip_level": 3,
                    }
                )
            else:
                endpoints.append(
                    {
                        "type": "kinesis",
                        "name": f"kin-{e}",
                        "topic": f"tenant-{c}-stream",
                        "region": "us-east-1",
                        "iam_role": f"arn:aws:iam::{account}:role/logferry-kinesis-logging",
                    }
                )
        customers.append({"id": f"tenant-{c:05d}", "endpoints": endpoints})
    return customers


def idle_rss(
    emulator: Emulator, workdir: Path, customers: list[dict[str, Any]], settle: float, restart: bool
) -> dict[str, Any]:
    config = serve_config(emulator, workdir, customers=customers)
    runs = []
    for attempt in range(2 if restart else 1):
        serve = Serve(emulator, config, workdir).spawn()
        sampler = ProcSampler({"serve": serve.pid}).start()
        try:
            serve.wait_ready(timeout=900)
            time.sleep(settle)
            scrape = httpx.get(f"{serve.url}/metrics", timeout=120)
            time.sleep(1.0)
            rss, hwm = read_rss(serve.pid)
            fds = len(list(Path(f"/proc/{serve.pid}/fd").iterdir()))
            threads = len(list(Path(f"/proc/{serve.pid}/task").iterdir()))
            runs.append(
                {
                    "start": "first" if attempt == 0 else "restart",
                    "ready_seconds": round(serve.ready_seconds or 0, 1),
                    "rss_mib": mib(rss),
                    "rss_bytes": rss,
                    "peak_rss_mib": mib(max(hwm, sampler.peak_rss("serve"))),
                    "fds": fds,
                    "threads": threads,
                    "metrics_bytes": len(scrape.content),
                }
            )
        finally:
            sampler.stop()
            serve.terminate()
    return {"runs": runs}


def assume_role_count(
    emulator: Emulator, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    customer = "bench-customer"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3_role = make_s3_role(emulator, bucket, customer, "bench-s3-shared")
    stream_arn, kin_role = make_kinesis_role(
        emulator, f"shared-{uuid.uuid4().hex[:6]}", 2, customer, "bench-kinesis-shared"
    )
    stream = stream_arn.rsplit("/", 1)[1]
    endpoints: list[dict[str, Any]] = []
    for i in range(args.sharing):
        endpoints.append(
            {
                "type": "s3",
                "name": f"s3-{i}",
                "bucket_name": bucket,
                "iam_role": s3_role,
                "path": f"e{i}/",
                "period": 5,
            }
        )
        endpoints.append(
            {
                "type": "kinesis",
                "name": f"kin-{i}",
                "topic": stream,
                "region": "us-east-1",
                "iam_role": kin_role,
            }
        )
    config = serve_config(
        emulator,
        workdir,
        vendor={"session_duration_seconds": 900},
        customers=[{"id": customer, "token_env": "BENCH_TOKEN", "endpoints": endpoints}],
    )
    serve = Serve(emulator, config, workdir, env={"BENCH_TOKEN": TOKEN}).start()
    sent = 0
    timeline: list[tuple[float, float]] = []
    try:
        t0 = time.monotonic()
        # Active for 40 %, idle past the 30 s worker exit, active again for the rest.
        active1 = args.lifetime_seconds * 0.4
        pause = 35.0
        active2 = max(10.0, args.lifetime_seconds - active1 - pause)
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:

            def burst(seconds: float) -> None:
                nonlocal sent
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    tick = time.monotonic()
                    for ep in endpoints:
                        body = b"".join(
                            f"{ep['name']} line {sent + i} GET /x 200\n".encode() for i in range(50)
                        )
                        r = client.post(
                            f"{serve.url}/v1/ingest/{customer}/{ep['name']}", content=body
                        )
                        r.raise_for_status()
                        sent += 50
                    timeline.append(
                        (
                            time.monotonic() - t0,
                            serve.metric_sum("logferry_sts_assume_role_total", outcome="ok"),
                        )
                    )
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))

            note(f"credential reuse: {len(endpoints)} endpoints on 2 roles, active {active1:.0f}s")
            burst(active1)
            note(f"idle {pause:.0f}s (workers exit after 30 s idle)")
            time.sleep(pause)
            idle_metrics = serve.metrics()
            states = {
                f"{lab.get('type')}/{lab.get('state')}": v
                for n, lab, v in idle_metrics
                if n == "logferry_endpoints"
            }
            note(f"active again {active2:.0f}s")
            burst(active2)
        elapsed = time.monotonic() - t0
        total = sent

        def done() -> bool:
            return serve.metric_sum("logferry_delivered_lines_total") >= total

        deadline = time.monotonic() + 120
        while not done() and time.monotonic() < deadline:
            time.sleep(0.5)
        calls = [(lab, v) for n, lab, v in serve.metrics() if n == "logferry_sts_assume_role_total"]
        delivered = serve.metric_sum("logferry_delivered_lines_total")
    finally:
        serve.terminate()
    ok_calls = sum(v for lab, v in calls if lab.get("outcome") == "ok")
    in_bucket = count_bucket_lines(emulator, bucket)["lines"]
    in_stream = count_stream_records(emulator, stream_arn)["records"]
    return {
        "endpoints": len(endpoints),
        "roles": 2,
        "session_duration_seconds": 900,
        "advisory_refresh_after_seconds": 900 - 900 // 4,
        "mandatory_refresh_after_seconds": 900 - 900 // 6,
        "simulated_seconds": round(elapsed, 1),
        "lines_sent": total,
        "lines_delivered": int(delivered),
        "lines_in_bucket_and_stream": in_bucket + in_stream,
        "assume_role_ok": int(ok_calls),
        "assume_role_by_region_outcome": {
            f"{lab['region']}/{lab['outcome']}": v for lab, v in calls
        },
        "assume_role_per_role": ok_calls / 2,
        "endpoint_states_while_idle": states,
        "calls_timeline": timeline[::10],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    emulator = start_emulator()
    root = Path(tempfile.mkdtemp(prefix="logferry-bench-tenants-"))
    customers = static_customers(args.endpoints, args.per_customer)
    empty = full = None
    try:
        if args.endpoints > 0:  # --endpoints 0: only the credential part (long lifetime runs)
            note("serve with no endpoint")
            empty = idle_rss(emulator, root / "empty", [], args.settle, restart=False)
            note(f"serve with {args.endpoints:,} static endpoints")
            full = idle_rss(emulator, root / "full", customers, args.settle, restart=True)
        reuse = assume_role_count(emulator, root / "sts", args)
    finally:
        emulator.stop()
    lifetimes = math.ceil(reuse["simulated_seconds"] / reuse["session_duration_seconds"])
    reuse["token_lifetimes_spanned"] = lifetimes
    doc: dict[str, Any] = {"endpoints": args.endpoints, "customers": len(customers)}
    rows: list[tuple[str, Any]] = []
    targets: dict[str, bool] = {}
    if empty is not None and full is not None:
        base = empty["runs"][0]["rss_bytes"]
        per = [
            {**run, "kib_per_endpoint": round((run["rss_bytes"] - base) / KiB / args.endpoints, 2)}
            for run in full["runs"]
        ]
        doc.update(
            {
                "mix": "half S3 (gzip_level 3, period 300, strftime path), half Kinesis",
                "no_endpoints": empty["runs"][0],
                "with_endpoints": per,
                "kib_per_endpoint": max(r["kib_per_endpoint"] for r in per),
            }
        )
        targets["<=10KiB_per_idle_endpoint"] = doc["kib_per_endpoint"] <= 10
        rows.append(("RSS MiB, no endpoint", empty["runs"][0]["rss_mib"]))
        for run in per:
            start = run["start"]
            rows += [
                (f"RSS MiB, {args.endpoints:,} endpoints ({start} start)", run["rss_mib"]),
                (f"  KiB per endpoint ({start})", run["kib_per_endpoint"]),
                (
                    f"  ready after s / fds / threads ({start})",
                    f"{run['ready_seconds']} / {run['fds']} / {run['threads']}",
                ),
            ]
    doc["credentials"] = reuse
    targets["<=1_assume_role_per_role_per_lifetime"] = reuse["assume_role_per_role"] <= lifetimes
    doc["targets"] = targets
    path = write_results(args.name, doc, machine)
    rows += [
        ("AssumeRole ok calls / roles", f"{reuse['assume_role_ok']} / {reuse['roles']}"),
        ("  over s of delivery (incl. idle exit)", reuse["simulated_seconds"]),
        ("  900-s token lifetimes spanned", lifetimes),
        ("  endpoints sharing the roles", reuse["endpoints"]),
        (
            "  lines sent / delivered / counted",
            f"{reuse['lines_sent']:,} / {reuse['lines_delivered']:,} / "
            f"{reuse['lines_in_bucket_and_stream']:,}",
        ),
        *((f"target {name}", met) for name, met in targets.items()),
    ]
    print_table(f"Tenants ({args.endpoints:,} endpoints, {len(customers):,} customers)", rows)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
