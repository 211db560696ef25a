"""Which event loop and HTTP parser `serve` runs on, and a bounded-head httptools protocol.

uvloop and httptools take per-request and per-read work out of Python (P1 profile: the event
loop thread was the largest single consumer). uvicorn's h11 protocol bounds a request head
(`h11_max_incomplete_event_size`); its httptools protocol has no such bound, so a client could
send headers until memory runs out. `BoundedHttpToolsProtocol` restores the bound: written here
because neither uvicorn nor httptools offers one.

It also sends a response's status line and headers together with its first body bytes
(`CoalescingTransport`): uvicorn writes them separately, so every small response (an ingest
202 is ~150 B of head and ~70 B of body) cost two `send` syscalls and two TCP segments, and the
client two reads. uvicorn has no option for it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from logferry.service.listener_limits import ConnectionLimits

MAX_HEAD_BYTES = 64 * 1024
"""Request line + headers, the same bound as h11's incomplete-event limit."""

_TOO_LARGE_BODY = (
    f"request line and headers exceed {MAX_HEAD_BYTES} bytes; send fewer or shorter headers\n"
).encode()
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    + f"content-length: {len(_TOO_LARGE_BODY)}\r\n\r\n".encode()
    + _TOO_LARGE_BODY
)


class CoalescingTransport:
    """The transport a response cycle writes through: its first write (the head) is held until
    the next write (the body), which goes out joined with it in one `send`, or until the end of
    the current pass of the event loop (a response without a body, a 100 Continue), or a close.
    Everything else is the connection's own transport."""

    __slots__ = ("_held", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        if self._held is not None:
            data, self._held = self._held + data, None
        self._transport.write(data)

    def flush(self) -> None:
        """Send what is held (nothing when the body already took it along)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for `asyncio.Runner` (None = asyncio's default)."""
    if choice == "asyncio" or (choice == "auto" and not has("uvloop")):
        return None
    import uvloop  # "uvloop" chosen explicitly: fail loudly when missing

    return uvloop.new_event_loop


def parser_name(choice: str) -> str:
    """ "httptools" or "h11": what `choice` ("auto", "httptools", "h11") runs on here."""
    return "h11" if choice == "h11" or (choice == "auto" and not has("httptools")) else "httptools"


def http_protocol(choice: str, limits: ConnectionLimits | None = None) -> type:
    """What to give uvicorn's `http=`: our httptools or h11 protocol, enforcing `limits`."""
    if parser_name(choice) == "h11":
        return bounded_h11_protocol(limits)
    return bounded_httptools_protocol(limits)


DISCARD_MAX_BYTES = 1024 * 1024
"""Body bytes read and dropped after the request was already answered (a 503 from the body
budget, a 413) before the connection is closed: enough that a client sending a modest body
reads its answer instead of a reset, little enough that a refused 16 MiB body is not read."""


def _timeout_response(message: str) -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\n" + f"content-length: {len(body)}\r\n\r\n".encode() + body
    )


class _Limited:
    """The listener limits (listener_limits.py) as seen by one connection; mixed into both
    uvicorn protocols, which report their parser's events through `_arm` / `_disarm`.

    Deadlines: "idle" (no byte of a request yet) and "head" (part of a head) run from the
    connection's start or the end of the previous response; "body" from the last body byte.
    """

    limits: ConnectionLimits | None = None
    limits_deadline = 0.0
    _deadline_kind = ""
    _source = ""
    _discarded = 0

    # what the uvicorn protocol provides
    transport: Any
    loop: asyncio.AbstractEventLoop
    cycle: Any
    flow: Any
    client: tuple[str, int] | None

    def _admit(self) -> bool:
        """After uvicorn's connection_made: False when a cap refuses it (closed at once)."""
        limits = self.limits
        if limits is None:
            return True
        self._source = self.client[0] if self.client else ""
        if limits.admit(self, self._source) is not None:
            self.transport.close()
            return False
        self._arm("idle")
        return True

    def _forget(self) -> None:
        if self.limits is not None:
            self.limits.forget(self, self._source)

    def _arm(self, kind: str) -> None:
        limits = self.limits
        if limits is None:
            return
        wait = limits.body_timeout if kind == "body" else limits.head_timeout
        self.limits_deadline = self.loop.time() + wait
        self._deadline_kind = kind

    def _disarm(self) -> None:
        self.limits_deadline = 0.0

    def _response_owed(self) -> bool:
        """A request is being answered (or queued behind one): its client waits for us."""
        cycle = self.cycle
        return bool(getattr(self, "pipeline", None)) or (
            cycle is not None and not cycle.response_complete
        )

    def _waiting_on_us(self) -> bool:
        """No body bytes because we do not read: the app has not taken what is buffered yet
        (reading paused), or the client waits for the 100 Continue the app has not asked for."""
        cycle = self.cycle
        return self.flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue and not cycle.response_complete
        )

    def limits_expired(self, now: float) -> None:
        limits = self.limits
        assert limits is not None
        if self.transport.is_closing():
            self._disarm()
            return
        kind = self._deadline_kind
        if kind == "body":
            if self._waiting_on_us():
                self._arm("body")
                return
            limits.closed("body_timeout")
            answered = self.cycle is not None and self.cycle.response_started
            self._close(
                None
                if answered
                else f"no request body bytes for {limits.body_timeout:g} s; nothing of this "
                "request was kept (server.body_timeout_seconds)\n"
            )
            return
        if self._response_owed():  # armed as a request began: never cut one being answered
            self._disarm()
            return
        if kind == "head":
            limits.closed("head_timeout")
            self._close(
                f"request head not complete within {limits.head_timeout:g} s; send the request "
                "line and headers at once (server.head_timeout_seconds)\n"
            )
        else:
            limits.closed("idle_timeout")
            self._close(None)  # nothing was asked: a 408 would answer a request never sent

    def _discarding(self, size: int) -> None:
        """`size` body bytes arrived for a request already answered: close past the cap."""
        cycle = self.cycle
        if cycle is None or not cycle.response_complete:
            return
        self._discarded += size
        if self._discarded > DISCARD_MAX_BYTES and not self.transport.is_closing():
            self._disarm()
            self.transport.close()

    def _close(self, message: str | None) -> None:
        """408 (when `message`) and close. Called for a body, `message` is None once that
        request has an answer (a 503 or 413 sent before its body ended): one answer each."""
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive sees http.disconnect, its sends drop
            cycle.message_event.set()
        if message is not None:
            self.transport.write(_timeout_response(message))
        self.transport.close()


def bounded_httptools_protocol(limits: ConnectionLimits | None = None) -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(_Limited, HttpToolsProtocol):
        """Answers 431 and closes when a request head grows past MAX_HEAD_BYTES; enforces the
        listener limits."""

        _head_bytes = 0
        _in_head = True
        _too_large = False
        _in_body = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # A stream transport (what uvicorn's protocols declare): TCP and TLS listeners only.
            super().connection_made(cast(asyncio.Transport, transport))
            self._admit()

        def connection_lost(self, exc: Exception | None) -> None:
            self._forget()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_bytes = 0
            if self._deadline_kind == "idle":
                self._deadline_kind = "head"

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._discarded = 0
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > MAX_HEAD_BYTES:
                # Raised inside the parser: uvicorn answers through send_400_response.
                self._too_large = True
                raise ValueError("request head too large")
            super().on_headers_complete()
            self._in_body = True
            self._arm("body")
            if self.cycle is not None:  # this request's cycle (a pipelined one gets its own)
                self.cycle.transport = CoalescingTransport(self.transport, self.loop)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            if self.limits is not None:
                self.limits_deadline = self.loop.time() + self.limits.body_timeout
            if self.cycle.response_complete:
                self._discarding(len(body))

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_body = False
            if self._response_owed():
                self._disarm()
            else:  # answered before its body ended (413, 503): now idle, nothing else will arm
                self._arm("idle")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline and not self._in_body:
                self._arm("head" if self._in_head and self._head_bytes else "idle")

        def send_400_response(self, msg: str) -> None:
            if not self._too_large:
                super().send_400_response(msg)
                return
            self.transport.write(_TOO_LARGE)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                return
            # A head still unfinished after this read: everything fed so far belongs to it.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._too_large = True
                self.send_400_response("")

    BoundedHttpToolsProtocol.limits = limits
    return BoundedHttpToolsProtocol


def bounded_h11_protocol(limits: ConnectionLimits | None = None) -> type:
    """uvicorn's h11 protocol (its head bound is h11_max_incomplete_event_size) with the
    listener limits, read from h11's state after each read (h11 has no parser callbacks)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(_Limited, H11Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # A stream transport (what uvicorn's protocols declare): TCP and TLS listeners only.
            super().connection_made(cast(asyncio.Transport, transport))
            self._admit()

        def connection_lost(self, exc: Exception | None) -> None:
            self._forget()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            discarding = self.conn.their_state is h11.SEND_BODY and self._response_done()
            super().data_received(data)
            if discarding:  # h11 drops these bytes; stop reading them past the cap
                self._discarding(len(data))
            elif self.conn.their_state is not h11.SEND_BODY:
                self._discarded = 0
            self._follow(progress=True)

        def _response_done(self) -> bool:
            return self.cycle is not None and self.cycle.response_complete

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow(progress=False)

        def _follow(self, *, progress: bool) -> None:
            if self.limits is None or self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                if progress or self._deadline_kind != "body":
                    self._arm("body")
            elif state is h11.IDLE:
                if self._response_owed():
                    self._disarm()
                    return
                buffered = bool(self.conn.trailing_data[0])
                if self._deadline_kind == "body" or not self.limits_deadline:
                    self._arm("head" if buffered else "idle")
                elif buffered and self._deadline_kind == "idle":
                    self._deadline_kind = "head"
            else:
                self._disarm()  # the request is whole: its answer is ours to give

    BoundedH11Protocol.limits = limits
    return BoundedH11Protocol
