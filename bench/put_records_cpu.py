"""CPU of one full PutRecords call (500 records of ~230 B) from serve's side: botocore's
client-side parameter validation on (as botocore comes) and off (the delivery clients' config,
`logferry.aws.clients.DELIVERY_CONFIG`), interleaved against the same emulator.

Only this process's CPU is counted (the emulator is another process), so the figure is what a
call costs the sender: serialisation, signing, sending, parsing — and the validation walk over
every record that AWS repeats anyway.

    .venv/bin/python bench/put_records_cpu.py [--calls 10] [--rounds 5] [--records 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from common import machine_info, print_table, start_emulator, write_results
from logferry.aws.clients import DEFAULT_CONFIG, DELIVERY_CONFIG

STREAM = "bench-put-records-cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10, help="calls per kind per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--records", type=int, default=500, help="records per call")
    p.add_argument("--name", default="put_records_cpu", help="results file name")
    return p.parse_args(argv)


def per_call(client: Any, records: list[dict[str, Any]], calls: int) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        answer = client.put_records(StreamName=STREAM, Records=records)
        if answer.get("FailedRecordCount"):
            raise RuntimeError(f"{answer['FailedRecordCount']} records failed")
    return {
        "cpu_ms": 1000 * (time.process_time() - cpu0) / calls,
        "wall_ms": 1000 * (time.perf_counter() - wall0) / calls,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    records = [
        {
            "Data": os.urandom(230),
            "PartitionKey": f"endpoint:{i}",
            "ExplicitHashKey": str(i * (2**128 // args.records)),
        }
        for i in range(args.records)
    ]
    with start_emulator() as emulator:
        emulator.client("kinesis").create_stream(StreamName=STREAM, ShardCount=4)
        time.sleep(1.0)
        session = emulator.clients().session
        kinds = {
            kind: session.client(
                "kinesis", region_name="us-east-1", endpoint_url=emulator.url, config=config
            )
            for kind, config in (
                ("validated (botocore default)", DEFAULT_CONFIG),
                ("delivery client", DELIVERY_CONFIG),
            )
        }
        for client in kinds.values():  # warm: connections, endpoint cache, first-call work
            per_call(client, records, 2)
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind, client in kinds.items():
                runs[kind].append(per_call(client, records, args.calls))
    rows: list[tuple[str, Any]] = [
        ("box speed: Python loop CPU s", machine["speed"]["python_loop_cpu_s"]),
        ("records per call / calls × rounds", f"{args.records} / {args.calls} × {args.rounds}"),
    ]
    summary: dict[str, Any] = {}
    for kind, kind_runs in runs.items():
        med = {k: round(statistics.median(r[k] for r in kind_runs), 2) for k in kind_runs[0]}
        summary[kind] = {"median": med, "runs": kind_runs}
        rows.append(
            (
                f"{kind}: CPU / wall ms per call (median)",
                f"{med['cpu_ms']} / {med['wall_ms']}",
            )
        )
        rows.append((f"{kind}: CPU µs per record", round(1000 * med["cpu_ms"] / args.records, 1)))
    print_table("One PutRecords call", rows)
    doc = {"records": args.records, "calls": args.calls, "rounds": args.rounds, "results": summary}
    print(f"\nresults: {write_results(args.name, doc, machine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
