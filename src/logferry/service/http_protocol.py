"""Which event loop and HTTP parser `serve` runs on, and a bounded-head httptools protocol.

uvloop and httptools take per-request and per-read work out of Python (P1 profile: the event
loop thread was the largest single consumer). uvicorn's h11 protocol bounds a request head
(`h11_max_incomplete_event_size`); its httptools protocol has no such bound, so a client could
send headers until memory runs out. `BoundedHttpToolsProtocol` restores the bound: written here
because neither uvicorn nor httptools offers one.
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
