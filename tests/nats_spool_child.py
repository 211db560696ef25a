"""A delivery node in a process of its own, for the SIGSTOP test: owns one endpoint, appends,
then on each stdin command tries to write and prints one JSON line with what happened.

    python nats_spool_child.py URLS PREFIX NODE_ID SCRATCH KEY
"""

from __future__ import annotations

import asyncio
import json
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
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not command or command == "quit":
            break
        result: dict[str, object] = {"holds": b.holds(key)}
        for name, call in (
            ("commit", lambda: spool.commit(8)),
            ("journal", lambda: b.journal(key).save({"upload": "stale"})),
        ):
            try:
                await asyncio.to_thread(call)
                result[name] = "ok"
            except SpoolError as exc:
                result[name] = type(exc).__name__
        result["owned"] = sorted(b.owned())
        say(result)
    await b.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
