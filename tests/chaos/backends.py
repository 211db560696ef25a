"""The spool backends the chaos cases run against (the fixture is `spool_backend` in conftest).

"nats" is kept out of `BACKENDS` until issue 29's backend lands: CI fails on any skip not in
tests/skip_allowlist.txt, so a row that could only skip must not exist yet. Adding "nats" to
`BACKENDS` is then the one-line switch; its code path (a loopback nats-server, the `[spool]`
keys below) is ready, and skips with `nats_pending()`'s reason if flipped too early.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from logferry.service.config import SpoolConfig

BACKENDS_ENV = "LOGFERRY_CHAOS_BACKENDS"

BACKENDS = ["local"]
"""Spool backends every case runs against: add "nats" here once issue 29's backend lands."""
if os.environ.get(BACKENDS_ENV):  # to try a backend before the switch, e.g. "local,nats"
    BACKENDS = os.environ[BACKENDS_ENV].split(",")

NATS_SPOOL_KEYS = ("backend", "nats_url", "stream_prefix", "shards", "replicas")
"""The `[spool]` keys of the NATS backend (DESIGN §3, issue 29)."""

LOCAL_SPOOL_ONLY = pytest.mark.parametrize("spool_backend", ["local"], indirect=True)
"""For cases about the local spool's own files: one "local" row whatever `BACKENDS` holds."""


def nats_pending() -> str | None:
    """Why the "nats" rows cannot run yet; None once serve's config takes the NATS keys."""
    missing = [key for key in NATS_SPOOL_KEYS if key not in SpoolConfig.model_fields]
    if not missing:
        return None
    return (
        "pending issue 29: the NATS spool backend has not landed "
        f"([spool] has no {', '.join(missing)} yet)"
    )


def nats_spool(urls: str, prefix: str) -> dict[str, Any]:
    """The `[spool]` settings of the "nats" rows."""
    return {
        "backend": "nats",
        "nats_url": urls,
        "stream_prefix": prefix,
        "shards": 2,
        "replicas": 1,
    }
