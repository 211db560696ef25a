"""Run `logferry serve` as a real process for end-to-end tests, and talk to it over HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from logferry.local.emulator import Emulator
from logferry.local.serve_process import ServeProcess as _ServeProcess
from logferry.local.serve_process import serve_config

ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def base_config(emulator: Emulator, spool_dir: Path, **extra: Any) -> dict[str, Any]:
    return serve_config(emulator, spool_dir, **extra)


def s3_customer(
    customer_id: str,
    token_env: str,
    bucket: str,
    role_arn: str,
    *,
    period: int = 1,
    **fields: Any,
) -> dict[str, Any]:
    """A config customer with one S3 endpoint named "s3" (`fields`: more endpoint settings)."""
    return {
        "id": customer_id,
        "token_env": token_env,
        "endpoints": [
            {
                "type": "s3",
                "name": "s3",
                "bucket_name": bucket,
                "iam_role": role_arn,
                "period": period,
                **fields,
            }
        ],
    }


class ServeProcess(_ServeProcess):
    """The shared runner with the tests' admin token."""

    def __init__(
        self,
        emulator: Emulator,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(emulator, config, workdir, admin_token=ADMIN_TOKEN, env=env)


reap_all = _ServeProcess.reap_all


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def nats_spool(nats_urls: str, stream_prefix: str, node_id: str, **fields: Any) -> dict[str, Any]:
    """A `[spool]` table for `backend = "nats"` (merge it into base_config's spool table).

    Short leases so a killed delivery node's endpoints move within seconds in tests."""
    return {
        "backend": "nats",
        "nats_url": nats_urls,
        "stream_prefix": stream_prefix,
        "shards": 2,
        "replicas": 1,
        "lease_seconds": 4,
        "heartbeat_seconds": 1,
        "node_id": node_id,
        **fields,
    }


class NodeProcess(ServeProcess):
    """`logferry serve --role ROLE` (scale-out tests: ingest and delivery in separate
    processes sharing a NATS spool)."""

    def __init__(
        self,
        emulator: Emulator,
        config: dict[str, Any],
        workdir: Path,
        role: str,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(emulator, config, workdir, env=env)
        self.role = role

    @property
    def command(self) -> list[str]:
        return [*super().command, "--role", self.role]


def nats_owned(serve: ServeProcess) -> float:
    """`logferry_nats_owned_endpoints` of a node (-1: it does not answer)."""
    return nats_metric(serve, "owned_endpoints")


def nats_metric(serve: ServeProcess, name: str) -> float:
    """`logferry_nats_<name>` of a node (-1: it does not answer)."""
    import httpx

    try:
        with serve.admin() as admin:
            text = admin.get("/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(f"logferry_nats_{name} "):
            return float(line.split()[1])
    return 0.0
