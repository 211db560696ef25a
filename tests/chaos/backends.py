"""The spool backends the chaos cases run against (the fixture is `spool_backend` in conftest).

Both backends run in CI (issue 29's backend landed): a "nats" row starts a loopback
nats-server and gives serve the `[spool]` keys below. `nats_pending()` still names why a row
would skip if serve's config ever lost those keys (CI fails on any skip not allow-listed).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from logferry.service.config import SpoolConfig

BACKENDS_ENV = "LOGFERRY_CHAOS_BACKENDS"

BACKENDS = ["local", "nats"]
"""Spool backends every case runs against (cases about the local spool's own files keep one
"local" row: `LOCAL_SPOOL_ONLY`)."""
if os.environ.get(BACKENDS_ENV):  # to try a backend before the switch, e.g. "local,nats"
    BACKENDS = os.environ[BACKENDS_ENV].split(",")

NATS_SPOOL_KEYS = ("backend", "nats_url", "stream_prefix", "shards", "replicas")
"""The `[spool]` keys of the NATS backend (DESIGN §3, issue 29)."""

LOCAL_SPOOL_ONLY = pytest.mark.parametrize("spool_backend", ["local"], indirect=True)
"""For cases about the local spool's own files: one "local" row whatever `BACKENDS` holds.
Their NATS analogues are cases of their own, NATS only: `test_nats_store_full.py` (stream
max_bytes, server disk), `test_nats_quorum.py`, `test_nats_publish_kill.py`."""


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
