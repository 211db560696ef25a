"""HTTP listener limits: time limits for a request head and for a stalled body, caps on open
connections (in all and per client address), and a budget of request-body bytes held at once.

Why: uvicorn bounds none of these for us. It times out a keep-alive connection only after a
response; a connection that never completes its head is held forever, and every request's body
is buffered whole by the route that reads it, with nothing bounding the sum across requests. So
a few hundred slow connections lock everyone out, and many large bodies at once exhaust memory.
Written here because neither uvicorn nor a maintained ASGI middleware offers these limits for
both of its parsers (httptools and h11); the parser-specific hooks live in `http_protocol.py`.

- `ConnectionLimits` is shared by every connection of one server: it admits or refuses a new
  connection (caps), and one sweep task closes connections past their deadline (a timer per
  connection re-armed on every read would cost far more than one pass over the open set).
- `BodyBudget` + `BodyBudgetMiddleware` (ASGI, in front of the whole app): the declared
  Content-Length is reserved when the head arrives (in all, and as one client address's share)
  and refused with 503 + Retry-After before a byte of the body is read; chunked bodies (and
  bodies declared larger than `max_body_bytes`) are counted as they arrive. A reservation is
  returned when the request ends, however it ends. The client address is the one uvicorn puts
  in the scope: the peer, or X-Forwarded-For from a trusted proxy (`forwarded_allow_ips`).

Defaults, what a client sees, and measured figures: docs/security.md, "HTTP listener limits".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_SECONDS = 1
"""Bodies in flight end within milliseconds to seconds: a short wait is enough."""


class Tracked(Protocol):
    """What the sweep needs from a connection (the protocols in http_protocol.py)."""

    limits_deadline: float
    """loop.time() after which `limits_expired` is called; 0 = no deadline."""

    def limits_expired(self, now: float) -> None: ...


Count = Callable[[str], None]


def _no_count(_: str) -> None:
    return None


class ConnectionLimits:
    """Caps on open connections and the deadlines of every open one (one event loop)."""

    def __init__(
        self,
        *,
        head_timeout: float,
        body_timeout: float,
        max_connections: int,
        max_per_source: int,
        refused: Count = _no_count,
        closed: Count = _no_count,
    ) -> None:
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.refused = refused
        """Counts a refused connection by reason (`max_connections`, `max_per_source`)."""
        self.closed = closed
        """Counts a connection closed by a time limit (`idle_timeout`, `head_timeout`,
        `body_timeout`)."""
        self.open: set[Tracked] = set()
        self.per_source: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.interval = max(0.05, min(1.0, head_timeout / 4, body_timeout / 4))

    def admit(self, conn: Tracked, source: str) -> str | None:
        """Register `conn`; the reason it is refused (the caller closes it), or None."""
        if len(self.open) >= self.max_connections:
            self.refused("max_connections")
            return "max_connections"
        if self.max_per_source and self.per_source.get(source, 0) >= self.max_per_source:
            self.refused("max_per_source")
            return "max_per_source"
        self.open.add(conn)
        self.per_source[source] = self.per_source.get(source, 0) + 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return None

    def forget(self, conn: Tracked, source: str) -> None:
        if conn not in self.open:
            return  # refused: never counted
        self.open.discard(conn)
        left = self.per_source.get(source, 1) - 1
        if left > 0:
            self.per_source[source] = left
        else:
            self.per_source.pop(source, None)

    async def _sweep(self) -> None:
        """Every `interval`: call `limits_expired` on each connection past its deadline."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            for conn in [c for c in self.open if 0 < c.limits_deadline <= now]:
                conn.limits_expired(now)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None


class BodyBudget:
    """Request-body bytes held across all requests (`limit`) and by one client address
    (`per_source`, so one address cannot hold the whole budget); 0 = no limit. One loop."""

    def __init__(self, limit: int, per_source: int = 0) -> None:
        self.limit = limit
        self.per_source = per_source
        self.in_flight = 0
        self.by_source: dict[str, int] = {}

    def take(self, size: int, source: str = "") -> str | None:
        """Reserve `size` bytes; the limit that refuses them ("budget", "source"), or None."""
        if self.limit and self.in_flight + size > self.limit:
            return "budget"
        held = self.by_source.get(source, 0)
        if self.per_source and held + size > self.per_source:
            return "source"
        self.in_flight += size
        self.by_source[source] = held + size
        return None

    def give(self, size: int, source: str = "") -> None:
        self.in_flight -= size
        left = self.by_source.get(source, 0) - size
        if left > 0:
            self.by_source[source] = left
        else:
            self.by_source.pop(source, None)


def body_framing(scope: Scope) -> tuple[int | None, bool, bool]:
    """(declared Content-Length or None, chunked, waits for 100 Continue) of a request head."""
    declared: int | None = None
    chunked = expect_continue = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                declared = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expect_continue = value.lower() == b"100-continue"
    return declared, chunked, expect_continue


def _refusal(budget: BodyBudget, which: str, *, close: bool) -> tuple[Message, Message]:
    if which == "source":
        what = "this client address holds its share of request bodies in flight "
        what += f"({budget.per_source} bytes, server.max_body_bytes_in_flight_per_source)"
    else:
        what = "the server holds its limit of request bodies in flight "
        what += f"({budget.limit} bytes, server.max_body_bytes_in_flight)"
    body = json.dumps(
        {
            "error": f"{what}; nothing of this request was read",
            "fix": f"retry after {RETRY_AFTER_SECONDS} s (Retry-After), or send fewer "
            "large requests at once",
            "retry_after": RETRY_AFTER_SECONDS,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return (
        {"type": "http.response.start", "status": 503, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class BodyBudgetMiddleware:
    """Reserves each request's body in `budget` before the app reads it (see the module doc)."""

    def __init__(
        self, app: ASGIApp, budget: BodyBudget, max_body: int, refused: Count = _no_count
    ) -> None:
        self.app = app
        self.budget = budget
        self.max_body = max_body
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.budget.limit or self.budget.per_source):
            await self.app(scope, receive, send)
            return
        declared, chunked, expect_continue = body_framing(scope)
        if declared is None and not chunked:
            await self.app(scope, receive, send)  # no body
            return
        # Declared above max_body: the ingest routes refuse it unread; others count as it comes.
        held = declared if declared is not None and declared <= self.max_body else 0
        client = scope.get("client")
        source = client[0] if client else ""
        refused = self.budget.take(held, source) if held else None
        if refused is not None:
            self.refused("body_budget" if refused == "budget" else "body_budget_per_source")
            # A client waiting for 100 Continue will not send the body: the connection cannot
            # go on. Otherwise uvicorn reads and drops whatever body still comes, and the
            # connection stays usable (the client sees the 503 rather than a reset).
            for message in _refusal(self.budget, refused, close=expect_continue):
                await send(message)
            return
        if declared is not None and declared <= held:
            # The parser stops the body at Content-Length: the reservation covers all of it.
            try:
                await self.app(scope, receive, send)
            finally:
                self.budget.give(held, source)
            return
        await self._counted(scope, receive, send, held, source)

    async def _counted(
        self, scope: Scope, receive: Receive, send: Send, held: int, source: str
    ) -> None:
        """A body of unknown size: reserve its bytes as they arrive; over the budget, the
        request is cut (503 + close when no response has started) and the app told the client
        left."""
        budget = self.budget
        received = 0
        cut = started = False

        async def counted_receive() -> Message:
            nonlocal received, held, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received > held:
                more = received - held
                refused = budget.take(more, source)
                if refused is not None:
                    cut = True
                    self.refused("body_budget" if refused == "budget" else "body_budget_per_source")
                    if not started:
                        for part in _refusal(budget, refused, close=True):
                            await send(part)
                    return {"type": "http.disconnect"}
                held += more
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut and not started:
                return  # our 503 answered this request
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        finally:
            budget.give(held, source)


def wire_metrics(metrics: Any, limits: ConnectionLimits, budget: BodyBudget) -> None:
    """Point the listener gauges of `metrics` (service/metrics.py) at live state."""
    metrics.http_connections_open.set_function(lambda: len(limits.open))
    metrics.http_body_bytes_in_flight.set_function(lambda: budget.in_flight)
