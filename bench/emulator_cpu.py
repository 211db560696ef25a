"""The emulator's own CPU per PutObject (an assumed-role call, IAM enforcement on), so that
benchmark figures can say how much of the box the emulator takes.

At many small tenants the emulator answers one PutObject per tenant per period, on the same two
cores as serve. `--compare-src DIR` runs the emulator from another copy of logferry's src (e.g.
before a patch in `logferry.local.patches`) in interleaved rounds.

    .venv/bin/python bench/emulator_cpu.py [--calls 200] [--rounds 2] [--compare-src /tmp/head/src]
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import boto3

from common import (
    box_speed,
    machine_info,
    make_s3_tenants,
    report,
    start_emulator,
)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200, help="PutObject calls per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--bytes", type=int, default=5000, help="object size")
    p.add_argument("--compare-src", default=None, help="also run the emulator from this src/")
    p.add_argument("--name", default="emulator_cpu", help="results file name")
    return p.parse_args(argv)


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def one_round(src: str | None, calls: int, body: bytes) -> float:
    """Emulator CPU ms per PutObject, the emulator started from `src` (None: this tree)."""
    if src:
        os.environ["PYTHONPATH"] = src
    else:
        os.environ.pop("PYTHONPATH", None)
    with start_emulator() as emulator:
        customer, bucket, role = make_s3_tenants(emulator, 1, "emucpu")[0]
        sts = emulator.client("sts", account=emulator.vendor)
        creds = sts.assume_role(RoleArn=role, RoleSessionName="bench", ExternalId=customer)[
            "Credentials"
        ]
        s3: Any = boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=emulator.url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        s3.put_object(Bucket=bucket, Key="warm", Body=body)
        before = process_cpu(emulator.pid)
        for i in range(calls):
            s3.put_object(Bucket=bucket, Key=f"k{i:05d}", Body=body)
        return 1e3 * (process_cpu(emulator.pid) - before) / calls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    speed = box_speed()
    body = os.urandom(args.bytes)
    kinds: dict[str, str | None] = {"this tree": None}
    if args.compare_src:
        kinds[args.compare_src] = args.compare_src
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind, src in kinds.items():
            runs[kind].append(one_round(src, args.calls, body))
    median = {kind: round(statistics.median(values), 2) for kind, values in runs.items()}
    rows: list[tuple[str, Any]] = [
        (
            "box speed: Python loop CPU s / memcpy MB/s",
            f"{speed['python_loop_cpu_s']} / {speed['memcpy_mb_s']}",
        )
    ]
    for kind in kinds:
        rows.append((f"emulator CPU ms per PutObject, {kind}", median[kind]))
        rows.append(("  rounds", " / ".join(f"{v:.2f}" for v in runs[kind])))
    doc = {**vars(args), "speed": speed, "median": median, "runs": runs}
    return report("Emulator CPU per PutObject", rows, args.name, doc, machine)


if __name__ == "__main__":
    raise SystemExit(main())
