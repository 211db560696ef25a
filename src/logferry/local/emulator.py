"""Start and talk to the local AWS emulator from code, tests (`emulator` fixture) and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from botocore.client import BaseClient
from botocore.credentials import Credentials

from logferry.aws.clients import AwsClients, AwsTarget

VENDOR_ACCOUNT_ID = "717331877981"
CUSTOMER_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class LocalAccount:
    """An IAM user with an access key in one emulated account."""

    account_id: str
    user_name: str
    role: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def credentials(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret_access_key)

    def env(self, url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
        """Environment variables that point the AWS CLI/SDKs at the emulator as this user."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": region,
            "AWS_ENDPOINT_URL": url,
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> LocalAccount:
        return cls(
            account_id=data["account_id"],
            user_name=data["user_name"],
            role=data["role"],
            access_key_id=data["access_key_id"],
            secret_access_key=data["secret_access_key"],
        )


class Emulator:
    """A running emulator process; `stop()` (or the context manager) ends it."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        url: str,
        accounts: list[LocalAccount],
        rewrite_token: str = "",
    ):
        self._process = process
        self.url = url
        self.rewrite_token = rewrite_token
        """Lets `latency_proxy` forward a rewritten body (see `patches.trust_rewritten_bodies`)."""
        self.accounts = accounts
        self.vendor = next(a for a in accounts if a.role == "vendor")
        self.customer = next(a for a in accounts if a.role == "admin")
        self._stderr_lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr_lines.append(line)
            del self._stderr_lines[:-200]

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def target(self) -> AwsTarget:
        return AwsTarget(endpoint_url=self.url)

    def clients(self, account: LocalAccount | None = None) -> AwsClients:
        return AwsClients((account or self.customer).credentials(), self.target)

    def client(
        self, service: str, account: LocalAccount | None = None, region: str = DEFAULT_REGION
    ) -> BaseClient:
        return self.clients(account).client(service, region)

    def add_account(
        self, account_id: str, user_name: str = "admin", role: str = "admin"
    ) -> LocalAccount:
        """Create an account (an IAM user with an access key in it) in the running emulator."""
        body = json.dumps({"account_id": account_id, "user_name": user_name, "role": role})
        request = urllib.request.Request(
            f"{self.url}/_logferry/accounts",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            made = LocalAccount.from_json(json.loads(response.read()))
        self.accounts.append(made)
        return made

    def recent_stderr(self) -> str:
        return "".join(self._stderr_lines[-50:])

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_emulator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    vendor_account_id: str = VENDOR_ACCOUNT_ID,
    customer_account_id: str = CUSTOMER_ACCOUNT_ID,
    vendor_user: str = "logferry-vendor",
    customer_user: str = "admin",
    timeout: float = 60.0,
) -> Emulator:
    """Start the patched moto server on loopback and wait until it answers.

    Raises RuntimeError with the emulator's stderr when it cannot start (e.g. moto missing:
    install the `local` extra).
    """
    try:
        import moto  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the local emulator needs moto: pip install 'logferry[local]'") from exc
    cmd = [
        sys.executable,
        "-m",
        "logferry.local.server",
        "--host",
        host,
        "--port",
        str(port),
        "--account",
        f"{vendor_account_id}:{vendor_user}:vendor",
        "--account",
        f"{customer_account_id}:{customer_user}:admin",
    ]
    env = dict(os.environ)
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MOTO_ACCOUNT_ID",
    ):
        env.pop(var, None)
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    ready: dict[str, Any] = {}

    def read_ready() -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line:
            ready.update(json.loads(line))

    reader = threading.Thread(target=read_ready, daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready:
        process.kill()
        _, stderr = process.communicate(timeout=5)
        raise RuntimeError(f"the local AWS emulator did not start:\n{stderr[-4000:]}")
    accounts = [LocalAccount.from_json(a) for a in ready["accounts"]]
    return Emulator(process, ready["url"], accounts, ready.get("rewrite_token", ""))
