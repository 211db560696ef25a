"""The ingest route's plain-ASGI fast path (service/ingest_route.py) answers exactly as the
FastAPI route it stands in front of: the same ASGI messages for every kind of request, side by
side on one service; and from outside, through a real `logferry serve`, what a sender sees."""

from __future__ import annotations

import asyncio
import gzip
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from logferry.local.asgi_call import asgi_request
from logferry.local.emulator import Emulator
from logferry.local.toml_out import to_toml
from logferry.service.api import create_app
from logferry.service.config import load_config
from logferry.service.ingest_route import (
    IngestFastPath,
    IngestResult,
    accepted_response,
    ingest_target,
)
from logferry.service.runtime import Service
from s3_helpers import make_s3_role, read_objects
from service_helpers import (
    ADMIN_TOKEN,
    ServeProcess,
    base_config,
    reap_all,
    s3_customer,
    wait_for,
)

TOKEN_A = "token-of-customer-a-0123456789"
TOKEN_B = "token-of-customer-b-0123456789"
MAX_BODY = 64 * 1024


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def _config(emulator: Emulator, unique: Any, tmp_path: Path) -> tuple[dict[str, Any], str, str]:
    a, b = unique("cust-a"), unique("cust-b")
    role = make_s3_role(emulator, unique, external_id=a)
    config = base_config(
        emulator,
        tmp_path / "spool",
        server={"max_body_bytes": MAX_BODY},
        customers=[
            s3_customer(a, "TOKEN_A", role.bucket, role.role_arn),
            {"id": b, "token_env": "TOKEN_B", "endpoints": []},
        ],
    )
    return config, a, b


def _requests(a: str, b: str) -> list[tuple[str, str, list[tuple[bytes, bytes]], bytes]]:
    """(method, path, headers, body): every answer the route gives, and paths it must not take."""
    ok = f"/v1/ingest/{a}/s3"

    def auth(token: str) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", b"Bearer " + token.encode())]

    return [
        ("POST", ok, auth(TOKEN_A), b"one\ntwo\n"),
        ("POST", ok, auth(ADMIN_TOKEN), b"by the admin\n"),
        ("POST", ok, auth(TOKEN_A), b""),
        ("POST", ok, auth(TOKEN_A), b"\n\n\nx\n"),
        ("POST", ok, auth(TOKEN_A), b"bad \xff utf-8\n"),
        ("POST", ok, [*auth(TOKEN_A), (b"content-encoding", b"gzip")], gzip.compress(b"g\n" * 9)),
        ("POST", ok, [], b"x\n"),
        ("POST", ok, [(b"authorization", b"Basic dXNlcjpwdw==")], b"x\n"),
        ("POST", ok, [(b"authorization", b"Bearer ")], b"x\n"),
        ("POST", ok, [(b"authorization", b"Bearer not-a-token")], b"x\n"),
        ("POST", ok, [(b"authorization", b"Bearer caf\xe9")], b"x\n"),
        ("POST", ok, auth(TOKEN_B), b"x\n"),
        ("POST", f"/v1/ingest/{a}/nope", auth(TOKEN_A), b"x\n"),
        ("POST", f"/v1/ingest/{b}/s3", auth(TOKEN_B), b"x\n"),
        ("POST", ok, [*auth(TOKEN_A), (b"content-length", b"99999999")], b"x\n"),
        ("POST", ok, auth(TOKEN_A), b"y" * (MAX_BODY + 1)),
        ("POST", ok, [*auth(TOKEN_A), (b"content-encoding", b"br")], b"x\n"),
        ("POST", ok, [*auth(TOKEN_A), (b"content-encoding", b"gzip")], b"not gzip"),
        ("POST", ok, [*auth(TOKEN_A), (b"content-encoding", b"gzip")], gzip.compress(b"z" * 99999)),
        # Not the route's shape: FastAPI answers (405, redirect, 404).
        ("GET", ok, auth(TOKEN_A), b""),
        ("POST", ok + "/", auth(TOKEN_A), b"x\n"),
        ("POST", ok + "/extra", auth(TOKEN_A), b"x\n"),
        ("POST", f"/v1/ingest/{a}", auth(TOKEN_A), b"x\n"),
        ("POST", f"/v1/ingest/{a}//s3", auth(TOKEN_A), b"x\n"),
    ]


def test_fast_path_answers_exactly_as_the_fastapi_route(
    emulator: Emulator, unique: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, a, b = _config(emulator, unique, tmp_path)
    path = tmp_path / "logferry.toml"
    path.write_text(to_toml(config))
    for name, value in {
        **emulator.vendor.env(emulator.url),
        "TOKEN_A": TOKEN_A,
        "TOKEN_B": TOKEN_B,
        config["auth"]["admin_token_env"]: ADMIN_TOKEN,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    async def both() -> list[tuple[Any, list[Any], list[Any]]]:
        service = Service(load_config(path))
        await service.start()
        try:
            plain = create_app(service)
            fast = IngestFastPath(create_app(service), service)
            return [
                (request, await asgi_request(plain, *request), await asgi_request(fast, *request))
                for request in _requests(a, b)
            ]
        finally:
            await service.stop()

    answers = asyncio.run(both())
    statuses = []
    for request, plain, fast in answers:
        assert fast == plain, f"{request[0]} {request[1]} {request[2]}"
        statuses.append(plain[0]["status"])
    # Every answer was really exercised (a parity of two 500s would prove nothing).
    assert statuses[:-5] == [202] * 6 + [401] * 5 + [403, 404, 404, 413, 413, 415, 400, 413]
    assert statuses[-5:] == [405, 307, 404, 404, 404]


def test_the_202_body_is_the_documented_ingest_result() -> None:
    """The 202 is formatted directly (no model per request); it must stay byte for byte what
    the OpenAPI document's `IngestResult` renders, fields and order included."""
    for counts in [(0, 0, 0, 0), (20, 0, 0, 0), (1, 2, 3, 4), (10**9, 0, 7, 0)]:
        response = accepted_response(*counts)
        model = IngestResult(**dict(zip(IngestResult.model_fields, counts, strict=True)))
        assert response.body == model.model_dump_json().encode()
        assert response.status_code == 202
        assert response.headers["content-type"] == "application/json"


def test_ingest_target_takes_only_the_routes_exact_shape() -> None:
    def scope(path: str, method: str = "POST", root_path: str = "") -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": root_path}

    assert ingest_target(scope("/v1/ingest/c-1/s3")) == ("c-1", "s3")
    assert ingest_target(scope("/v1/ingest/c%2F1/s3")) == ("c%2F1", "s3")  # path is decoded
    for path in ("/v1/ingest/c/s3/", "/v1/ingest/c", "/v1/ingest//s3", "/v1/ingest/c/s3/x"):
        assert ingest_target(scope(path)) is None, path
    assert ingest_target(scope("/v1/ingest/c/s3", method="PUT")) is None
    assert ingest_target(scope("/v1/ingest/c/s3", root_path="/api")) is None
    assert ingest_target({"type": "websocket", "path": "/v1/ingest/c/s3"}) is None


def test_senders_see_the_documented_answers_through_serve(
    emulator: Emulator, unique: Any, tmp_path: Path
) -> None:
    config, a, b = _config(emulator, unique, tmp_path)
    serve = ServeProcess(
        emulator, config, tmp_path, env={"TOKEN_A": TOKEN_A, "TOKEN_B": TOKEN_B}
    ).start()
    with serve.as_token(TOKEN_A) as client:
        ok = client.post(f"/v1/ingest/{a}/s3", content=b"first\n\nsecond\n")
        assert ok.status_code == 202
        assert ok.headers["content-type"] == "application/json"
        assert ok.content == b'{"accepted":2,"empty_skipped":1,"truncated":0,"invalid_utf8":0}'
        unknown = client.post(f"/v1/ingest/{a}/nope", content=b"x\n")
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": f"customer {a!r} has no endpoint 'nope'.",
            "fix": f"Create it: PUT /v1/customers/{a}/endpoints/nope",
        }
        foreign = client.post(f"/v1/ingest/{b}/s3", content=b"x\n")
        assert foreign.status_code == 403
        assert foreign.json() == {"detail": f"this token does not belong to customer {b!r}"}
        too_big = client.post(f"/v1/ingest/{a}/s3", content=b"y" * (MAX_BODY + 1))
        assert too_big.status_code == 413
        assert too_big.json()["error"] == f"body is {MAX_BODY + 1} bytes; the limit is {MAX_BODY}"
        assert client.get(f"/v1/ingest/{a}/s3").status_code == 405
    anonymous = httpx.post(f"{serve.url}/v1/ingest/{a}/s3", content=b"x\n", timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in anonymous.json()["detail"]
    with serve.admin() as admin:
        spec = admin.get("/openapi.json").json()
        assert "post" in spec["paths"]["/v1/ingest/{customer_id}/{name}"]
    # A sender that dies mid-body: counted and logged in one line, never a traceback, and
    # nothing of the cut body lands (the lines checked below are exactly the two above).
    host, port = serve.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            f"POST /v1/ingest/{a}/s3 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN_A}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"cut-1\ncut-2\n"
        )
    disconnected = 'logferry_ingest_rejected_requests_total{reason="client_disconnected"} 1.0'
    with serve.admin() as admin:
        wait_for(lambda: disconnected in admin.get("/metrics").text, timeout=30)
    logs = serve.logs()
    assert "the client disconnected after 12 of 1000 body bytes" in logs
    assert "Traceback" not in logs and "Exception in ASGI application" not in logs
    bucket = config["customers"][0]["endpoints"][0]["bucket_name"]

    def landed() -> list[bytes]:
        return [
            line
            for key, obj in read_objects(emulator, bucket).items()
            for line in (gzip.decompress(obj.body) if key.endswith(".gz") else obj.body).split()
        ]

    assert sorted(wait_for(landed, timeout=60)) == [b"first", b"second"]
