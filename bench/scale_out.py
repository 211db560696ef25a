"""Scale-out on NATS: delivered lines/s with 1 vs 2 delivery nodes over N S3 endpoints, every
AWS call 50 ms late (issue 29, must-show 6), and the rebalance time when the second node joins.

Not a test. Starts the patched emulator, `logferry.local.latency_proxy` in front of it (every
service: `--default-delay-ms`, S3 as well), a NATS JetStream server (or 3 with --nats-nodes 3),
one `logferry serve --role ingest` and 1 or 2 `logferry serve --role deliver` processes sharing
the NATS spool and registry (a fresh stream prefix and fresh tenants per run). N customers, one
S3 endpoint each (the config's [[customers]], made with our own `role create` code).

Each run: the delivery node(s) start and own every endpoint (with 2: the first owns them all,
then the second starts and the time until ownership is split is the rebalance figure); then
loggen lines are posted to the ingest node, `--lines-each` per endpoint on 2 connections per
endpoint, and the figure is lines / seconds from the first request until the deliver nodes'
`logferry_delivered_lines` sum reaches the total. Ingest time is reported beside it (if it is
close to the delivery time, ingest was the limit, not delivery).

    .venv/bin/python bench/scale_out.py --endpoints 20 --lines-each 20000 --delay-ms 50

`--backlog-first` measures delivery alone: once ownership has settled the delivery nodes are
paused (SIGSTOP; the lease is 60 s so nobody takes over), every line is ingested, and the clock
starts when they resume (SIGCONT). Ingest then no longer shares the two cores with delivery, and
the run reports the CPU seconds of each delivery node and the whole box's busy share over the
delivery window, which says whether the cores or the AWS latency bound it.

On a shared 2-core box every process competes for the same two cores: read the ratio with the
load average the results file records.

`--node-cpu F` gives each delivery node a CPU budget of its own, as if it ran on a machine of F
cores: its process goes into a cgroup of its own (the `cpu` controller, v1 or v2; needs root)
with a CFS quota of F × period. Without it two delivery nodes on this box share the same two
cores with the emulator and NATS, and a second node only adds contention; with a budget small
enough that the emulator and NATS keep up, the run shows what the delivery tier itself scales
to. It does not model a faster emulator or NATS: read it with the box's busy share.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CpuBudget,
    Serve,
    loggen_bodies,
    machine_info,
    make_s3_tenants,
    note,
    post_bodies,
    proxy_process,
    read_cpu,
    report,
    s3_tenant_customers,
    serve_config,
    start_emulator,
    wait_until,
)
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster


class Node(Serve):
    """`logferry serve --role ROLE`."""

    def __init__(self, *args: Any, role: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.role = role

    @property
    def command(self) -> list[str]:
        return [*super().command, "--role", self.role]

    def owned(self) -> float:
        return self.metric_sum("logferry_nats_owned_endpoints")


def run(
    emulator: Emulator,
    proxy_url: str,
    nats: NatsCluster,
    work: Path,
    *,
    deliver_nodes: int,
    endpoints: int,
    lines_each: int,
    bodies: list[tuple[bytes, int]],
    backlog_first: bool = False,
    budget: CpuBudget | None = None,
) -> dict[str, Any]:
    tag = f"so{deliver_nodes}{secrets.token_hex(2)}"
    note(f"run {tag}: {endpoints} tenants, {deliver_nodes} delivery node(s)")
    tenants = make_s3_tenants(emulator, endpoints, tag)
    tokens = {f"TENANT_TOKEN_{i}": f"token-{tag}-{i:05d}-0123456789" for i in range(endpoints)}
    prefix = tag.upper().replace("-", "")

    def node(name: str, role: str) -> Node:
        config = serve_config(
            emulator,
            work / tag / name,
            aws={"endpoint_url": proxy_url},
            # One loader process sends for every tenant: no per-source share of the body budget.
            server={
                "idle_flush_seconds": 1,
                "delivery_threads": 16,
                "max_body_bytes_in_flight": "512MiB",
                "max_body_bytes_in_flight_per_source": 0,
            },
            spool={
                "backend": "nats",
                "nats_url": nats.urls,
                "stream_prefix": prefix,
                "shards": 4,
                "replicas": len(nats.nodes),
                "node_id": name,
                # Paused through the whole ingest with --backlog-first: no takeover meanwhile.
                "lease_seconds": 60 if backlog_first else 6,
                "heartbeat_seconds": 1,
            },
            customers=s3_tenant_customers(tenants, "logs/", 3600),
        )
        made = Node(emulator, config, work / tag / name, env=tokens, role=role)
        if budget is not None and role == "deliver":
            started = made.start()
            budget.apply(started.pid, f"{tag}-{name}")
            return started
        return made

    def started(name: str, role: str) -> Node:
        made = node(name, role)
        return made if made.process is not None else made.start()

    ingester = started("ingest", "ingest")
    delivery = [started("deliver-1", "deliver")]
    try:
        return _measure(
            tenants,
            tokens,
            ingester,
            delivery,
            started,
            endpoints,
            lines_each,
            bodies,
            deliver_nodes,
            backlog_first,
        )
    finally:
        for d in [*delivery, ingester]:
            d.terminate()
        if budget is not None:
            budget.remove()


def _measure(
    tenants: list[tuple[str, str, str]],
    tokens: dict[str, str],
    ingester: Node,
    delivery: list[Node],
    node: Any,
    endpoints: int,
    lines_each: int,
    bodies: list[tuple[bytes, int]],
    deliver_nodes: int,
    backlog_first: bool,
) -> dict[str, Any]:
    wait_until(lambda: delivery[0].owned() == endpoints, 60, what="first node owns all")
    rebalance = None
    split: list[float] = []
    if deliver_nodes == 2:
        joined = time.monotonic()
        delivery.append(node("deliver-2", "deliver"))  # started (and budgeted) by `run`

        # Settled: every endpoint owned once, both nodes own some, no change for 3 s (three
        # heartbeats); the rebalance time is the last change's.
        last: list[float] = []
        changed = joined

        def settled() -> bool:
            nonlocal last, changed
            owned = [d.owned() for d in delivery]
            now = time.monotonic()
            if owned != last:
                last, changed = owned, now
            return sum(owned) == endpoints and min(owned) > 0 and now - changed >= 3

        wait_until(settled, 120, interval=0.1, what="ownership split")
        rebalance = changed - joined
        split = last
        note(f"rebalance: {rebalance:.1f} s, split {split}")
    total = lines_each * endpoints
    results: list[Any] = [None] * endpoints

    def send(i: int) -> None:
        customer = tenants[i][0]
        results[i] = post_bodies(
            f"{ingester.url}/v1/ingest/{customer}/s3",
            tokens[f"TENANT_TOKEN_{i}"],
            bodies,
            connections=2,
        )

    if backlog_first:
        for d in delivery:
            os.kill(d.pid, signal.SIGSTOP)
    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(endpoints)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ingest_seconds = time.monotonic() - started
    cpu_before: list[float] = []
    busy_before = _box_busy()
    if backlog_first:
        cpu_before = [read_cpu(d.pid) for d in delivery]
        started = time.monotonic()
        for d in delivery:
            os.kill(d.pid, signal.SIGCONT)
    accepted = sum(r.accepted_lines for r in results)
    errors = [e for r in results for e in r.errors]
    if accepted != total or errors:
        raise SystemExit(f"ingest: {accepted} of {total} lines accepted; {errors[:3]}")

    def delivered() -> float:
        return sum(d.metric_sum("logferry_delivered_lines_total") for d in delivery)

    wait_until(lambda: delivered() >= total, 1800, interval=0.5, what="all delivered")
    seconds = time.monotonic() - started
    busy = _box_busy()
    extra: dict[str, Any] = {}
    if backlog_first:
        extra = {
            "delivery_cpu_seconds": [
                round(read_cpu(d.pid) - b, 2) for d, b in zip(delivery, cpu_before, strict=True)
            ],
            "box_busy_share": round(
                (busy[0] - busy_before[0]) / max(1e-9, busy[1] - busy_before[1]), 3
            ),
        }
    return {
        **extra,
        "deliver_nodes": deliver_nodes,
        "lines": total,
        "ingest_seconds": round(ingest_seconds, 2),
        "delivery_seconds": round(seconds, 2),
        "lines_per_second": round(total / seconds),
        "rebalance_seconds": None if rebalance is None else round(rebalance, 2),
        "ownership_split": split,
    }


def _box_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU since boot (/proc/stat): the box's utilisation."""
    first = Path("/proc/stat").read_text().splitlines()[0]
    fields = [float(x) for x in first.split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--lines-each", type=int, default=20_000)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--nats-nodes", type=int, default=1, choices=(1, 3))
    parser.add_argument(
        "--backlog-first",
        action="store_true",
        help="pause the delivery nodes while every line is ingested; time delivery alone",
    )
    parser.add_argument(
        "--node-cpu",
        type=float,
        default=None,
        metavar="CORES",
        help="each delivery node's own CPU budget (a cgroup quota, root only), e.g. 0.2",
    )
    args = parser.parse_args()
    machine = machine_info()
    bodies = loggen_bodies(args.lines_each, 256 * 1024)
    emulator = start_emulator()
    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    nats = NatsCluster(work / "nats", nodes=args.nats_nodes).start()
    budget = CpuBudget(args.node_cpu) if args.node_cpu else None
    try:
        delay = args.delay_ms
        with proxy_process(
            emulator.url, s3_delay_ms=delay, sts_delay_ms=delay, default_delay_ms=delay
        ) as proxy_url:
            runs = [
                run(
                    emulator,
                    proxy_url,
                    nats,
                    work,
                    deliver_nodes=n,
                    endpoints=args.endpoints,
                    lines_each=args.lines_each,
                    bodies=bodies,
                    backlog_first=args.backlog_first,
                    budget=budget,
                )
                for n in (1, 2)
            ]
    finally:
        nats.stop()
        emulator.stop()
    one, two = runs
    ratio = two["lines_per_second"] / one["lines_per_second"]
    rows = [
        ("endpoints", args.endpoints),
        ("lines per endpoint", args.lines_each),
        ("AWS delay per call (ms)", args.delay_ms),
        ("NATS nodes", args.nats_nodes),
        ("CPU budget per delivery node (cores)", args.node_cpu or "none (shares the box)"),
        ("1 delivery node: lines/s", one["lines_per_second"]),
        (
            "1 delivery node: ingest s / delivered s",
            f"{one['ingest_seconds']} / {one['delivery_seconds']}",
        ),
        ("2 delivery nodes: lines/s", two["lines_per_second"]),
        (
            "2 delivery nodes: ingest s / delivered s",
            f"{two['ingest_seconds']} / {two['delivery_seconds']}",
        ),
        ("ratio 2 / 1", round(ratio, 2)),
        (
            "delivery CPU s per node (1 / 2 nodes)",
            f"{one.get('delivery_cpu_seconds')} / {two.get('delivery_cpu_seconds')}",
        ),
        (
            "box busy share while delivering (1 / 2 nodes)",
            f"{one.get('box_busy_share')} / {two.get('box_busy_share')}",
        ),
        ("rebalance when the second joins (s)", two["rebalance_seconds"]),
        ("ownership split", two["ownership_split"]),
    ]
    doc = {"args": vars(args), "runs": runs, "ratio": round(ratio, 2)}
    return report("Scale-out on NATS: delivery lines/s", rows, "scale_out", doc, machine)


if __name__ == "__main__":
    sys.exit(main())
