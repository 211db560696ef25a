"""Tenant isolation and security defaults, through a real `logferry serve` (issue 11).

One customer's token, quota, rate or deletion must never reach another customer; every refusal
is a 401/403/404/409/429 with a reason, never a 5xx and never another tenant's data.
"""

from __future__ import annotations

import gzip
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aws_helpers import make_s3_role as make_plain_role
from backends import LOCAL_SPOOL_ONLY
from logferry.aws.sts_broker import CredentialBroker
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for

NON_ASCII = ["Bearer t\u00f6ken".encode("latin-1"), "Bearer t\u00f6ken-\u2603".encode()]


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


def _endpoint(role: Any, period: int = 1) -> dict[str, Any]:
    return {
        "type": "s3",
        "name": "s3",
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "path": "logs/",
        "period": period,
    }


def _bucket_lines(emulator: Emulator, bucket: str) -> list[bytes]:
    lines: list[bytes] = []
    for key, obj in read_objects(emulator, bucket).items():
        body = gzip.decompress(obj.body) if key.endswith(".gz") else obj.body
        lines += body.splitlines()
    return lines


def _customer_routes(customer: str) -> list[tuple[str, str]]:
    base = f"/v1/customers/{customer}"
    return [
        ("POST", f"/v1/ingest/{customer}/s3"),
        ("GET", f"{base}/endpoints"),
        ("GET", f"{base}/endpoints/s3"),
        ("POST", f"{base}/endpoints/s3/verify"),
        ("GET", f"{base}/endpoints/s3/status"),
        ("PUT", f"{base}/endpoints/s3"),
        ("DELETE", f"{base}/endpoints/s3"),
        ("GET", base),
        ("PUT", base),
        ("DELETE", base),
        ("GET", f"{base}/tokens"),
        ("POST", f"{base}/tokens"),
        ("DELETE", f"{base}/tokens/whatever"),
        ("GET", "/v1/customers"),
        ("GET", "/metrics"),
    ]


def _assert_refused(serve: ServeProcess, customer: str, authorization: bytes, secret: str) -> None:
    """Every customer-scoped route: 401/403/404, never 5xx, never the customer's data."""
    with httpx.Client(base_url=serve.url, timeout=60) as client:
        for method, path in _customer_routes(customer):
            body = b"stolen line\n" if "ingest" in path else b"{}"
            response = client.request(
                method, path, content=body, headers={"Authorization": authorization}
            )
            where = f"{method} {path} with {authorization[:24]!r}"
            assert response.status_code in (401, 403, 404), (where, response.text)
            assert secret not in response.text, where
            assert "logferry_ingest" not in response.text, where


@pytest.fixture
def tenants(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> dict[str, Any]:
    """Customers A (quota 64 KiB, role trusts another external ID: nothing ever drains) and
    B (working S3 role), both static with tokens; verify limited to 1 per minute; on each
    spool backend."""
    a, b = unique("cust-a"), unique("cust-b")
    role_a = make_s3_role(emulator, unique, external_id=unique("not-a"))
    role_b = make_s3_role(emulator, unique, external_id=b)
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool=spool_backend,
        server={"verify_per_minute": 1},
        customers=[
            {
                "id": a,
                "token_env": "TOKEN_A",
                "spool_max_bytes": "64KiB",
                "endpoints": [_endpoint(role_a)],
            },
            {"id": b, "token_env": "TOKEN_B", "endpoints": [_endpoint(role_b)]},
        ],
    )
    env = {"TOKEN_A": "token-of-customer-a-000000000000", "TOKEN_B": "token-of-customer-b-1111"}
    serve = ServeProcess(emulator, config, tmp_path, env=env).start()
    return {"a": a, "b": b, "role_a": role_a, "role_b": role_b, "serve": serve, **env}


def test_quota_refuses_only_the_tenant_over_it(emulator: Emulator, tenants) -> None:
    serve, a, b = tenants["serve"], tenants["a"], tenants["b"]
    body = b"".join(b"a line of customer A number %06d\n" % i for i in range(400))  # ~14 KiB
    codes: list[int] = []
    with serve.as_token(tenants["TOKEN_A"]) as client_a:
        for _ in range(12):
            response = client_a.post(f"/v1/ingest/{a}/s3", content=body)
            codes.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
                assert "spool_max_bytes" in response.json()["error"], response.text
                assert a in response.json()["error"]
                break
    assert codes[0] == 202 and codes[-1] == 429, codes
    with serve.as_token(tenants["TOKEN_B"]) as client_b:
        response = client_b.post(f"/v1/ingest/{b}/s3", content=b"b-line-1\nb-line-2\n")
        assert response.status_code == 202, response.text
    assert sorted(wait_for(lambda: _bucket_lines(emulator, tenants["role_b"].bucket))) == [
        b"b-line-1",
        b"b-line-2",
    ]
    with serve.as_token(tenants["TOKEN_A"]) as client_a:  # A is still refused
        assert client_a.post(f"/v1/ingest/{a}/s3", content=body).status_code == 429
    # ... before its body is read: the head alone gets the 429 (a flood past the quota costs
    # the server a request head per body, not reading and normalising it).
    host, port = serve.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"POST /v1/ingest/{a}/s3 HTTP/1.1\r\nhost: x\r\n"
            f"authorization: Bearer {tenants['TOKEN_A']}\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536) or b"<closed>"
            assert not answer.endswith(b"<closed>"), answer
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        assert b"retry-after: " in answer.lower(), answer
    with serve.admin() as admin:  # the quota is visible and can be raised through the API
        assert admin.get(f"/v1/customers/{a}").json()["spool_max_bytes"] == 64 * 1024
        raised = admin.put(f"/v1/customers/{a}", json={"spool_max_bytes": "1MiB"})
        assert raised.status_code == 200 and raised.json()["spool_max_bytes"] == 1 << 20
    with serve.as_token(tenants["TOKEN_A"]) as client_a:
        assert client_a.post(f"/v1/ingest/{a}/s3", content=body).status_code == 202


def test_ingest_rate_limit_is_per_customer(emulator: Emulator, tenants) -> None:
    serve, a, b = tenants["serve"], tenants["a"], tenants["b"]
    with serve.admin() as admin:
        response = admin.put(f"/v1/customers/{b}", json={"ingest_rate_lines": 5})
        assert response.json()["ingest_rate_lines"] == 5
    with serve.as_token(tenants["TOKEN_B"]) as client_b:
        first = client_b.post(f"/v1/ingest/{b}/s3", content=b"x\n" * 50)
        second = client_b.post(f"/v1/ingest/{b}/s3", content=b"y\n")
    assert first.status_code == 202, first.text
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 5, second.text
    assert "ingest_rate" in second.json()["fix"]
    with serve.as_token(tenants["TOKEN_A"]) as client_a:  # A has no rate limit
        assert client_a.post(f"/v1/ingest/{a}/s3", content=b"z\n" * 50).status_code == 202


def test_isolation_matrix_and_metrics(tenants) -> None:
    serve, a, b = tenants["serve"], tenants["a"], tenants["b"]
    with serve.admin() as admin:
        token_id = admin.post(f"/v1/customers/{a}/tokens").json()
        assert admin.delete(f"/v1/customers/{a}/tokens/{token_id['id']}").status_code == 204
        assert admin.get("/metrics").status_code == 200
    secret = tenants["role_a"].bucket
    for authorization in [
        f"Bearer {tenants['TOKEN_B']}".encode(),  # another customer's token
        f"Bearer {token_id['token']}".encode(),  # revoked
        b"Bearer not-a-token-at-all",
        b"Basic dXNlcjpwYXNz",
        *NON_ASCII,
    ]:
        _assert_refused(serve, a, authorization, secret)
    # /metrics lists every customer: no token and a customer's own token are both refused.
    assert httpx.get(f"{serve.url}/metrics").status_code == 401
    with serve.as_token(tenants["TOKEN_A"]) as client_a:
        assert client_a.get("/metrics").status_code == 401
        # ...while A's own token still works on A's routes.
        assert client_a.get(f"/v1/customers/{a}/endpoints/s3").status_code == 200
        assert client_a.get(f"/v1/customers/{b}/endpoints/s3").status_code == 403


def test_verify_is_rate_limited_per_customer(tenants) -> None:
    serve, a, b = tenants["serve"], tenants["a"], tenants["b"]
    with serve.as_token(tenants["TOKEN_A"]) as client_a:
        assert client_a.post(f"/v1/customers/{a}/endpoints/s3/verify").status_code == 200
        again = client_a.post(f"/v1/customers/{a}/endpoints/s3/verify")
        assert again.status_code == 429 and int(again.headers["Retry-After"]) >= 1, again.text
    with serve.admin() as admin:  # the admin acting for A is limited too; B is not
        assert admin.post(f"/v1/customers/{a}/endpoints/s3/verify").status_code == 429
        assert admin.post(f"/v1/customers/{b}/endpoints/s3/verify").status_code == 200


@LOCAL_SPOOL_ONLY  # the modes of the local spool's own files (NATS keeps the data in streams)
def test_spool_and_state_files_are_private(tenants) -> None:
    serve, b = tenants["serve"], tenants["b"]
    with serve.as_token(tenants["TOKEN_B"]) as client_b:
        assert client_b.post(f"/v1/ingest/{b}/s3", content=b"private\n").status_code == 202
    root = Path(serve.config["spool"]["dir"])
    seen = 0
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
        seen += 1
    assert seen > 5 and (root / "logferry.db").exists()


def test_s3_domain_must_be_https(tenants) -> None:
    serve, b, role = tenants["serve"], tenants["b"], tenants["role_b"]
    with serve.admin() as admin:
        body = {**_endpoint(role), "name": "other", "domain": "http://127.0.0.1:9"}
        refused = admin.put(f"/v1/customers/{b}/endpoints/other?verify=false", json=body)
        assert refused.status_code == 422
        assert "https://" in refused.text and "allow_http_domain" in refused.text
        body["domain"] = "https://storage.example.com"
        accepted = admin.put(f"/v1/customers/{b}/endpoints/other?verify=false", json=body)
        assert accepted.status_code == 201, accepted.text


def test_deleted_customer_never_comes_back_with_its_external_id(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    config = base_config(emulator, tmp_path / "spool", spool=spool_backend)
    serve = ServeProcess(emulator, config, tmp_path).start()
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)  # trusts the first external ID
    with serve.admin() as admin:
        first = admin.put(f"/v1/customers/{customer}", json={})
        assert first.status_code == 201 and first.json()["external_id"] == customer
        assert admin.put(f"/v1/customers/{customer}/endpoints/s3", json=_endpoint(role)).is_success
        token = admin.post(f"/v1/customers/{customer}/tokens").json()["token"]
        assert admin.delete(f"/v1/customers/{customer}").status_code == 204
        # Nobody may take the tombstoned ID, nor a live customer's ID.
        other = unique("other")
        taken = admin.put(f"/v1/customers/{other}", json={"external_id": customer})
        assert taken.status_code == 409 and "never reused" in taken.text
        live = admin.put(f"/v1/customers/{other}", json={}).json()["external_id"]
        dup = admin.put(f"/v1/customers/{unique('third')}", json={"external_id": live})
        assert dup.status_code == 409
        again = admin.put(f"/v1/customers/{customer}", json={})
        assert again.status_code == 201
        new_id = again.json()["external_id"]
        assert new_id != customer and customer not in again.json()["trust_policy_hint"].split()
        # The old role trusts only the old ID: with the new one the check and delivery fail.
        refused = admin.put(f"/v1/customers/{customer}/endpoints/s3", json=_endpoint(role))
        assert refused.status_code == 422 and "AccessDenied" in refused.text
        saved = admin.put(
            f"/v1/customers/{customer}/endpoints/s3?verify=false", json=_endpoint(role)
        )
        assert saved.status_code == 201
        # The deleted customer's token died with it.
        stale = httpx.post(
            f"{serve.url}/v1/ingest/{customer}/s3",
            content=b"x\n",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert stale.status_code == 401
        ingest = admin.post(f"/v1/ingest/{customer}/s3", content=b"after re-create\n")
        assert ingest.status_code == 202

        def denied() -> bool:
            status = admin.get(f"/v1/customers/{customer}/endpoints/s3/status").json()
            return any(e["code"] == "AccessDenied" for e in status["errors"])

        wait_for(denied, timeout=60)
    assert b"after re-create" not in _bucket_lines(emulator, role.bucket)


def test_static_tokens_follow_the_config(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    """A token rotated or removed in the config stops working at the next start."""
    c, d = unique("cust-c"), unique("cust-d")
    role_c = make_s3_role(emulator, unique, external_id=c)
    role_d = make_s3_role(emulator, unique, external_id=d)

    def config(token_d: bool) -> dict[str, Any]:
        customer_d: dict[str, Any] = {"id": d, "endpoints": [_endpoint(role_d)]}
        if token_d:
            customer_d["token_env"] = "TOKEN_D"
        return base_config(
            emulator,
            tmp_path / "spool",
            spool=spool_backend,
            customers=[
                {"id": c, "token_env": "TOKEN_C", "endpoints": [_endpoint(role_c)]},
                customer_d,
            ],
        )

    old_c, new_c, token_d = "token-c-old-0000000000", "token-c-new-1111111111", "token-d-22222"
    env = {"TOKEN_C": old_c, "TOKEN_D": token_d}
    first = ServeProcess(emulator, config(True), tmp_path / "one", env=env).start(180)
    for token, customer in ((old_c, c), (token_d, d)):
        with first.as_token(token) as client:
            assert client.post(f"/v1/ingest/{customer}/s3", content=b"ok\n").status_code == 202
    assert first.terminate() == 0
    env = {"TOKEN_C": new_c, "TOKEN_D": token_d}
    second = ServeProcess(emulator, config(False), tmp_path / "two", env=env).start(180)
    with second.as_token(new_c) as client:
        assert client.post(f"/v1/ingest/{c}/s3", content=b"ok\n").status_code == 202
    _assert_refused(second, c, f"Bearer {old_c}".encode(), role_c.bucket)  # rotated
    _assert_refused(second, d, f"Bearer {token_d}".encode(), role_d.bucket)  # removed


def test_serve_refuses_a_vendor_account_that_is_not_its_own(
    emulator: Emulator, tmp_path: Path
) -> None:
    config = base_config(emulator, tmp_path / "spool")
    config["vendor"]["account_id"] = "111111111111"
    serve = ServeProcess(emulator, config, tmp_path).spawn()
    assert serve.process is not None
    assert serve.process.wait(60) == 2
    logs = serve.logs()
    assert "vendor.account_id is 111111111111" in logs
    assert emulator.vendor.account_id in logs
    # Unset: the account comes from sts:GetCallerIdentity and shows in trust policies.
    del config["vendor"]["account_id"]
    serve = ServeProcess(emulator, config, tmp_path / "unset").start()
    with serve.admin() as admin:
        out = admin.put("/v1/customers/some-customer", json={}).json()
    assert emulator.vendor.account_id in str(out["trust_policies"]["s3"])


def test_source_identity_is_sent_with_assume_role(emulator: Emulator, unique) -> None:
    role = make_plain_role(emulator, unique("role"), unique("bkt"), "cust-si")
    broker = CredentialBroker(
        vendor_name="acme-cdn",
        regions=["us-east-1"],
        sts_endpoints={"us-east-1": emulator.url},
        target=emulator.target,
        vendor_credentials=emulator.vendor.credentials(),
        source_identity="acme-delivery",
    )
    seen: list[dict[str, Any]] = []
    broker._sts("us-east-1").meta.events.register(
        "provide-client-params.sts.AssumeRole", lambda params, **_: seen.append(dict(params))
    )
    broker.credentials(role, "cust-si", customer_id="cust-si").get_frozen_credentials()
    assert seen and seen[0]["SourceIdentity"] == "acme-delivery"
    assert broker.caller_account() == emulator.vendor.account_id
