"""Test helpers: customer roles made the way the guide says, and tiny fault servers on loopback."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from logferry.aws.policies import s3_permission_policy, trust_policy
from logferry.local.emulator import Emulator

REGION_DISABLED_BODY = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>RegionDisabledException</Code><Message>STS is not activated in this region for "
    "account:123456789012. Your account administrator can activate STS in this region using the "
    "IAM Console.</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>"
    "</ErrorResponse>"
)


def make_s3_role(
    emulator: Emulator,
    role_name: str,
    bucket: str,
    external_id: str,
    *,
    prefix: str = "",
    trust: dict[str, Any] | None = None,
    permission: dict[str, Any] | None = None,
    create_bucket: bool = True,
) -> str:
    """A role in the customer account with the guide's trust and S3 permission policy."""
    iam = emulator.client("iam")
    if create_bucket:
        emulator.client("s3").create_bucket(Bucket=bucket)
    arn = iam.create_role(
        RoleName=role_name,
        AssumeRolePolicyDocument=json.dumps(
            trust or trust_policy("s3", external_id, emulator.vendor.account_id)
        ),
    )["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=role_name,
        PolicyName="logferry-s3",
        PolicyDocument=json.dumps(permission or s3_permission_policy(bucket, prefix)),
    )
    return arn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def canned_server(status: int, body: str, content_type: str = "text/xml") -> Iterator[str]:
    """A loopback HTTP server that answers every request with one canned response."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            hits.append(self.rfile.read(length).decode(errors="replace"))
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        yield url
    finally:
        server.shutdown()
        server.server_close()
