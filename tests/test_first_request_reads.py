"""A customer's first request after start makes no SQLite read on the event loop.

Every blocking call on the loop gives the GIL away and must win it back from the busy
delivery, STS and spool threads: at a cold start of 1,000 customers those waits add up to
seconds of late acknowledgements (docs/performance.md, cold start). The saved stats of every
endpoint are read in one query at start; an endpoint with none (a new one) starts from none.
Only a worker re-made later (its stats may have changed since start) reads SQLite again.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from logferry.local.asgi_call import asgi_request
from logferry.local.emulator import Emulator
from logferry.local.toml_out import to_toml
from logferry.service.api import create_app
from logferry.service.config import load_config
from logferry.service.ingest_route import IngestFastPath
from logferry.service.runtime import Service
from s3_helpers import make_s3_role
from service_helpers import ADMIN_TOKEN, base_config, s3_customer

TOKEN = "token-of-the-first-customer-0123456789"


def _watch_reads(service: Service, calls: list[tuple[str, bool]]) -> None:
    """Record each per-endpoint SQLite read and whether it ran on the event loop's thread."""
    loop_thread = threading.get_ident()
    for name in ("load_stats", "get_customer"):
        real = getattr(service.store, name)

        def watched(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append((_name, threading.get_ident() == loop_thread))
            return _real(*args)

        setattr(service.store, name, watched)


async def _post(app: Any, customer: str, body: bytes) -> int:
    headers = [(b"authorization", b"Bearer " + TOKEN.encode())]
    start, _ = await asgi_request(app, "POST", f"/v1/ingest/{customer}/s3", headers, body)
    return int(start["status"])


def test_first_requests_read_no_sqlite_on_the_loop_and_keep_saved_stats(
    emulator: Emulator, unique: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = unique("first")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        customers=[s3_customer(customer, "FIRST_TOKEN", role.bucket, role.role_arn, period=3600)],
    )
    path = tmp_path / "logferry.toml"
    path.write_text(to_toml(config))
    for name, value in {
        **emulator.vendor.env(emulator.url),
        "FIRST_TOKEN": TOKEN,
        config["auth"]["admin_token_env"]: ADMIN_TOKEN,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    key = (customer, "s3")

    async def life(body: bytes) -> tuple[list[int], list[tuple[str, bool]], int, int]:
        """Start, post twice, re-make the worker once, stop (which saves the stats)."""
        service = Service(load_config(path))
        await service.start()
        calls: list[tuple[str, bool]] = []
        _watch_reads(service, calls)
        try:
            app = IngestFastPath(create_app(service), service)
            codes = [await _post(app, customer, body), await _post(app, customer, body)]
            first_reads = list(calls)
            accepted = service.workers[key].stats.lines_accepted
            # A worker made again later (NATS: the endpoint's ownership came back) reads the
            # stats its predecessor saved, which the start-up snapshot cannot hold.
            old = service.workers.pop(key)
            await old.hand_over()
            again = service.worker(*key).stats.lines_accepted
            return codes, first_reads + calls[len(first_reads) :], accepted, again
        finally:
            await service.stop()

    codes, calls, accepted, again = asyncio.run(life(b"a\nb\n"))
    assert codes == [202, 202]
    assert accepted == 4
    assert calls == [("load_stats", True)], "only the re-made worker reads SQLite"
    assert again == 4, "the re-made worker has the stats its predecessor saved"

    # A restart: the stats saved at stop come from the one query at start, not per request.
    codes, calls, accepted, again = asyncio.run(life(b"c\n"))
    assert codes == [202, 202]
    assert accepted == 4 + 2, "the saved count survived the restart"
    assert calls == [("load_stats", True)]
    assert again == 6
