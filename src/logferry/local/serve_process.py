"""Run `logferry serve --config …` as a child process against the local emulator.

Shared by the end-to-end tests and the benchmarks: a real process, real sockets, the vendor's
credentials in its environment exactly as an operator would give them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx

from logferry.local.emulator import Emulator
from logferry.local.toml_out import to_toml

ADMIN_ENV = "LOGFERRY_TEST_ADMIN_TOKEN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_config(
    emulator: Emulator, spool_dir: Path, *, vendor_name: str = "acme-cdn", **extra: Any
) -> dict[str, Any]:
    """A `logferry.toml` for the emulator; `extra` tables are merged over the defaults."""
    config: dict[str, Any] = {
        "vendor": {
            "name": vendor_name,
            "account_id": emulator.vendor.account_id,
            "sts_regions": ["us-east-1", "us-west-2"],
            "sts_endpoints": {"us-east-1": emulator.url, "us-west-2": emulator.url},
        },
        "aws": {"endpoint_url": emulator.url},
        "server": {"listen": f"127.0.0.1:{free_port()}", "shutdown_flush_seconds": 10},
        "spool": {"dir": str(spool_dir), "max_bytes": "1GiB"},
        "auth": {"admin_token_env": ADMIN_ENV},
        "log": {"level": "info", "format": "json"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


class ServeProcess:
    """One `logferry serve` child; each start logs to its own file under `workdir`."""

    running: ClassVar[list[ServeProcess]] = []

    def __init__(
        self,
        emulator: Emulator,
        config: dict[str, Any],
        workdir: Path,
        *,
        admin_token: str,
        env: dict[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.workdir = workdir
        self.admin_token = admin_token
        self.config_path = workdir / "logferry.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = workdir / "serve.log"
        self.url = f"http://{config['server']['listen']}"
        admin_env = config.get("auth", {}).get("admin_token_env", ADMIN_ENV)
        self.env = {
            **os.environ,
            **emulator.vendor.env(emulator.url),
            admin_env: admin_token,
            **(env or {}),
        }
        self.env.pop("AWS_ENDPOINT_URL", None)  # endpoints come from the config only
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None
        self._started = 0.0

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "logferry.cli", "serve", "--config", str(self.config_path)]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> ServeProcess:
        """Start without waiting for readiness (to sample the process from its first instant)."""
        self.log_path = self.workdir / f"serve-{time.monotonic_ns()}.log"
        with self.log_path.open("ab") as log:
            self._started = time.monotonic()
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
            )
        ServeProcess.running.append(self)
        return self

    def wait_ready(self, timeout: float = 180.0) -> ServeProcess:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"serve exited {self.process.returncode}:\n{self.logs()[-4000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.ready_seconds = time.monotonic() - self._started
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready in {timeout}s:\n{self.logs()[-4000:]}")

    def start(self, timeout: float = 180.0) -> ServeProcess:
        return self.spawn().wait_ready(timeout)

    def logs(self) -> str:
        """This start's output."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        """The output of every start in `workdir`."""
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("serve-*.log"))
        )

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 90.0) -> int | None:
        """SIGTERM and wait (killed after `timeout`); the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def as_token(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def admin(self) -> httpx.Client:
        return self.as_token(self.admin_token)

    @classmethod
    def reap_all(cls) -> None:
        """Kill whatever is still running (a failed test must not leave a server behind)."""
        for proc in cls.running:
            if proc.process is not None and proc.process.poll() is None:
                proc.process.kill()
                proc.process.wait()
        cls.running.clear()
