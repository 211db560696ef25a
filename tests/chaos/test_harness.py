"""The harness's own checks can fail: the secrets scan finds a planted secret, and calls are
named from the wire the way the kill moments assume."""

from __future__ import annotations

import pytest

from chaos.harness import find_secrets, operation
from logferry.local.latency_proxy import ProxyRequest

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
