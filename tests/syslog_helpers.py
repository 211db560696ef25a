"""Helpers for the syslog tests: a stand-in spool, a listener in-process, clients, certificates."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logferry.ingest.syslog import SyslogCounters, SyslogListenerConfig, SyslogServer
from logferry.spool.log import SpoolFull, validate_chunk_data


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


class Sink:
    """Stands in for the spool: checks the chunk contract, can refuse or hold appends."""

    def __init__(self, refuse: int = 0, error: Callable[[], Exception] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.nbytes = 0
        self.calls = 0
        self.refuse = refuse
        self.error = error or (lambda: SpoolFull("spool x is full", retry_after=0.01))
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def deliver(self, data: bytes, lines: int) -> None:
        validate_chunk_data(data, lines)
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse > 0:
            self.refuse -= 1
            raise self.error()
        self.chunks.append(data)
        self.nbytes += len(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")[:-1]


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for an outcome (a deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serving(sink: Sink, **cfg: Any) -> AsyncIterator[SyslogServer]:
    cfg.setdefault("protocol", "tcp")
    cfg.setdefault("listen", "127.0.0.1:0")
    config = SyslogListenerConfig(customer_id="cust1", endpoint="logs", **cfg)
    server = SyslogServer(config, sink.deliver, counters=SyslogCounters())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def send_tcp(
    server: SyslogServer, *payloads: bytes, ssl_ctx: ssl.SSLContext | None = None
) -> bytes:
    """Connect, send, half-close; returns whatever the server sent until it closed."""
    host, port = server.bound_address
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl_ctx, server_hostname="localhost" if ssl_ctx else None
    )
    for p in payloads:
        writer.write(p)
        await writer.drain()
    if ssl_ctx is None:
        writer.write_eof()
    else:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return b""
    rest = await reader.read()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return rest


def octet(msg: bytes) -> bytes:
    return str(len(msg)).encode() + b" " + msg


@dataclass
class Cert:
    cert_file: Path
    key_file: Path
    issuer: tuple[Any, Any]


def make_cert(tmp: Path, name: str, issuer: tuple[Any, Any] | None = None) -> Cert:
    """A P-256 certificate for localhost/127.0.0.1, self-signed or signed by `issuer`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    cert_file, key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Cert(cert_file, key_file, (cert, key))


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


# -- blocking clients that end a connection the way real senders do --------------------------------

SIOCOUTQ = 0x5411  # Linux: bytes in a TCP socket's send queue not yet acknowledged


def wait_sent(sock: socket.socket, timeout: float = 10.0) -> None:
    """Until the kernel has delivered (and had acknowledged) everything written to `sock`.

    Before an RST this matters: an RST discards the sender's own unsent bytes, which no
    receiver can recover, so the tests make sure the bytes left before resetting.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{left} bytes still unsent after {timeout}s")
        time.sleep(0.002)


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def send_and_end(
    address: tuple[str, int],
    payload: bytes,
    end: str,
    *,
    ca: Path | None = None,
    chunk: int = 4096,
) -> None:
    """Connect (TLS when `ca` is given), send `payload` in writes of `chunk` bytes, then end:

    - "close": plain close(); over TLS without close_notify (a crashed or killed sender),
    - "rst": an RST once the bytes have left (TLS: still no close_notify),
    - "tls_close": a proper TLS shutdown (close_notify) then close.
    """
    raw = socket.create_connection(address)
    sock: socket.socket = raw
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    for i in range(0, len(payload), chunk):
        sock.sendall(payload[i : i + chunk])
    if end == "tls_close":
        assert isinstance(sock, ssl.SSLSocket)
        # Send our close_notify. The reply is not awaited here: callers hold the server's spool
        # (it stops reading), so it cannot answer yet; tests/test_regressions.py checks the
        # reply RFC 5425 §4.4 requires, with a server that reads.
        sock.settimeout(0.5)
        with contextlib.suppress(OSError):
            sock.unwrap()
        sock.close()
        return
    if isinstance(sock, ssl.SSLSocket):
        raw = socket.socket(fileno=sock.detach())  # the TCP socket, no TLS shutdown
    if end == "rst":
        wait_sent(raw)
        reset(raw)
    else:
        raw.close()
