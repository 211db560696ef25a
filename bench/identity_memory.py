"""Memory per active identity: N customer roles, each with an S3 and a Kinesis client, in-process.

Each identity is what `logferry serve` holds for an active customer: refreshable credentials
from the credential broker (a real AssumeRole against the emulator, external ID required) and
the clients built on them by `broker.clients()`, each used once for real (S3 PutObject into the
customer's bucket; Kinesis ListShards, which the S3-only role is denied: it still loads the
operation, signs, sends and parses). One identity is made first as warm-up (botocore imports,
shared models), then N more; the cost per identity is the RSS growth ÷ N, after a GC.
`--trace K` repeats the growth for K more identities under tracemalloc and lists where the
bytes are allocated (tracemalloc slows botocore down ~50×, so K stays small).

    .venv/bin/python bench/identity_memory.py [--identities 200] [--trace 20] [--name NAME]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
import uuid
from typing import Any

from botocore.exceptions import ClientError

from common import (
    machine_info,
    make_s3_tenants,
    note,
    print_table,
    read_rss,
    start_emulator,
    write_results,
)
from logferry.aws.sts_broker import CredentialBroker

KiB = 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identities", type=int, default=200)
    p.add_argument("--trace", type=int, default=20, help="identities measured with tracemalloc")
    p.add_argument("--name", default="identity_memory", help="results file name")
    return p.parse_args(argv)


def activate(broker: CredentialBroker, tenant: tuple[str, str, str]) -> Any:
    """One active identity: credentials, an S3 and a Kinesis client, each used once."""
    customer, bucket, role = tenant
    clients = broker.clients(role, customer, customer_id=customer)
    clients.client("s3", "us-east-1").put_object(Bucket=bucket, Key="probe.log", Body=b"x\n")
    try:
        clients.client("kinesis", "us-east-1").list_shards(StreamName="not-granted")
    except ClientError:
        pass
    return clients


def rss_now() -> int:
    gc.collect()
    return read_rss(__import__("os").getpid())[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    emulator = start_emulator()
    tag = f"im{uuid.uuid4().hex[:5]}"
    try:
        total = 1 + args.identities + args.trace
        note(f"provisioning {total} customer roles and buckets")
        t0 = time.monotonic()
        tenants = make_s3_tenants(emulator, total, tag)
        note(f"provisioned in {time.monotonic() - t0:.0f}s")
        broker = CredentialBroker(
            vendor_name="bench-cdn",
            vendor_account_id=emulator.vendor.account_id,
            regions=["us-east-1"],
            sts_endpoints={"us-east-1": emulator.url},
            target=emulator.target,
            vendor_credentials=emulator.vendor.credentials(),
        )
        keep = [activate(broker, tenants[0])]
        base = rss_now()
        t0 = time.monotonic()
        for tenant in tenants[1 : 1 + args.identities]:
            keep.append(activate(broker, tenant))
        seconds = time.monotonic() - t0
        grown = rss_now() - base
        note(f"{args.identities} identities: +{grown / 2**20:.1f} MiB in {seconds:.1f}s")
        breakdown: list[dict[str, Any]] = []
        traced_per = None
        if args.trace:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for tenant in tenants[1 + args.identities :]:
                keep.append(activate(broker, tenant))
            gc.collect()
            after = tracemalloc.take_snapshot()
            traced_per = tracemalloc.get_traced_memory()[0] / args.trace / KiB
            tracemalloc.stop()
            for stat in after.compare_to(before, "filename")[:12]:
                name = stat.traceback[0].filename.split("site-packages/")[-1]
                breakdown.append(
                    {"file": name, "kib_per_identity": round(stat.size_diff / args.trace / KiB, 1)}
                )
        assert all(len(c._cache) == 2 for c in keep)  # both clients cached (old code too)
    finally:
        emulator.stop()
    doc = {
        "identities": args.identities,
        "clients_per_identity": ["s3", "kinesis"],
        "rss_growth_mib": round(grown / 2**20, 1),
        "kib_per_identity": round(grown / args.identities / KiB, 1),
        "ms_per_identity": round(seconds * 1000 / args.identities, 1),
        "traced_identities": args.trace,
        "traced_kib_per_identity": round(traced_per, 1) if traced_per else None,
        "traced_breakdown": breakdown,
    }
    path = write_results(args.name, doc, machine)
    rows: list[tuple[str, Any]] = [
        ("identities (S3 + Kinesis client each)", args.identities),
        ("RSS growth MiB", doc["rss_growth_mib"]),
        ("KiB per active identity (RSS)", doc["kib_per_identity"]),
        ("ms per identity (AssumeRole + 2 clients + 2 calls)", doc["ms_per_identity"]),
        ("KiB per identity (tracemalloc)", doc["traced_kib_per_identity"]),
        *((f"  {b['file']}", b["kib_per_identity"]) for b in breakdown),
    ]
    print_table("Memory per active identity", rows)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
