"""The harness's own checks can fail: the secrets scan finds a planted secret, calls are named
from the wire the way the kill moments assume, and short-lived keys really die."""

from __future__ import annotations

import asyncio

import pytest

from chaos.harness import ShortCredentials, find_secrets, operation
from logferry.local.latency_proxy import ProxyRequest, ProxyResponse

pytestmark = pytest.mark.slow


def test_secrets_scan_names_what_leaked_where_without_printing_it() -> None:
    texts = {"serve logs": "ok\nAuthorization: Bearer tok-123456789\n", "/metrics": "x 1\n"}
    hits = find_secrets(texts, {"customer token": "tok-123456789", "vendor key": "abcdefgh12"})
    assert hits == ["customer token in serve logs"]
    assert "tok-123456789" not in " ".join(hits)
    with pytest.raises(ValueError):
        find_secrets(texts, {"short": "abc"})


@pytest.mark.parametrize(
    ("method", "path", "target", "body", "expected"),
    [
        ("POST", "/b/k?uploads", "", b"", "CreateMultipartUpload"),
        ("PUT", "/b/k?partNumber=2&uploadId=u", "", b"", "UploadPart"),
        ("POST", "/b/k?uploadId=u", "", b"", "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u", "", b"", "AbortMultipartUpload"),
        ("PUT", "/b/k", "", b"", "PutObject"),
        ("POST", "/", "Kinesis_20131202.PutRecords", b"{}", "PutRecords"),
        ("POST", "/", "", b"Action=AssumeRole&Version=2011-06-15", "AssumeRole"),
    ],
)
def test_calls_are_named_from_the_wire(
    method: str, path: str, target: str, body: bytes, expected: str
) -> None:
    service = "s3" if path.startswith("/b") else "kinesis" if target else "sts"
    headers = [("X-Amz-Target", target)] if target else []
    assert operation(ProxyRequest(service, method, path, headers, body)) == expected


def test_short_credentials_rewrite_the_expiry_and_refuse_a_dead_key() -> None:
    reply = (
        b"<AssumeRoleResponse><Credentials><AccessKeyId>ASIAEXAMPLE0001</AccessKeyId>"
        b"<Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResponse>"
    )

    async def upstream(body: bytes | None = None) -> ProxyResponse:
        return ProxyResponse(200, {}, reply)

    def signed(service: str, body: bytes) -> ProxyRequest:
        auth = f"AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE0001/20261206/us-east-1/{service}/aws4_"
        return ProxyRequest(service, "POST", "/", [("Authorization", auth + "request")], body)

    async def scenario() -> tuple[ProxyResponse, ProxyResponse, ProxyResponse]:
        alive = ShortCredentials(3600)
        issued = await alive(signed("sts", b"Action=AssumeRole"), upstream)
        dead = ShortCredentials(0)  # the key dies as it is issued
        await dead(signed("sts", b"Action=AssumeRole"), upstream)
        put = await dead(signed("s3", b""), upstream)
        kinesis = ProxyRequest(
            "kinesis",
            "POST",
            "/",
            [*signed("kinesis", b"").headers, ("X-Amz-Target", "Kinesis_20131202.PutRecords")],
            b"{}",
        )
        return issued, put, await dead(kinesis, upstream)

    issued, put, records = asyncio.run(scenario())
    assert b"2099" not in issued.body and b"<Expiration>20" in issued.body
    assert put.status == 400 and b"<Code>ExpiredToken</Code>" in put.body
    assert records.status == 400 and b"ExpiredTokenException" in records.body
