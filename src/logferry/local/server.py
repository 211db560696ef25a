"""The emulator process: patched moto server with IAM enforcement and bootstrapped accounts.

Run as `python -m logferry.local.server --port N --account ID:USER:ROLE ...`; prints one JSON line
(`{"url": ..., "accounts": [...]}`) on stdout once it accepts requests. It runs in its own
process so its RAM (moto keeps objects in memory) and GIL never weigh on the caller.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
from typing import Any

ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
VENDOR_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
}
CONTROL_PREFIX = "/_logferry/"


def create_account_user(account_id: str, user_name: str, role: str) -> dict[str, str]:
    """Create a user with an access key directly in moto's backend (no auth window needed)."""
    from moto.iam.models import iam_backends

    backend = iam_backends[account_id]["aws"]
    if user_name not in backend.users:
        backend.create_user("us-east-1", user_name)
        policy = VENDOR_POLICY if role == "vendor" else ADMIN_POLICY
        backend.put_user_policy(user_name, f"logferry-local-{role}", json.dumps(policy))
    key = backend.create_access_key(user_name)
    return {
        "account_id": account_id,
        "user_name": user_name,
        "role": role,
        "access_key_id": key.access_key_id,
        "secret_access_key": key.secret_access_key,
    }


class ControlApp:
    """WSGI wrapper: `/_logferry/accounts` (POST) adds an account; everything else is moto."""

    def __init__(self, moto_app: Any) -> None:
        self.moto_app = moto_app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(CONTROL_PREFIX):
            return self.moto_app(environ, start_response)
        if path == CONTROL_PREFIX + "accounts" and environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            with self.lock:
                made = create_account_user(
                    str(body["account_id"]),
                    body.get("user_name", "admin"),
                    body.get("role", "admin"),
                )
            payload = json.dumps(made).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [payload]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"unknown control path"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        help="ACCOUNT_ID:USER:ROLE (ROLE is admin or vendor); repeatable",
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the emulator listens on loopback only")

    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from logferry.local.patches import apply_all, trust_rewritten_bodies

    apply_all()
    # Known only to our parent: a test proxy that rewrites a body (so its SigV4 payload hash no
    # longer matches) proves with it that the caller's signature was valid when it arrived.
    rewrite_token = secrets.token_hex(16)
    trust_rewritten_bodies(rewrite_token)
    accounts = []
    for spec in args.account:
        account_id, user_name, role = spec.split(":")
        accounts.append(create_account_user(account_id, user_name, role))
    # IAM enforcement from the first request on.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0

    app = ControlApp(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    host, port = server.socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    sys.stdout.write(
        json.dumps(
            {"url": f"http://{shown}:{port}", "accounts": accounts, "rewrite_token": rewrite_token}
        )
        + "\n"
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
