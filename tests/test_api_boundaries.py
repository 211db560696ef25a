"""Tenant boundaries of the management API, through a real `logferry serve`: a config token
cannot be revoked behind the config's back (and stays one rule across a restart), a customer
sees only its own STS errors, and /docs is off unless `server.docs = true`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from typer.testing import CliRunner

from e2e_helpers import body_of, ingest, make_lines, put_customer, put_endpoint
from logferry.cli import app
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role
from service_helpers import ADMIN_TOKEN, ServeProcess, base_config, reap_all, wait_for

runner = CliRunner()


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    yield
    reap_all()


# ------------------------------------------------------------------ config tokens


def test_a_config_token_cannot_be_revoked_through_the_api_before_or_after_a_restart(
    emulator: Emulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    customer = unique("cfg")
    config_token = "config-token-" + unique("t")
    config = base_config(
        emulator, tmp_path / "spool", customers=[{"id": customer, "token_env": "CFG_TOKEN"}]
    )
    serve = ServeProcess(emulator, config, tmp_path, env={"CFG_TOKEN": config_token}).start()
    with serve.admin() as admin:
        issued = admin.post(f"/v1/customers/{customer}/tokens").json()
        tokens = admin.get(f"/v1/customers/{customer}/tokens").json()
        (static_id,) = [t["id"] for t in tokens if t["id"] != issued["id"]]

        refused = admin.delete(f"/v1/customers/{customer}/tokens/{static_id}")
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["error"] == (
            f"this token comes from the config ([[customers]] id={customer}): "
            "remove or rotate it there"
        )
        assert "token_env" in body["fix"]
        # The operator's CLI shows the same refusal and fails.
        cli = runner.invoke(
            app,
            ["admin", "tokens", "revoke", customer, static_id, "--url", serve.url],
            env={"LOGFERRY_ADMIN_TOKEN": ADMIN_TOKEN, "COLUMNS": "200"},
        )
        assert cli.exit_code == 1 and "remove or rotate it there" in cli.stderr, cli.output
        # Printed as the server said it: rich markup must not eat the TOML table name.
        assert f"([[customers]] id={customer})" in " ".join(cli.stderr.split()), cli.stderr
        # `tokens list` says which is which.
        sources = {t["id"]: t.get("source") for t in tokens}
        assert sources == {static_id: "config", issued["id"]: "api"}
        # An API-issued token is the API's to revoke.
        assert admin.delete(f"/v1/customers/{customer}/tokens/{issued['id']}").status_code == 204

    def whoami(token: str) -> int:
        with serve.as_token(token) as client:
            return client.get("/v1/whoami").status_code

    assert whoami(config_token) == 200 and whoami(issued["token"]) == 401
    serve.terminate()
    serve.start()
    # Same answers after the restart: nothing the API said came undone.
    assert whoami(config_token) == 200 and whoami(issued["token"]) == 401
    with serve.admin() as admin:
        again = admin.delete(f"/v1/customers/{customer}/tokens/{static_id}")
        assert again.status_code == 409
    serve.terminate()


# ------------------------------------------------------------------ STS errors per tenant


class RegionDisabledFor:
    """A loopback STS endpoint in front of the emulator: AssumeRole of the `roles` answers the
    real RegionDisabledException (STS not active in this region for the role's account), every
    other call is forwarded byte for byte (Host included, so SigV4 still verifies)."""

    def __init__(self, upstream: str, roles: set[str]) -> None:
        self.roles = roles
        client = httpx.Client(timeout=60)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                form = parse_qs(body.decode(errors="replace"))
                role = form.get("RoleArn", [""])[0]
                if form.get("Action") == ["AssumeRole"] and role in outer.roles:
                    account = role.split(":")[4]
                    status, headers = 403, {"content-type": "text/xml"}
                    payload = (
                        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                        "<Error><Type>Sender</Type><Code>RegionDisabledException</Code>"
                        "<Message>STS is not activated in this region for account:"
                        f"{account}. Your account administrator can activate STS in this "
                        "region using the IAM Console.</Message></Error>"
                        "<RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>"
                        "</ErrorResponse>"
                    ).encode()
                else:
                    forwarded = [
                        (k, v) for k, v in self.headers.items() if k.lower() != "connection"
                    ]
                    answer = client.post(upstream + self.path, headers=forwarded, content=body)
                    drop = {"transfer-encoding", "connection", "content-length", "content-encoding"}
                    status = answer.status_code
                    headers = {k: v for k, v in answer.headers.items() if k.lower() not in drop}
                    payload = answer.content
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[RegionDisabledFor]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def test_sts_regions_show_a_customer_only_its_own_errors(
    emulator: Emulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    roles: set[str] = set()
    with RegionDisabledFor(emulator.url, roles).running() as sts:
        config = base_config(
            emulator,
            tmp_path / "spool",
            vendor={"sts_endpoints": {"us-east-1": sts.url, "us-west-2": sts.url}},
        )
        serve = ServeProcess(emulator, config, tmp_path).start()
        alice, bob = unique("alice"), unique("bob")
        clients: dict[str, httpx.Client] = {}
        arns: dict[str, str] = {}
        with serve.admin() as admin:
            for customer in (alice, bob):
                put_customer(admin, customer)
                external_id = admin.get(f"/v1/customers/{customer}").json()["external_id"]
                role = make_s3_role(emulator, unique, external_id=external_id)
                arns[customer] = role.role_arn
                body = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
                assert put_endpoint(admin, customer, "s3", body).status_code == 201
                token = admin.post(f"/v1/customers/{customer}/tokens").json()["token"]
                clients[customer] = serve.as_token(token)
            roles.add(arns[alice])  # alice's account has STS off in both regions
            for customer in (alice, bob):
                ingest(clients[customer], customer, "s3", body_of(make_lines(customer, 3)))

            def alice_failed() -> Any:
                status = admin.get(f"/v1/customers/{alice}/endpoints/s3/status").json()
                return status["errors"]

            wait_for(alice_failed)
            everything = admin.get("/v1/sts/regions").json()

        def regions(customer: str) -> dict[str, Any]:
            answer = clients[customer].get("/v1/sts/regions")
            assert answer.status_code == 200, answer.text
            return {r["region"]: r for r in answer.json()}

        seen_by_alice, seen_by_bob = regions(alice), regions(bob)
        serve.terminate()
    for client in clients.values():
        client.close()

    # The admin sees the region's last error, whoever caused it: alice's account, named.
    account = arns[alice].split(":")[4]
    assert any(
        r["last_error"] and "RegionDisabledException" in r["last_error"] for r in everything
    ), everything
    assert any(r["last_error"] and f"account:{account}" in r["last_error"] for r in everything)
    # Bob sees the regions' health but none of alice's errors.
    assert set(seen_by_bob) == {"us-east-1", "us-west-2"}
    assert all(r["last_error"] is None for r in seen_by_bob.values()), seen_by_bob
    assert arns[alice] not in str(seen_by_bob) and "RegionDisabled" not in str(seen_by_bob)
    # Alice sees her own role's failure, per region it names.
    for region in ("us-east-1", "us-west-2"):
        mine = seen_by_alice[region]["last_error"]
        assert mine and arns[alice] in mine and "RegionDisabledException" in mine, seen_by_alice
        assert arns[bob] not in mine


# ------------------------------------------------------------------ /docs


@pytest.mark.parametrize("docs", [False, True])
def test_docs_are_off_unless_configured_and_openapi_stays(
    emulator: Emulator, tmp_path: Path, docs: bool
) -> None:
    server = {"docs": True} if docs else {}
    config = base_config(emulator, tmp_path / "spool", server=server)
    serve = ServeProcess(emulator, config, tmp_path).start()
    with httpx.Client(base_url=serve.url, timeout=30) as http:
        openapi = http.get("/openapi.json")
        page = http.get("/docs")
        redoc = http.get("/redoc")
    serve.terminate()
    assert openapi.status_code == 200 and openapi.json()["info"]["title"] == "logferry"
    assert redoc.status_code == 404
    if not docs:
        assert page.status_code == 404
        return
    assert page.status_code == 200 and "swagger-ui" in page.text
    # Its own CSP: the CDN and exactly its inline script (by hash), still no framing.
    csp = page.headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in csp and "frame-ancestors 'none'" in csp
    (script,) = re.findall(r"<script>(.*?)</script>", page.text, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
