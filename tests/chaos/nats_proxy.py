"""A NATS protocol proxy on loopback for the chaos kill cases (the NATS twin of `OpGate`).

serve connects to the proxy's URL instead of nats-server's. The proxy parses the client protocol
in both directions (one op at a time, payloads by their declared size), so it can name the two
moments a JetStream publish has: the PUB/HPUB of a spool subject (`<root>.<shard>.<endpoint>`)
and the ack the server sends back on that publish's reply inbox (a MSG/HMSG to that subject).

A test arms one moment, waits until the proxy holds it, then kills serve -9:
- **unsent**: the publish is held before nats-server sees it (nothing stored);
- **stored**: nats-server got the publish (stored it on disk, `sync_interval: always`) and the
  ack is held: serve dies without knowing;
- **acked**: the ack is forwarded and the proxy reports it; the test kills serve 0-30 ms later,
  while it answers the HTTP request (the 202 may or may not have been written).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass, field

_PAYLOAD_OPS = {b"PUB": 3, b"HPUB": 4, b"MSG": 4, b"HMSG": 5}
"""Ops with a payload, and how many arguments carry the size (the last one is the total)."""
PHASES = ("unsent", "stored", "acked")


@dataclass
class _Arm:
    phase: str
    held: threading.Event = field(default_factory=threading.Event)
    release: asyncio.Event | None = None
    subject: str = ""


def _reply_of(op: bytes, args: list[bytes]) -> bytes | None:
    """The reply subject of a PUB/HPUB (None without one)."""
    if op == b"PUB" and len(args) == 3:
        return args[1]
    if op == b"HPUB" and len(args) == 4:
        return args[1]
    return None


async def _read_op(reader: asyncio.StreamReader) -> tuple[bytes, list[bytes], bytes]:
    """One protocol op: (name, arguments, the raw bytes to forward)."""
    line = await reader.readuntil(b"\r\n")
    parts = line[:-2].split()
    name = parts[0].upper() if parts else b""
    args = parts[1:]
    raw = line
    if name in _PAYLOAD_OPS and args:
        size = int(args[-1])
        raw += await reader.readexactly(size + 2)
    return name, args, raw


class NatsProxy:
    """Forwards NATS client connections to `upstream` ("host:port") and holds armed moments."""

    def __init__(self, upstream: str, subject_root: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.prefix = (subject_root + ".").encode()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._lock = threading.Lock()
        self._arm: _Arm | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.publishes = 0
        """Spool publishes seen (all connections, all lives of serve)."""
        self.acks = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsProxy:
        self._thread.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        fut = asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop)
        fut.result(10)
        return self

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._client, sock=sock)

    def stop(self) -> None:
        self.disarm()
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    # -- arming ----------------------------------------------------------------------------

    def arm(self, phase: str) -> _Arm:
        """Hold the next spool publish at `phase` ("unsent", "stored" or "acked")."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        armed = _Arm(phase)
        with self._lock:
            self._arm = armed
        return armed

    def disarm(self) -> None:
        """Forget the arm; a held op is dropped with its connection (serve is dead by then)."""
        with self._lock:
            armed, self._arm = self._arm, None
        if armed is not None and armed.release is not None:
            self._loop.call_soon_threadsafe(armed.release.set)

    def _take(self, phase: str) -> _Arm | None:
        with self._lock:
            armed = self._arm
            if armed is None or armed.phase != phase:
                return None
            self._arm = None
            return armed

    async def _hold(self, armed: _Arm, subject: bytes) -> None:
        armed.release = asyncio.Event()
        armed.subject = subject.decode(errors="replace")
        armed.held.set()
        await armed.release.wait()

    # -- forwarding ------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        waiting: dict[bytes, _Arm | None] = {}
        """Reply inboxes of spool publishes in flight on this connection -> their arm."""
        tasks = [
            asyncio.create_task(self._upward(reader, up_writer, waiting)),
            asyncio.create_task(self._downward(up_reader, writer, waiting)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _upward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        waiting: dict[bytes, _Arm | None],
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                name, args, raw = await _read_op(reader)
                if name in (b"PUB", b"HPUB") and args and args[0].startswith(self.prefix):
                    self.publishes += 1
                    armed = self._take("unsent")
                    if armed is not None:
                        await self._hold(armed, args[0])
                        return  # never forwarded: the connection dies with serve
                    reply = _reply_of(name, args)
                    if reply is not None:
                        waiting[reply] = self._take("stored")
                writer.write(raw)
                await writer.drain()

    async def _downward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        waiting: dict[bytes, _Arm | None],
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                name, args, raw = await _read_op(reader)
                if name in (b"MSG", b"HMSG") and args and args[0] in waiting:
                    stored = waiting.pop(args[0])
                    self.acks += 1
                    if stored is not None:  # the server has it; serve never hears
                        await self._hold(stored, args[0])
                        return
                    writer.write(raw)
                    await writer.drain()
                    acked = self._take("acked")
                    if acked is not None:
                        acked.subject = args[0].decode(errors="replace")
                        acked.held.set()
                    continue
                writer.write(raw)
                await writer.drain()
