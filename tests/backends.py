"""The spool backends the service's end-to-end tests run on (issue 29: "both backends in CI").

A test that takes the `spool_backend` fixture (tests/conftest.py) runs once per entry of
`SPOOL_BACKENDS`: "local" (the embedded default) and "nats" (one loopback JetStream node per
xdist worker, `sync_interval: always`, a stream prefix of the test's own, dropped after the test).
The fixture's value is the `[spool]` keys that select the backend; merge it into the config
with `base_config(..., spool=spool_backend)` (base_config keeps `dir` and `max_bytes`).

Cases about the local spool's own files (segments, directories, permissions, tmpfs limits) carry
`LOCAL_SPOOL_ONLY` and say why in one line. tests/chaos keeps its own fixture of the same name.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import nats
import pytest

BACKENDS_ENV = "LOGFERRY_E2E_BACKENDS"

SPOOL_BACKENDS = ["local", "nats"]
"""Backends every case taking `spool_backend` runs on."""
if os.environ.get(BACKENDS_ENV):  # one backend only, e.g. to time the "nats" rows alone
    SPOOL_BACKENDS = os.environ[BACKENDS_ENV].split(",")

BACKEND_PARAMS = [
    pytest.param(name, marks=pytest.mark.slow) if name == "nats" else name
    for name in SPOOL_BACKENDS
]
"""The fixtures' params: the "nats" rows are marked slow (they start and reach a JetStream
server), so `make test-fast` runs the local rows and `make test` (CI) both."""

LOCAL_SPOOL_ONLY = pytest.mark.parametrize("spool_backend", ["local"], indirect=True)
"""For cases about the local spool's own files: one "local" row whatever SPOOL_BACKENDS holds."""


def is_nats(spool: dict[str, Any]) -> bool:
    return spool.get("backend") == "nats"


def new_prefix() -> str:
    """A stream prefix of one test's own (streams `<prefix>_NN`, buckets `<prefix>_*`)."""
    return f"E{uuid.uuid4().hex[:12].upper()}"


def nats_spool_table(urls: str, prefix: str) -> dict[str, Any]:
    """The `[spool]` keys of a "nats" row: 2 shards, 1 replica, the default lease (10 s, so a
    starved CI box does not lose a single node's endpoints to its own clock), a fixed node_id
    so a restarted serve is the same node."""
    return {
        "backend": "nats",
        "nats_url": urls,
        "stream_prefix": prefix,
        "shards": 2,
        "replicas": 1,
        "node_id": f"e2e-{prefix.lower()}",
    }


async def _drop(urls: str, prefix: str) -> None:
    nc = await nats.connect(servers=urls.split(","), connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((f"{prefix}_", f"KV_{prefix}_")):
                await js.delete_stream(name)
    finally:
        await nc.close()


def drop_prefix(urls: str, prefix: str) -> None:
    """Delete a test's streams and KV buckets: a session-long server would otherwise keep every
    test's `max_bytes` reserved against its store limit."""
    asyncio.run(_drop(urls, prefix))
