"""SIGHUP through a real `logferry serve`: the config file is re-read, validated like at start-up,
and what can change live is applied; a file that does not validate is logged, problem by problem,
and the running configuration keeps serving."""

from __future__ import annotations

import gzip
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from logferry.local.emulator import Emulator
from logferry.local.toml_out import to_toml
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bucket_lines(emulator: Emulator, bucket: str) -> Counter[bytes]:
    counts: Counter[bytes] = Counter()
    for key, obj in read_objects(emulator, bucket).items():
        body = gzip.decompress(obj.body) if key.endswith(".gz") else obj.body
        counts.update(body.split(b"\n")[:-1])
    return counts


def customer(cid: str, role: Any, token_file: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cid,
        "endpoints": [
            {
                "type": "s3",
                "name": "s3",
                "bucket_name": role.bucket,
                "iam_role": role.role_arn,
                "period": 1,
            }
        ],
    }
    if token_file is not None:
        out["token_file"] = str(token_file)
    return out


class Reloader:
    """Rewrite the running serve's config file, SIGHUP it, wait for the outcome in its log."""

    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self.outcomes = 0

    def __call__(self, config: dict[str, Any]) -> str:
        self.serve.config_path.write_text(to_toml(config))
        assert self.serve.process is not None
        self.serve.process.send_signal(signal.SIGHUP)
        self.outcomes += 1

        def done() -> bool:
            logs = self.serve.logs()
            seen = logs.count("configuration reloaded") + logs.count("reload refused;")
            return seen >= self.outcomes

        wait_for(done, timeout=60)
        return self.serve.logs()


def ingest(serve: ServeProcess, token: str, cid: str, body: bytes) -> int:
    with serve.as_token(token) as client:
        return client.post(f"/v1/ingest/{cid}/s3", content=body).status_code


def test_sighup_applies_customers_tokens_and_listeners_and_refuses_a_bad_edit(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    a, b = unique("cust-a"), unique("cust-b")
    role_a = make_s3_role(emulator, unique, external_id=a)
    role_b = make_s3_role(emulator, unique, external_id=b)
    token_a, token_b = tmp_path / "a.token", tmp_path / "b.token"
    token_a.write_text("token-a-0123456789abcdef\n")
    token_b.write_text("token-b-0123456789abcdef\n")
    secret_a, secret_b = token_a.read_text().strip(), token_b.read_text().strip()
    config = base_config(emulator, tmp_path / "spool", customers=[customer(a, role_a, token_a)])
    serve = ServeProcess(emulator, config, tmp_path / "run").start()
    reload = Reloader(serve)
    assert ingest(serve, secret_a, a, b"a before\n") == 202
    assert ingest(serve, secret_b, b, b"b before\n") in (401, 403)

    # 1. A new customer with an endpoint, a token and a syslog listener: all live at once.
    syslog_port = free_port()
    config["customers"].append(customer(b, role_b, token_b))
    config["listeners"] = [
        {
            "protocol": "tcp",
            "listen": f"127.0.0.1:{syslog_port}",
            "customer_id": b,
            "endpoint": "s3",
        }
    ]
    logs = reload(config)
    assert "configuration reloaded" in logs, logs
    assert ingest(serve, secret_b, b, b"b over http\n") == 202
    with socket.create_connection(("127.0.0.1", syslog_port), timeout=10) as sock:
        sock.sendall(b"b over syslog\n")
    wait_for(
        lambda: bucket_lines(emulator, role_b.bucket) >= Counter([b"b over http", b"b over syslog"])
    )
    assert ingest(serve, secret_a, a, b"a still\n") == 202

    # 2. A's token removed from the file: it stops working; B's goes on. A settings change that
    # cannot apply live is logged as needing a restart.
    # B's endpoint changed (a new path): its next lines land under it.
    config["customers"][0] = customer(a, role_a, None)
    config["customers"][1]["endpoints"][0]["path"] = "changed/"
    config["server"]["max_connections"] = 99
    logs = reload(config)
    assert "restart needed" in logs and "server.max_connections" in logs, logs
    assert "endpoint changed" in logs, logs
    assert ingest(serve, secret_a, a, b"a after removal\n") in (401, 403)
    assert ingest(serve, secret_b, b, b"b still\n") == 202
    wait_for(lambda: read_objects(emulator, role_b.bucket, prefix="changed/"))

    # 3. A bad edit (B removed, and a listener naming an endpoint that does not exist): every
    # problem logged with its key path, nothing applied: B's token and listener keep working.
    bad = {**config, "customers": [config["customers"][0]]}
    bad["listeners"] = [*config["listeners"], {**config["listeners"][0], "endpoint": "nope"}]
    bad["listeners"][1]["listen"] = f"127.0.0.1:{free_port()}"
    logs = reload(bad)
    assert "configuration reload refused" in logs and "listeners.1.endpoint" in logs, logs
    assert ingest(serve, secret_b, b, b"b after a bad edit\n") == 202
    with socket.create_connection(("127.0.0.1", syslog_port), timeout=10) as sock:
        sock.sendall(b"b syslog after a bad edit\n")
    wait_for(
        lambda: (
            bucket_lines(emulator, role_b.bucket)
            >= Counter([b"b after a bad edit", b"b syslog after a bad edit"])
        )
    )
    # A schema error is refused the same way.
    logs = reload({**config, "spool": {**config["spool"], "max_bytes": "lots"}})
    assert logs.count("configuration reload refused") == 2 and "spool.max_bytes" in logs
    assert ingest(serve, secret_b, b, b"b after a typo\n") == 202

    # 4. The listener removed from the file stops listening.
    reload({**config, "listeners": []})
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", syslog_port), timeout=5):
        pass
    with httpx.Client(base_url=serve.url) as client:
        assert client.get("/readyz").status_code == 200
    assert serve.terminate() == 0
