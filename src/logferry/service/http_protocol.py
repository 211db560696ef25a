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
from typing import Any

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


def http_protocol(choice: str) -> Any:
    """What to give uvicorn's `http=`: the bounded httptools protocol or "h11"."""
    if choice == "h11" or (choice == "auto" and not has("httptools")):
        return "h11"
    return bounded_httptools_protocol()


def bounded_httptools_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        """Answers 431 and closes when a request head grows past MAX_HEAD_BYTES."""

        _head_bytes = 0
        _in_head = True
        _too_large = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > MAX_HEAD_BYTES:
                # Raised inside the parser: uvicorn answers through send_400_response.
                self._too_large = True
                raise ValueError("request head too large")
            super().on_headers_complete()
            if self.cycle is not None:  # this request's cycle (a pipelined one gets its own)
                self.cycle.transport = CoalescingTransport(self.transport, self.loop)

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

    return BoundedHttpToolsProtocol
