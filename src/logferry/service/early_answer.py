"""`connection: close` on an answer given before its request body ended, when more of that body
may still come than the server reads and drops.

Why: a 413 (declared too large), a 503 (body budget) or a 401 can be answered before the body
is read. uvicorn keeps such a connection open and drops the rest of the body, and our protocols
close it once more than `DISCARD_MAX_BYTES` were dropped (http_protocol.py). Without this header
the client was never told: it sent its next request on a connection the server was closing and
saw a reset instead of an answer. With it, a client opens a new connection, and uvicorn closes
this one once the answer is sent. A small rest is still dropped and the connection kept.
uvicorn has no such option; an ASGI wrapper sees both parsers.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from logferry.service.http_protocol import DISCARD_MAX_BYTES
from logferry.service.listener_limits import body_framing


class CloseAfterEarlyAnswer:
    """ASGI middleware; outermost but for headers that do not touch the body."""

    def __init__(self, app: ASGIApp, discard_max: int = DISCARD_MAX_BYTES) -> None:
        self.app = app
        self.discard_max = discard_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked, _ = body_framing(scope)
        if not chunked and not declared:
            await self.app(scope, receive, send)  # no body: nothing can be left unread
            return
        received = 0
        ended = False

        async def tracked_receive() -> Message:
            nonlocal received, ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
            else:  # http.disconnect: nothing more will come
                ended = True
            return message

        async def marked_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not ended:
                rest = None if chunked or declared is None else declared - received
                if rest is None or rest > self.discard_max:
                    headers = list(message.get("headers", ()))
                    if not any(name.lower() == b"connection" for name, _ in headers):
                        headers.append((b"connection", b"close"))
                        message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, tracked_receive, marked_send)
