"""A delivery node in a process of its own, for the SIGSTOP test: owns one endpoint, appends,
then tries to write and prints one JSON line with what happened: on each stdin "write", and
once "arm" was sent, as the first thing it does after each SIGCONT.

Why on SIGCONT: once resumed, the node is live again and rendezvous hashing gives it the
endpoint back (a new epoch, once the other node has released it: a few round trips later).
An attempt read from stdin could come after that under load and see a legitimate owner; the
signal handler runs in the resumed loop's first pass, while the node is still the stale one.

    python nats_spool_child.py URLS PREFIX NODE_ID SCRATCH KEY
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from logferry.spool.errors import SpoolError
from logferry.spool.nats import NatsBackend, NatsSpoolSettings


def say(doc: dict[str, object]) -> None:
    print(json.dumps(doc), flush=True)


async def main(urls: str, prefix: str, node_id: str, scratch: str, key: str) -> None:
    s = NatsSpoolSettings(
        nats_url=urls,
        stream_prefix=prefix,
        shards=2,
        max_bytes=64 * 1024 * 1024,
        lease_seconds=6.0,
        heartbeat_seconds=0.5,
    )
    b = NatsBackend(s, node_id=node_id, deliver=True, scratch_dir=Path(scratch))
    await b.start()
    b.set_endpoints([key])
    while key not in b.owned():
        await asyncio.sleep(0.05)
    spool = await asyncio.to_thread(b.provider.open, key)
    await spool.append(b"one\ntwo\nthree\n", 3)
    while spool.end_offset < 14:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(spool.commit, 4)
    say({"ready": True, "end": spool.end_offset})
    loop = asyncio.get_running_loop()

    async def attempt() -> None:
        result: dict[str, object] = {"holds": b.holds(key)}
        for name, call in (
            ("commit", lambda: spool.commit(14)),
            ("journal", lambda: b.journal(key).save({"upload": "stale"})),
        ):
            try:
                await asyncio.to_thread(call)
                result[name] = "ok"
            except SpoolError as exc:
                result[name] = type(exc).__name__
        result["owned"] = sorted(b.owned())
        say(result)

    tasks: set[asyncio.Task[None]] = set()

    def on_sigcont() -> None:
        task = loop.create_task(attempt())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not command or command == "quit":
            break
        if command == "arm":
            loop.add_signal_handler(signal.SIGCONT, on_sigcont)
            say({"armed": True})
        else:
            await attempt()
    await b.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
