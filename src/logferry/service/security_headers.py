"""Security headers on every HTTP response of `logferry serve`, as one pure-ASGI wrapper.

Why a wrapper around the whole app rather than FastAPI middleware: the ingest fast path
(service/ingest_route.py) answers without FastAPI, and errors, /metrics and the console's static
files must carry the headers too. Starlette's own middleware classes would add a layer of
objects per request; this adds one closure and a list concatenation, with the header list
encoded once at import (the ingest path is hot). No library does "append fixed headers" with
that cost, hence these few lines.

A header the app set itself wins (a page with its own Content-Security-Policy, e.g. /docs).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""What the console (/console/: one HTML page, one ES module, one stylesheet, no inline script
or style) needs, and nothing more; JSON answers need none of it."""

HEADERS: tuple[tuple[str, str], ...] = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("referrer-policy", "no-referrer"),
)
NO_STORE: tuple[str, str] = ("cache-control", "no-store")
"""On every answer except the console's static files: API answers can carry tokens (a new
ingest token, the whoami of a bearer) and never belong in a shared or browser cache."""

_STATIC_PREFIX = "/console/"

_ENCODED = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in HEADERS]
_ENCODED_NO_STORE = [*_ENCODED, (NO_STORE[0].encode(), NO_STORE[1].encode())]
_NAMES = frozenset(k for k, _ in _ENCODED_NO_STORE)


class SecurityHeaders:
    """ASGI middleware: append the headers to every `http.response.start`."""

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _ENCODED if scope["path"].startswith(_STATIC_PREFIX) else _ENCODED_NO_STORE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                if any(k.lower() in _NAMES for k, _ in headers):  # the app's own value wins
                    present = {k.lower() for k, _ in headers}
                    headers.extend(h for h in extra if h[0] not in present)
                else:
                    headers.extend(extra)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
