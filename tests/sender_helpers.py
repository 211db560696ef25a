"""One real `logferry serve` for the real-sender tests: one customer, one bucket, one S3 endpoint
per sender (each with its own path), so each test reads back exactly what its sender produced."""

from __future__ import annotations

import gzip
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from logferry.local.emulator import Emulator
from s3_helpers import S3Role, make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for

TOKEN = "otlp-and-syslog-sender-token-0123456789"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Senders:
    """The running serve, its customer and the endpoint names (= path prefixes)."""

    serve: ServeProcess
    customer: str
    role: S3Role
    emulator: Emulator
    ports: dict[str, int] = field(default_factory=dict)
    """Syslog listener port per endpoint name (set by the syslog tests)."""
    ca_file: Path | None = None
    """The TLS listener's self-signed certificate, for the client to trust."""

    def lines(self, endpoint: str) -> list[bytes]:
        """Every line delivered for `endpoint`, in key order then file order."""
        out: list[bytes] = []
        for key, obj in sorted(
            read_objects(self.emulator, self.role.bucket, f"{endpoint}/").items()
        ):
            body = gzip.decompress(obj.body) if key.endswith(".gz") else obj.body
            out.extend(body.split(b"\n")[:-1])
        return out

    def wait_lines(self, endpoint: str, expected: Iterable[bytes], timeout: float = 60) -> None:
        """Wait until the endpoint's delivered lines are exactly `expected` (as a multiset, since
        files from different periods may interleave), then check there is nothing more."""
        want = sorted(expected)
        try:
            wait_for(lambda: sorted(self.lines(endpoint)) == want, timeout=timeout)
        except AssertionError:
            got = sorted(self.lines(endpoint))
            missing = [x for x in want if x not in got][:5]
            extra = [x for x in got if x not in want][:5]
            raise AssertionError(
                f"{endpoint}: {len(got)} lines delivered, {len(want)} expected; "
                f"missing e.g. {missing}; unexpected e.g. {extra}"
            ) from None

    def accepted(self, endpoint: str) -> int:
        with self.serve.admin() as admin:
            status = admin.get(f"/v1/customers/{self.customer}/endpoints/{endpoint}/status")
            return int(status.json()["lines"]["accepted"])


def start_senders(
    emulator: Emulator,
    workdir: Path,
    endpoints: Iterable[str],
    *,
    listeners: list[dict[str, Any]] | None = None,
    server: dict[str, Any] | None = None,
    spool: dict[str, Any] | None = None,
    period: int = 2,
) -> Senders:
    customer = unique("senders")
    role = make_s3_role(emulator, unique, external_id=customer)
    extra: dict[str, Any] = {
        "customers": [
            {
                "id": customer,
                "token_env": "SENDERS_TOKEN",
                "endpoints": [
                    {
                        "type": "s3",
                        "name": name,
                        "bucket_name": role.bucket,
                        "iam_role": role.role_arn,
                        "path": f"{name}/",
                        "period": period,
                        "gzip_level": 3,
                    }
                    for name in endpoints
                ],
            }
        ],
    }
    if listeners:
        extra["listeners"] = [{**item, "customer_id": customer} for item in listeners]
    if server:
        extra["server"] = server
    if spool:
        extra["spool"] = {"dir": str(workdir / "spool"), **spool}
    config = base_config(emulator, workdir / "spool", **extra)
    serve = ServeProcess(emulator, config, workdir, env={"SENDERS_TOKEN": TOKEN})
    try:
        serve.start(timeout=180)  # generous: CI and this machine may be busy
    except BaseException:
        reap_all()
        raise
    return Senders(serve, customer, role, emulator)


def need_binary(name: str, package: str) -> str:
    """The binary's path, or skip naming what is missing (CI installs it: .ci/run)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pytest.skip(f"{name} not found: install the Debian package {package} (see .ci/run)")
    return path
