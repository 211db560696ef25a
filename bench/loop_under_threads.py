"""How many round trips an event loop answers while other threads of its process work: threads
that only compute, or threads that make PutObject calls against the emulator (serve's delivery).

Why: serve's event loop shares one GIL with the delivery, AWS-call and spool threads. A thread
that only computes lets the loop back in only when the switch interval (5 ms) runs out, so a
loop that releases the GIL at every poll waits up to that long each time (the "convoy");
a thread blocked in a socket call lets it in at once. This tells which one limits serve at many
small tenants (docs/performance.md, eighth pass). A client in its own process sends one-line
requests over one connection for `--seconds` and counts answers.

    .venv/bin/python bench/loop_under_threads.py [--threads 0 2 8] [--switch-ms 5 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from typing import Any

from common import box_speed, machine_info, report, start_emulator

BUCKET = "bench-loop-under-threads"
CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
seconds = float(sys.argv[2])
t = time.perf_counter()
n = 0
while time.perf_counter() - t < seconds:
    s.sendall(b"x\\n")
    f.readline()
    n += 1
print(n / seconds)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[0, 2, 8])
    p.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 1.0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--name", default="loop_under_threads", help="results file name")
    return p.parse_args(argv)


def loop_rate(workers: int, work: Any, seconds: float) -> tuple[float, int]:
    """Round trips per second the loop answers while `workers` threads run `work(stop, i)`."""
    stop = threading.Event()
    done = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            writer.write(b"ok\n")
            await writer.drain()
        writer.close()

    async def run() -> float:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        threads = [
            threading.Thread(target=work, args=(stop, i, done), daemon=True) for i in range(workers)
        ]
        for t in threads:
            t.start()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, str(port), str(seconds), stdout=subprocess.PIPE
        )
        out, _ = await client.communicate()
        stop.set()
        for t in threads:
            t.join()
        server.close()
        return float(out.decode().strip())

    rate = asyncio.run(run())
    return rate, done[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    speed = box_speed()
    body = os.urandom(5000)
    results: list[dict[str, Any]] = []
    with start_emulator() as emulator:
        emulator.client("s3").create_bucket(Bucket=BUCKET)
        session = emulator.clients().session

        def compute(stop: threading.Event, _: int, done: list[int]) -> None:
            x = 0
            while not stop.is_set():
                for i in range(1000):
                    x += i
                done[0] += 1

        def put_objects(stop: threading.Event, i: int, done: list[int]) -> None:
            s3 = session.client("s3", region_name="us-east-1", endpoint_url=emulator.url)
            n = 0
            while not stop.is_set():
                s3.put_object(Bucket=BUCKET, Key=f"{i}/{n}", Body=body)
                n += 1
                done[0] += 1

        for switch in args.switch_ms:
            sys.setswitchinterval(switch / 1000)
            for kind, work in (("compute", compute), ("PutObject", put_objects)):
                for workers in args.threads:
                    if workers == 0 and kind == "PutObject":
                        continue
                    t = time.perf_counter()
                    rate, done = loop_rate(workers, work, args.seconds)
                    elapsed = time.perf_counter() - t
                    results.append(
                        {
                            "switch_ms": switch,
                            "threads": workers,
                            "work": kind if workers else "none",
                            "loop_round_trips_per_s": round(rate, 1),
                            "thread_units_per_s": round(done / elapsed, 1),
                        }
                    )
                    print(results[-1], flush=True)
        sys.setswitchinterval(0.005)
    rows: list[tuple[str, Any]] = [
        (
            "box speed: Python loop CPU s / memcpy MB/s",
            f"{speed['python_loop_cpu_s']} / {speed['memcpy_mb_s']}",
        )
    ]
    for r in results:
        rows.append(
            (
                f"switch {r['switch_ms']} ms, {r['threads']} × {r['work']}: round trips/s",
                r["loop_round_trips_per_s"],
            )
        )
    doc = {**vars(args), "speed": speed, "results": results}
    return report(
        "An event loop's round trips while other threads work", rows, args.name, doc, machine
    )


if __name__ == "__main__":
    raise SystemExit(main())
