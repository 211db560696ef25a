"""Start-up validation through a real `logferry serve`, and `serve --check`.

Every problem that used to surface only inside the server's lifespan (a listener naming a missing
endpoint, an unreadable token_file, an external ID already bound, a syslog certificate) now stops
`serve` with exit 2 naming its key path before anything listens; `--check` runs the same checks
and exits 0 or 2 without serving.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from logferry.local.emulator import Emulator
from logferry.local.toml_out import to_toml
from logferry.service.store import Store
from service_helpers import ServeProcess, base_config, reap_all

ROLE = "arn:aws:iam::123456789012:role/logferry-s3-logging"


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def endpoint(name: str = "s3", **fields: Any) -> dict[str, Any]:
    return {"type": "s3", "name": name, "bucket_name": "acme-logs", "iam_role": ROLE, **fields}


def customer(cid: str, tmp_path: Path, **fields: Any) -> dict[str, Any]:
    token = tmp_path / f"{cid}.token"
    token.write_text(f"token-of-{cid}-0123456789\n")
    return {"id": cid, "token_file": str(token), "endpoints": [endpoint()], **fields}


def listener(port: int, cid: str, name: str = "s3", **fields: Any) -> dict[str, Any]:
    return {
        "protocol": "tcp",
        "listen": f"127.0.0.1:{port}",
        "customer_id": cid,
        "endpoint": name,
        **fields,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bound(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _missing_endpoint(tmp_path: Path, port: int) -> tuple[dict[str, Any], str]:
    return {
        "customers": [customer("acme", tmp_path)],
        "listeners": [listener(port, "acme", "nope")],
    }, "listeners.0.endpoint"


def _missing_token_file(tmp_path: Path, port: int) -> tuple[dict[str, Any], str]:
    broken = customer("acme", tmp_path, token_file=str(tmp_path / "absent.token"))
    return {"customers": [broken]}, "customers.0.token_file"


def _taken_external_id(tmp_path: Path, port: int) -> tuple[dict[str, Any], str]:
    store = Store(tmp_path / "spool" / "logferry.db")  # a previous run bound it elsewhere
    store.put_customer("someone-else", "shared-external-id")
    store.close()
    taken = customer("acme", tmp_path, external_id="shared-external-id")
    return {"customers": [taken]}, "customers.0.external_id"


def _listener_certificate(tmp_path: Path, port: int) -> tuple[dict[str, Any], str]:
    tls = {"cert_file": str(tmp_path / "no.crt"), "key_file": str(tmp_path / "no.key")}
    return {
        "customers": [customer("acme", tmp_path)],
        "listeners": [listener(port, "acme", tls=tls)],
    }, "listeners.0.tls.cert_file"


def _endpoint_body(tmp_path: Path, port: int) -> tuple[dict[str, Any], str]:
    bad = customer("acme", tmp_path, endpoints=[endpoint(domain="http://logs.example.com")])
    return {"customers": [bad]}, "customers.0.endpoints.0.domain"


def _duplicate_customer(tmp_path: Path, port: int) -> tuple[dict[str, Any], str]:
    return {"customers": [customer("acme", tmp_path)] * 2}, "customers.1.id"


CASES: dict[str, Callable[[Path, int], tuple[dict[str, Any], str]]] = {
    "listener names a missing endpoint": _missing_endpoint,
    "token_file missing": _missing_token_file,
    "external id already bound": _taken_external_id,
    "listener certificate unloadable": _listener_certificate,
    "endpoint body invalid": _endpoint_body,
    "customer defined twice": _duplicate_customer,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_config_problem_exits_2_naming_the_key_before_anything_listens(
    emulator: Emulator, tmp_path: Path, case: str
) -> None:
    syslog_port = free_port()
    tables, key = CASES[case](tmp_path, syslog_port)
    config = base_config(emulator, tmp_path / "spool", **tables)
    serve = ServeProcess(emulator, config, tmp_path / "run").spawn()
    assert serve.process is not None
    assert serve.process.wait(60) == 2, serve.logs()
    out = serve.logs()
    assert key in out, out
    assert "cannot listen" not in out and "logferry ready" not in out, out
    http_port = int(config["server"]["listen"].rsplit(":", 1)[1])
    assert not bound(http_port) and not bound(syslog_port)


def test_every_problem_is_listed_at_once(emulator: Emulator, tmp_path: Path) -> None:
    config = base_config(
        emulator,
        tmp_path / "spool",
        customers=[
            customer("acme", tmp_path, token_file=str(tmp_path / "absent.token")),
            customer("beta", tmp_path, endpoints=[endpoint(domain="http://x.example.com")]),
        ],
        listeners=[listener(free_port(), "acme", "nope")],
    )
    serve = ServeProcess(emulator, config, tmp_path / "run").spawn()
    assert serve.process is not None
    assert serve.process.wait(60) == 2
    out = serve.logs()
    for key in ("customers.0.token_file", "customers.1.endpoints.0.domain", "listeners.0.endpoint"):
        assert key in out, out


def check(
    config: dict[str, Any], tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.toml"
    path.write_text(to_toml(config))
    return subprocess.run(
        [sys.executable, "-m", "logferry.cli", "serve", "--check", "--config", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_check_a_good_config_exits_0_without_serving(emulator: Emulator, tmp_path: Path) -> None:
    port = free_port()
    config = base_config(
        emulator,
        tmp_path / "spool",
        customers=[customer("acme", tmp_path)],
        listeners=[listener(port, "acme")],
    )
    done = check(config, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "configuration OK" in done.stdout
    assert not bound(port)
    as_json = check(config, tmp_path, "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {
        "ok": True,
        "config": str(tmp_path / "check.toml"),
        "problems": [],
    }
    # --aws: also the vendor account from STS, as serve does at start-up.
    vendor = emulator.vendor.env(emulator.url)
    with_aws = check(config, tmp_path, "--aws", env=vendor)
    assert with_aws.returncode == 0, with_aws.stdout + with_aws.stderr
    config["vendor"]["account_id"] = "111111111111"
    wrong = check(config, tmp_path, "--aws", "--json", env=vendor)
    assert wrong.returncode == 2
    assert [p["where"] for p in json.loads(wrong.stdout)["problems"]] == ["vendor.account_id"]


def test_check_a_bad_config_exits_2_listing_every_problem(
    emulator: Emulator, tmp_path: Path
) -> None:
    config = base_config(
        emulator,
        tmp_path / "spool",
        server={"tls": {"cert_file": str(tmp_path / "x.crt"), "key_file": str(tmp_path / "x.key")}},
        customers=[customer("acme", tmp_path, token_file=str(tmp_path / "absent.token"))],
        listeners=[listener(free_port(), "acme", "nope")],
    )
    done = check(config, tmp_path)
    assert done.returncode == 2
    for key in ("server.tls.cert_file", "customers.0.token_file", "listeners.0.endpoint"):
        assert key in done.stderr, done.stderr
    document = json.loads(check(config, tmp_path, "--json").stdout)
    assert document["ok"] is False
    assert [p["where"] for p in document["problems"]] == [
        "server.tls.cert_file",
        "customers.0.token_file",
        "listeners.0.endpoint",
    ]
    config["spool"]["max_bytes"] = "lots"  # a schema problem: the same document shape
    document = json.loads(check(config, tmp_path, "--json").stdout)
    assert [p["where"] for p in document["problems"]] == ["spool.max_bytes"]


def test_check_sees_endpoints_created_through_the_api(emulator: Emulator, tmp_path: Path) -> None:
    """A listener may name an endpoint the state database holds (made via the API)."""
    config = base_config(emulator, tmp_path / "spool", listeners=[listener(free_port(), "acme")])
    assert check(config, tmp_path).returncode == 2  # no database yet: it does not exist
    store = Store(tmp_path / "spool" / "logferry.db")
    store.put_customer("acme", "acme")
    store.put_endpoint("acme", "s3", "s3", {k: v for k, v in endpoint().items() if k != "type"})
    store.close()
    done = check(config, tmp_path)
    assert done.returncode == 0, done.stderr


def test_serve_help_documents_check_and_sighup() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "logferry.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0
    for needle in ("--check", "--aws", "SIGHUP", "[[customers]]", "restart needed"):
        assert needle in done.stdout, done.stdout
