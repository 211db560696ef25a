"""`[spool] backend = "nats"` and `serve --role`, checked through a real `logferry serve` process:
every problem exits 2 naming its key path before anything listens, like every config problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from logferry.local.serve_process import free_port
from logferry.local.toml_out import to_toml


def _config(tmp_path: Path, **spool: Any) -> Path:
    config = {
        "server": {"listen": f"127.0.0.1:{free_port()}"},
        "spool": {"dir": str(tmp_path / "spool"), **spool},
    }
    path = tmp_path / "logferry.toml"
    path.write_text(to_toml(config))
    return path


def _serve(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logferry.cli", "serve", "--config", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def _problems(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    document = json.loads(done.stdout)
    return {p["where"]: p["message"] + " " + (p["fix"] or "") for p in document["problems"]}


NATS = {
    "backend": "nats",
    "nats_url": "nats://127.0.0.1:4222, nats://127.0.0.1:4223",
    "stream_prefix": "LF",
    "shards": 4,
    "replicas": 3,
    "max_bytes": "2GiB",
    "lease_seconds": 6,
    "heartbeat_seconds": 2,
    "node_id": "node-a",
}


@pytest.mark.parametrize("role", ["all", "ingest", "deliver"])
def test_a_nats_config_passes_the_check_in_every_role(tmp_path: Path, role: str) -> None:
    done = _serve(_config(tmp_path, **NATS), "--check", "--role", role)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "configuration OK" in done.stdout


@pytest.mark.parametrize("role", ["ingest", "deliver"])
def test_split_roles_need_the_nats_backend(tmp_path: Path, role: str) -> None:
    path = _config(tmp_path)
    done = _serve(path, "--check", "--json", "--role", role)
    assert done.returncode == 2
    problems = _problems(done)
    assert "--role" in problems and 'backend = "nats"' in problems["--role"]
    # serve itself stops the same way, before listening
    started = _serve(path, "--role", role)
    assert started.returncode == 2, started.stdout + started.stderr
    assert "--role" in started.stderr and "backend" in started.stderr


def test_an_unknown_role_is_named(tmp_path: Path) -> None:
    done = _serve(_config(tmp_path, **NATS), "--check", "--json", "--role", "router")
    assert done.returncode == 2
    assert "one of all, ingest, deliver" in _problems(done)["--role"]


@pytest.mark.parametrize(
    ("fields", "where", "needle"),
    [
        ({"nats_url": "http://127.0.0.1:4222"}, "spool.nats_url", "nats://HOST:PORT"),
        ({"nats_url": "nats://127.0.0.1"}, "spool.nats_url", "nats://HOST:PORT"),
        ({"nats_url": " , "}, "spool.nats_url", "at least one server"),
        ({"stream_prefix": "lf.x"}, "spool.stream_prefix", "a letter"),
        ({"shards": 0}, "spool.shards", "greater than or equal to 1"),
        ({"replicas": 7}, "spool.replicas", "less than or equal to 5"),
        ({"heartbeat_seconds": 4}, "spool.heartbeat_seconds", "at most half of lease_seconds"),
        ({"node_id": "a.b"}, "spool.node_id", "pattern"),
        ({"backend": "kafka"}, "spool.backend", "'local' or 'nats'"),
    ],
)
def test_bad_nats_fields_name_their_key(
    tmp_path: Path, fields: dict[str, Any], where: str, needle: str
) -> None:
    done = _serve(_config(tmp_path, **{**NATS, **fields}), "--check", "--json")
    assert done.returncode == 2, done.stdout
    problems = _problems(done)
    assert where in problems, problems
    assert needle in problems[where]


def test_nats_fields_with_the_local_backend_are_refused(tmp_path: Path) -> None:
    done = _serve(
        _config(tmp_path, nats_url="nats://127.0.0.1:4222", shards=4), "--check", "--json"
    )
    assert done.returncode == 2
    (message,) = _problems(done).values()
    assert "nats_url, shards only apply to backend" in message


def test_a_body_limit_no_atomic_batch_can_hold_is_refused(tmp_path: Path) -> None:
    """On NATS a request is one atomic batch of at most 1,000 messages (spool/nats/publish.py):
    a body limit whose worst split needs more is named with its key and the largest that fits;
    the same limit on the local spool is fine."""
    server = {
        "max_body_bytes": "1GiB",
        "max_body_bytes_in_flight": 0,
        "max_body_bytes_in_flight_per_source": 0,
    }
    path = tmp_path / "logferry.toml"
    config = {"server": {"listen": f"127.0.0.1:{free_port()}", **server}}
    config["spool"] = {"dir": str(tmp_path / "spool"), **NATS}
    path.write_text(to_toml(config))
    done = _serve(path, "--check", "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    problems = _problems(done)
    assert "atomic batch" in problems["server.max_body_bytes"]
    assert "519151616 bytes or less" in problems["server.max_body_bytes"]
    config["spool"] = {"dir": str(tmp_path / "spool")}
    path.write_text(to_toml(config))
    assert _serve(path, "--check").returncode == 0


def test_help_names_the_roles() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "logferry.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0
    assert "--role" in done.stdout and "deliver" in done.stdout
