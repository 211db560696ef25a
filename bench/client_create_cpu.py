"""CPU to build one customer identity's S3 client, in process, no network: what every first
activation of a customer pays (docs/performance.md, eleventh pass).

Each round makes `--clients` `AwsClients` with their own static credentials, the vendor's
endpoint URL and `DELIVERY_CONFIG` (the broker's), and builds each one's S3 client, as a first
activation does. One warm-up client first (imports, shared models). Reported: process CPU per
client, median over the rounds. Compare two trees by running the same command with
`PYTHONPATH=<other src>` in turn (interleaved: A, B, A, B …), as for `bench/spread_appends.py`.

    .venv/bin/python bench/client_create_cpu.py [--clients 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from botocore.credentials import Credentials

from common import machine_info, print_table, write_results
from logferry.aws.clients import DELIVERY_CONFIG, AwsClients, AwsTarget


def one_round(clients: int) -> float:
    """Process CPU seconds per client for `clients` new identities' S3 clients."""
    target = AwsTarget(endpoint_url="http://127.0.0.1:9")
    made = []
    began = time.process_time()
    for i in range(clients):
        identity = AwsClients(
            Credentials(f"AKIA{i:016d}", "secret"), target, config=DELIVERY_CONFIG
        )
        made.append(identity.client("s3", "us-east-1"))
    spent = time.process_time() - began
    for client in made:
        client.close()
    return spent / clients


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--name", default="client_create_cpu")
    args = p.parse_args()
    machine = machine_info()
    one_round(1)  # imports, the shared model session, parsed models
    rounds = [one_round(args.clients) * 1e3 for _ in range(args.rounds)]
    doc = {
        "clients_per_round": args.clients,
        "cpu_ms_per_client": [round(x, 3) for x in rounds],
        "cpu_ms_per_client_median": round(statistics.median(rounds), 3),
        "src": os.environ.get("PYTHONPATH") or "this worktree",
        "loadavg": os.getloadavg(),
    }
    path = write_results(args.name, doc, machine)
    print_table(
        "S3 client per identity",
        [
            ("CPU ms per client, rounds", " / ".join(f"{x:.2f}" for x in rounds)),
            ("median", f"{doc['cpu_ms_per_client_median']:.2f}"),
            ("load average", " ".join(f"{x:.2f}" for x in doc["loadavg"])),
        ],
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
