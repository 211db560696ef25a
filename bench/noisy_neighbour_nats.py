"""Issue 29 must-show 7 as figures: the quiet tenants' 202 latency on the NATS backend, alone
and while a tenant whose role is denied floods (its requests answered 429 once over quota).

Not a test (the test, `tests/test_nats_serve_proof.py::test_a_tenant_flooding_with_its_role_
denied_gets_429_alone`, asserts the status codes and the delivery; timing lives here). Starts
the emulator, NATS (1 node, or 3 with --nats-nodes 3), one `logferry serve --role ingest` and
one `--role deliver`, three customers from the config:
- A: an S3 endpoint whose role trusts another external ID (AssumeRole denied, its backlog only
  grows), spool_max_bytes 8 MiB, `--flooders` processes posting 250 KB bodies non-stop;
- B and C: working S3 endpoints, each posting one small body every 0.25 s.
Phase 1 measures B and C alone (`--seconds`), phase 2 during A's flood.

    PYTHONPATH=src .venv/bin/python bench/noisy_neighbour_nats.py [--seconds 30] [--flooders 4]

`--flooder-cpu F` gives the flood processes F cores in all (one cgroup quota; root only): in
production the flooding tenant's machines are not serve's, and on this 2-core box four flood
processes otherwise take the very cores serve answers B and C with. Their request rate is
reported beside the latencies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CpuBudget,
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
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from noisy_neighbour import percentiles

QUIET = ("cust-b", "cust-c")
TOKENS = {
    "TOKEN_A": "bench-nats-noisy-a-000000000000",
    "TOKEN_B": "bench-nats-quiet-b-111111111111",
    "TOKEN_C": "bench-nats-quiet-c-222222222222",
}
FLOOD_BODY = b"".join(b"a-%08d " % i + b"x" * 89 + b"\n" for i in range(2500))  # 250 KB


class Node(Serve):
    """`logferry serve --role ROLE`."""

    def __init__(self, *args: Any, role: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.role = role

    @property
    def command(self) -> list[str]:
        return [*super().command, "--role", self.role]


def customers(roles: dict[str, str]) -> list[dict[str, Any]]:
    def s3(customer: str) -> dict[str, Any]:
        return {
            "type": "s3",
            "name": "s3",
            "bucket_name": f"bench-nn-{customer}",
            "iam_role": roles[customer],
            "path": "logs/",
            "period": 2,
        }

    out: list[dict[str, Any]] = [
        {
            "id": "cust-a",
            "token_env": "TOKEN_A",
            "spool_max_bytes": "8MiB",
            "endpoints": [s3("cust-a")],
        }
    ]
    for customer, token in zip(QUIET, ("TOKEN_B", "TOKEN_C"), strict=True):
        out.append({"id": customer, "token_env": token, "endpoints": [s3(customer)]})
    return out


def quiet_phase(ingest: Node, seconds: float, tag: str) -> tuple[list[float], Counter[int], int]:
    """B and C each post one line every 0.25 s for `seconds`: their latencies and codes."""
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    sent = [0]
    lock = threading.Lock()

    def one(customer: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=ingest.url, headers=headers, timeout=60) as client:
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                r = client.post(
                    f"/v1/ingest/{customer}/s3", content=b"%s-%06d\n" % (tag.encode(), i)
                )
                with lock:
                    latencies.append(time.monotonic() - t0)
                    codes[r.status_code] += 1
                    sent[0] += r.status_code == 202
                i += 1
                time.sleep(0.25)

    threads = [
        threading.Thread(target=one, args=(c, TOKENS[t]))
        for c, t in zip(QUIET, ("TOKEN_B", "TOKEN_C"), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, codes, sent[0]


def flood(url: str, token: str, stop: Any, results: Any) -> None:
    """One flooder process: A's 250 KB bodies back to back until `stop`; its status counts."""
    codes: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        while not stop.is_set():
            codes[client.post("/v1/ingest/cust-a/s3", content=FLOOD_BODY).status_code] += 1
    results.put(dict(codes))


def run(
    emulator: Emulator,
    nats: NatsCluster,
    work: Path,
    args: argparse.Namespace,
    budget: CpuBudget | None = None,
) -> dict[str, Any]:
    roles = {"cust-a": make_s3_role(emulator, "bench-nn-cust-a", "someone-else", "nn-denied")}
    for customer in QUIET:
        roles[customer] = make_s3_role(emulator, f"bench-nn-{customer}", customer, f"nn-{customer}")

    def node(name: str, role: str) -> Node:
        config = serve_config(
            emulator,
            work / name,
            server={"idle_flush_seconds": 1},
            spool={
                "backend": "nats",
                "nats_url": nats.urls,
                "stream_prefix": "NNB",
                "shards": 4,
                "replicas": len(nats.nodes),
                "node_id": name,
                "lease_seconds": 6,
                "heartbeat_seconds": 1,
            },
            customers=customers(roles),
        )
        return Node(emulator, config, work / name, env=TOKENS, role=role)

    ingest = node("ingest", "ingest").start(180)
    deliver = node("deliver-1", "deliver").start(180)
    try:
        note("phase 1: B and C alone")
        alone, alone_codes, sent_alone = quiet_phase(ingest, args.seconds, "alone")
        # The flooders run in processes of their own: threads here would take the GIL from
        # the quiet senders and inflate the very latency this measures.
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        results: Any = ctx.Queue()
        floods = [
            ctx.Process(target=flood, args=(ingest.url, TOKENS["TOKEN_A"], stop, results))
            for _ in range(args.flooders)
        ]
        for process in floods:
            process.start()
        if budget is not None:
            budget.apply([p.pid for p in floods if p.pid is not None], "flooders")
        time.sleep(2)
        note("phase 2: B and C during A's flood")
        flooded, flooded_codes, sent_flooded = quiet_phase(ingest, args.seconds, "flood")
        stop.set()
        a_codes: Counter[int] = Counter()
        for _ in floods:
            a_codes.update(results.get(timeout=120))
        for process in floods:
            process.join(60)
        t_end = time.monotonic()
        total = sent_alone + sent_flooded
        landed = 0
        while time.monotonic() - t_end < 60:
            landed = sum(count_bucket_lines(emulator, f"bench-nn-{c}")["lines"] for c in QUIET)
            if landed >= total:
                break
            time.sleep(0.5)
        return {
            "quiet_alone": {**percentiles(alone), "codes": dict(alone_codes)},
            "quiet_during_flood": {**percentiles(flooded), "codes": dict(flooded_codes)},
            "a_codes": dict(a_codes),
            "quiet_lines_sent": total,
            "quiet_lines_landed": landed,
            "quiet_all_landed_seconds_after_last_post": round(time.monotonic() - t_end, 1),
            "flooders": args.flooders,
            "flooder_cpu": args.flooder_cpu,
            "a_requests_per_second": round(sum(a_codes.values()) / (args.seconds + 2), 1),
            "phase_seconds": args.seconds,
            "nats_nodes": len(nats.nodes),
        }
    finally:
        deliver.terminate()
        ingest.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--nats-nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument(
        "--flooder-cpu",
        type=float,
        default=None,
        metavar="CORES",
        help="the flooders' CPU, all together (a cgroup quota, root only): their machines are "
        "not serve's in production, so on this box they should not take its cores",
    )
    args = parser.parse_args()
    budget = CpuBudget(args.flooder_cpu) if args.flooder_cpu else None
    work = Path(tempfile.mkdtemp(prefix="noisy-nats-"))
    emulator = start_emulator()
    nats = NatsCluster(work / "nats", nodes=args.nats_nodes).start()
    try:
        try:
            doc = run(emulator, nats, work, args, budget)
        finally:
            if budget is not None:
                budget.remove()
        alone, flood = doc["quiet_alone"], doc["quiet_during_flood"]
        print_table(
            "B and C's ingest latency (ms) on NATS, alone vs during A's flood",
            [
                (
                    "alone p50 / p99 / max",
                    f"{alone.get('p50_ms')} / {alone.get('p99_ms')} / {alone.get('max_ms')}",
                ),
                (
                    "flood p50 / p99 / max",
                    f"{flood.get('p50_ms')} / {flood.get('p99_ms')} / {flood.get('max_ms')}",
                ),
                ("B+C codes alone / during flood", f"{alone['codes']} / {flood['codes']}"),
                ("A codes", doc["a_codes"]),
                (
                    "A requests/s (flooders' CPU)",
                    f"{doc['a_requests_per_second']} ({args.flooder_cpu or 'unbounded'})",
                ),
                (
                    "B+C lines landed / sent",
                    f"{doc['quiet_lines_landed']} / {doc['quiet_lines_sent']}",
                ),
            ],
        )
        print(write_results("noisy_neighbour_nats", doc, machine_info()))
    finally:
        nats.stop()
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
