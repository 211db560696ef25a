"""Run `logferry serve` as a real process for end-to-end tests, and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from aws_helpers import free_port
from logferry.local.emulator import Emulator
from logferry.local.toml_out import to_toml

ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def base_config(emulator: Emulator, spool_dir: Path, **extra: Any) -> dict[str, Any]:
    port = free_port()
    config: dict[str, Any] = {
        "vendor": {
            "name": "acme-cdn",
            "account_id": emulator.vendor.account_id,
            "sts_regions": ["us-east-1", "us-west-2"],
            "sts_endpoints": {"us-east-1": emulator.url, "us-west-2": emulator.url},
        },
        "aws": {"endpoint_url": emulator.url},
        "server": {"listen": f"127.0.0.1:{port}", "shutdown_flush_seconds": 10},
        "spool": {"dir": str(spool_dir), "max_bytes": "1GiB"},
        "auth": {"admin_token_env": "TEST_LOGFERRY_ADMIN"},
        "log": {"level": "info", "format": "json"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


RUNNING: list[ServeProcess] = []
"""Every started process, so a failing test never leaves a server behind (see reap_all)."""


def reap_all() -> None:
    for proc in RUNNING:
        if proc.process is not None and proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()
    RUNNING.clear()


class ServeProcess:
    """`logferry serve --config …` in a child process; its stderr is captured to a file."""

    def __init__(
        self,
        emulator: Emulator,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / "logferry.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = workdir / f"serve-{time.monotonic_ns()}.log"
        self.url = f"http://{config['server']['listen']}"
        self.env = {
            **os.environ,
            **emulator.vendor.env(emulator.url),
            "TEST_LOGFERRY_ADMIN": ADMIN_TOKEN,
            **(env or {}),
        }
        self.env.pop("AWS_ENDPOINT_URL", None)  # endpoints come from the config only
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "logferry.cli", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
        )
        RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.workdir.glob("serve-*.log"))

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        )

    def as_token(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
