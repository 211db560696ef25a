"""One syslog TCP connection (optionally TLS) as a byte stream that never drops what it received.

Why not asyncio's StreamReader / `start_server(ssl=...)`: when a connection dies (RST, a TLS
error, a sender that vanishes without close_notify), StreamReader stores the exception and its
next `read()` raises it *before* returning bytes already buffered, and asyncio's SSL layer throws
away ciphertext it had not yet decrypted while the reader was paused. Both lose messages the
server had received. Here the socket side (`RawConnection`) only appends what arrives to a buffer
and records how the connection ended, TLS is done over memory BIOs (`TlsLayer`), and `read()`
returns every received byte — decrypting what is left after the end — before it reports the end.

TLS handshake failures surface as exceptions from `SyslogStream.handshake` (so the listener can
count them, which asyncio's built-in TLS server never lets it do).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Literal, cast

EndReason = Literal["clean", "fin_without_close_notify", "reset", "tls_error", "local"]
"""How a stream ended: `clean` is a FIN on plain TCP or a close_notify on TLS; `local` means
this side closed it (timeout, stop, refusal)."""


class RawConnection(asyncio.Protocol):
    """The socket side: buffers what arrives, pauses reading above `high_water` bytes.

    Pausing keeps further bytes in the kernel (the TCP window then slows the sender); nothing
    already handed over by the transport is ever discarded, however the connection ends.
    """

    def __init__(self, on_made: Callable[[RawConnection], None], high_water: int) -> None:
        self._on_made = on_made
        self._high = high_water
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.eof = False
        self.lost = False
        self.closed_locally = False
        self.error: BaseException | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        self._on_made(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._high and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep the transport: the handler closes it once it has read everything

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake()

    # -- for the stream -----------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.eof or self.lost or self.closed_locally

    @property
    def buffered(self) -> int:
        return self._size

    def take(self, limit: int) -> bytes:
        """Up to about `limit` buffered bytes (whole chunks; at least one); b"" when none."""
        if not self._chunks:
            return b""
        parts = [self._chunks.popleft()]
        size = len(parts[0])
        while self._chunks and size + len(self._chunks[0]) <= limit:
            chunk = self._chunks.popleft()
            parts.append(chunk)
            size += len(chunk)
        self._size -= size
        if self._paused and self._size < self._high // 2 and not self.ended:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def wait(self) -> None:
        """Until more bytes arrive or the connection ends."""
        if self._chunks or self.ended:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, *, abort: bool = False) -> None:
        """Close from this side; bytes already buffered stay readable."""
        self.closed_locally = True
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class TlsLayer:
    """Server-side TLS over memory BIOs, driven by the stream (the socket never sees ssl)."""

    def __init__(self, context: ssl.SSLContext, raw: RawConnection) -> None:
        self._raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._in, self._out, server_side=True)
        self.finished = False
        self.close_notify = False
        self.error: ssl.SSLError | None = None

    async def handshake(self) -> None:
        """Raises ssl.SSLError (bad hello, rejected client certificate…) or ConnectionError."""
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
            except ssl.SSLError:
                self._flush()  # send the alert: the client learns why
                raise
            else:
                self._flush()
                return
            data = self._raw.take(1 << 20)
            if data:
                self._in.write(data)
                continue
            if self._raw.ended:
                raise ConnectionResetError("connection closed during the TLS handshake")
            await self._raw.wait()

    def feed(self, data: bytes) -> None:
        self._in.write(data)

    def feed_eof(self) -> None:
        if not self._in.eof:
            self._in.write_eof()

    def decrypt(self, limit: int) -> bytes:
        """Plaintext available now (up to about `limit`); sets `finished` at the TLS end."""
        parts: list[bytes] = []
        size = 0
        while size < limit and not self.finished:
            try:
                chunk = self.obj.read(limit - size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._closed_by_peer()
                break
            except ssl.SSLError as exc:  # SSLEOFError: the TCP stream ended without close_notify
                self.finished = True
                self.error = exc
                break
            if not chunk:  # CPython's SSLObject.read returns b"" for a received close_notify
                self._closed_by_peer()
                break
            parts.append(chunk)
            size += len(chunk)
        self._flush()
        return b"".join(parts)

    def _closed_by_peer(self) -> None:
        """The peer sent close_notify: answer with ours (RFC 5425 §4.4: the receiver MUST), or a
        sender that waits for it (`SSLSocket.unwrap()`, `gnutls_bye(GNUTLS_SHUT_RDWR)`) sees
        EOF and reports an error. `_flush` puts it on the wire before the handler closes."""
        self.finished = self.close_notify = True
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.obj.unwrap()

    def _flush(self) -> None:
        if self._out.pending:
            self._raw.write(self._out.read())


class SyslogStream:
    """`read()` hands over every byte the peer sent, then b"" and `end_reason`; never raises."""

    def __init__(self, raw: RawConnection, tls: ssl.SSLContext | None) -> None:
        self.raw = raw
        self.tls = TlsLayer(tls, raw) if tls is not None else None
        self.end_reason: EndReason | None = None

    async def handshake(self) -> None:
        if self.tls is not None:
            await self.tls.handshake()

    async def read(self, limit: int) -> bytes:
        raw = self.raw
        tls = self.tls
        while True:
            if tls is None:
                data = raw.take(limit)
                if data:
                    return data
                if raw.ended:
                    self.end_reason = self._raw_end()
                    return b""
                await raw.wait()
                continue
            data = tls.decrypt(limit)
            if data:
                return data
            if tls.finished:
                self.end_reason = self._tls_end(tls)
                return b""
            cipher = raw.take(limit)
            if cipher:
                tls.feed(cipher)
            elif raw.ended:
                tls.feed_eof()  # what is left in the BIO is decrypted next, then the end shows
            else:
                await raw.wait()

    def _raw_end(self) -> EndReason:
        raw = self.raw
        if raw.closed_locally and not raw.eof:
            return "local"
        if raw.eof:
            return "clean"
        return "reset" if raw.error is not None else "local"

    def _tls_end(self, tls: TlsLayer) -> EndReason:
        if tls.close_notify:
            return "clean"
        raw = self.raw
        if raw.closed_locally and not raw.eof:
            return "local"
        if isinstance(tls.error, ssl.SSLEOFError):
            if raw.eof:
                return "fin_without_close_notify"
            return "reset" if raw.error is not None else "local"
        return "tls_error"
