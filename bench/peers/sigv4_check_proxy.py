"""A loopback proxy in front of the emulator that lets Fluent Bit's requests through with their
signature checked here, because the emulator cannot check it.

Why: Fluent Bit signs the `user-agent` header (it lists it in SignedHeaders). moto re-computes
every signature with botocore's SigV4Auth, which never signs `user-agent` (botocore's
SIGNED_HEADERS_BLACKLIST), so its canonical request differs and it answers
SignatureDoesNotMatch; moto 5.2.5 has no setting to accept it (its only knob,
INITIAL_NO_AUTH_ACTION_COUNT, turns IAM enforcement off altogether). So this proxy (the project's
`logferry.local.latency_proxy` with one middleware) re-computes the signature over exactly the
headers the client signed, user-agent included, with the session's secret key, checks the
payload hash, and answers 403 SignatureDoesNotMatch itself on a mismatch. A request that passes
is forwarded byte for byte with the emulator's rewrite token (`patches.trust_rewritten_bodies`):
moto then skips only its signature check — the access key still names the assumed-role session
and every call is still authorised against the role's policies. Requests that do not sign
user-agent (logferry's botocore) are forwarded untouched and checked by moto as usual.

    python bench/peers/sigv4_check_proxy.py --upstream URL --rewrite-token T
    (env SIGV4_CHECK_KEYS='{"ASIA...": "secret", ...}'; prints its URL on the first line)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from logferry.local.latency_proxy import (
    REWRITE_HEADER,
    LatencyProxy,
    ProxyRequest,
    ProxyResponse,
)

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
    r"SignedHeaders=([^,]+),\s*Signature=([0-9a-f]+)"
)
_UNHASHED = {"UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}


def _exact(base: type[SigV4Auth], signed: list[str]) -> type[SigV4Auth]:
    """botocore's signer, but over exactly the headers the client listed (user-agent too)."""

    class Exact(base):
        def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
            out = HTTPHeaders()
            for name, value in request.headers.items():
                if name.lower() in signed:
                    out[name.lower()] = value
            return out

    return Exact


def expected_signature(
    method: str, url: str, headers: dict[str, str], body: bytes, secret: str, auth: str
) -> tuple[str, str] | None:
    """(client's signature, recomputed one), or None if `auth` is not a SigV4 header."""
    m = _AUTH.match(auth)
    if m is None:
        return None
    access_key, _, region, service, signed_list, signature = m.groups()
    signed = signed_list.split(";")
    base = S3SigV4Auth if service == "s3" else SigV4Auth
    signer = _exact(base, signed)(Credentials(access_key, secret, None), service, region)
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    request.context["timestamp"] = headers.get("X-Amz-Date") or headers.get("x-amz-date")
    canonical = signer.canonical_request(request)
    return signature, signer.signature(signer.string_to_sign(request, canonical), request)


def _error(status: int, code: str, message: str) -> ProxyResponse:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()
    return ProxyResponse(status, {"Content-Type": "application/xml"}, body)


def middleware(
    keys: dict[str, str], token: str, stats: dict[str, int]
) -> Callable[[ProxyRequest, Any], Awaitable[ProxyResponse]]:
    async def check(request: ProxyRequest, forward: Any) -> ProxyResponse:
        headers = dict(request.headers)
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization", "")
        m = _AUTH.match(auth)
        if m is None or "user-agent" not in m.group(5).split(";"):
            stats["passed_through"] += 1
            return await forward()  # nothing the emulator cannot check itself
        secret = keys.get(m.group(1))
        if secret is None:
            stats["refused"] += 1
            return _error(403, "InvalidAccessKeyId", "unknown to the checking proxy")
        sha = lower.get("x-amz-content-sha256")
        if sha and sha not in _UNHASHED and sha != hashlib.sha256(request.body).hexdigest():
            stats["refused"] += 1
            return _error(400, "XAmzContentSHA256Mismatch", "payload hash differs")
        url = f"http://{lower.get('host', '127.0.0.1')}{request.path}"
        if "content-length" not in lower:  # the proxy drops it (hop by hop); it may be signed
            headers["Content-Length"] = str(len(request.body))
        got = expected_signature(request.method, url, headers, request.body, secret, auth)
        if got is None or not hmac.compare_digest(got[0], got[1]):
            stats["refused"] += 1
            if os.environ.get("SIGV4_CHECK_DEBUG"):
                print(f"refused: {request.method} {url} {headers}", file=sys.stderr, flush=True)
            return _error(403, "SignatureDoesNotMatch", "checked by sigv4_check_proxy")
        stats["checked_here"] += 1
        request.headers.append((REWRITE_HEADER, token))
        return await forward()

    return check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True)
    p.add_argument("--rewrite-token", required=True, help="the emulator's rewrite_token")
    args = p.parse_args(argv)
    keys = json.loads(os.environ.get("SIGV4_CHECK_KEYS", "{}"))
    stats = {"checked_here": 0, "passed_through": 0, "refused": 0}
    proxy = LatencyProxy(
        args.upstream,
        middlewares=[middleware(keys, args.rewrite_token, stats)],
        rewrite_token=args.rewrite_token,
    ).start()
    print(proxy.url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    proxy.stop()
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
