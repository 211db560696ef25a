"""Server CPU and write syscalls per small HTTP response: uvicorn's httptools protocol as serve
runs it (head and body in one write, `CoalescingTransport`) against the same protocol writing
them separately (uvicorn's own behaviour), interleaved on one box.

Why a bench of its own: the change saves one `send` per response, a few percent of serve's CPU
at small requests, which a serve-level run cannot separate from this box's noise. Here two
uvicorn servers in processes of their own run the same tiny ASGI app (a 202 with ~70 B of
JSON, as the ingest route answers); one keep-alive client sends `--requests` sequential
requests to each in turn, `--rounds` times. Per request: server process CPU (from /proc) and
write syscalls (`syscw` in /proc/PID/io, deterministic).

    .venv/bin/python bench/response_write_cpu.py [--requests 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import time
from typing import Any

from common import box_speed, machine_info, read_cpu, report

BODY = b'{"accepted":20,"empty_skipped":0,"truncated":0,"invalid_utf8":0}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve(port: int, coalesce: bool) -> None:
    import uvicorn

    from logferry.service import http_protocol

    if not coalesce:  # uvicorn's own writes: the head, then the body
        protocol = http_protocol.bounded_httptools_protocol()
        original = protocol.on_headers_complete

        def on_headers_complete(self: Any) -> None:
            transport = self.transport
            original(self)
            if self.cycle is not None:
                self.cycle.transport = transport

        protocol.on_headers_complete = on_headers_complete
    else:
        protocol = http_protocol.bounded_httptools_protocol()
    uvicorn.run(app, host="127.0.0.1", port=port, http=protocol, loop="uvloop", log_level="error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def syscw(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    raise RuntimeError("no syscw in /proc/PID/io")


def requests(sock: socket.socket, n: int) -> None:
    req = b"POST /v1/ingest/c/e HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
    want = len(BODY)
    for _ in range(n):
        sock.sendall(req)
        buf = b""
        while not (buf.endswith(BODY) and len(buf) > want):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the connection")
            buf += chunk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per kind per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--name", default="response_write_cpu")
    args = p.parse_args(argv)
    machine, speed = machine_info(), box_speed()
    kinds = {"separate writes (uvicorn)": False, "head with body (serve)": True}
    procs, socks = {}, {}
    ctx = mp.get_context("spawn")
    try:
        for kind, coalesce in kinds.items():
            port = free_port()
            procs[kind] = ctx.Process(target=serve, args=(port, coalesce), daemon=True)
            procs[kind].start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    socks[kind] = socket.create_connection(("127.0.0.1", port), timeout=30)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            requests(socks[kind], 200)  # warm
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                pid = procs[kind].pid
                assert pid is not None
                cpu0, w0 = read_cpu(pid), syscw(pid)
                requests(socks[kind], args.requests)
                runs[kind].append(
                    {
                        "cpu_us": 1e6 * (read_cpu(pid) - cpu0) / args.requests,
                        "write_syscalls": (syscw(pid) - w0) / args.requests,
                    }
                )
    finally:
        for s in socks.values():
            s.close()
        for proc in procs.values():
            proc.terminate()
            proc.join(10)
    rows: list[tuple[str, Any]] = [
        ("box speed: Python loop CPU s", speed["python_loop_cpu_s"]),
        ("requests per kind per round × rounds", f"{args.requests} × {args.rounds}"),
    ]
    summary = {}
    for kind in kinds:
        med = {k: round(statistics.median(r[k] for r in runs[kind]), 2) for k in runs[kind][0]}
        summary[kind] = {"median": med, "runs": runs[kind]}
        rows.append((f"{kind}: server CPU µs per request (median)", med["cpu_us"]))
        rows.append((f"{kind}: write syscalls per request", med["write_syscalls"]))
    doc = {"requests": args.requests, "rounds": args.rounds, "speed": speed, "results": summary}
    return report("One small HTTP response", rows, args.name, doc, machine)


if __name__ == "__main__":
    raise SystemExit(main())
