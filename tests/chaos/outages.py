"""Long outages for the chaos cases: a TCP port that really goes unreachable, and a log of every
AWS call that got through, by operation and by customer resource.

`PortSwitch` sits between serve and the fault proxy. Up, it pipes bytes both ways. "refuse"
closes its listening socket, so a new connection gets ECONNREFUSED (a host that is down), and
resets every open connection (a call in flight loses its reply, whether or not the emulator did
the work). "blackhole" keeps the port open but answers nothing (a dead route behind a load
balancer): calls hang until the client's own read timeout. The port number stays the same, so
the serve config never changes. A 503 from the proxy (`OpGate.refusing`) is a service that
answers; these are services that cannot be reached at all.

`CallLog` is a proxy middleware that records each data call and AssumeRole that the emulator
answered, with the bucket, stream or role it was for. The outage cases use it to count each
endpoint's first delivery after the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from chaos.harness import operation
from logferry.local.latency_proxy import Forward, ProxyRequest, ProxyResponse

MODES = ("up", "refuse", "blackhole")


class PortSwitch:
    """A loopback TCP port forwarding to `upstream_port`, switchable to refuse or blackhole."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "up"
        self.accepted = 0
        self.blackholed = 0
        """Connections accepted while blackholed (each one hung until cut or given up)."""
        self.cut = 0
        """Open connections reset when the switch went down (replies lost mid-call)."""
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="switch")
        self._thread.start()
        self.port = self._call(self._listen(0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: object) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)  # type: ignore[arg-type]

    async def _listen(self, port: int) -> int:
        for attempt in range(50):  # the same port again; retried if the kernel still holds it
            try:
                self._server = await asyncio.start_server(
                    self._handle, "127.0.0.1", port, reuse_address=True
                )
                break
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def set(self, mode: str) -> None:
        """Switch to `mode`; going to "refuse" or "blackhole" resets every open connection."""
        if mode not in MODES:
            raise ValueError(mode)
        self._call(self._set(mode))

    async def _set(self, mode: str) -> int:
        previous, self.mode = self.mode, mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        if mode != "refuse" and self._server is None:
            await self._listen(self.port)
        if mode != "up" or previous == "blackhole":
            for writer in list(self._conns):
                self.cut += previous == "up"
                _reset(writer)
            self._conns.clear()
        return 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._conns.add(writer)
        try:
            if self.mode != "up":
                self.blackholed += 1
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._set("refuse"))
            self._call(self._end_handlers())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _end_handlers(self) -> int:
        """Let every connection handler finish before the loop stops: one left suspended is
        garbage-collected later, in whatever test runs then (a PytestUnraisableExceptionWarning
        there)."""
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        return 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a peer that vanished does, not a polite FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def switches(upstream_port: int, count: int) -> Iterator[list[PortSwitch]]:
    made = [PortSwitch(upstream_port) for _ in range(count)]
    try:
        yield made
    finally:
        for switch in made:
            switch.close()


# ---------------------------------------------------------------------------- the call log


@dataclass(frozen=True)
class Call:
    at: float
    op: str
    target: str
    """Bucket (path-style S3), stream name, or role ARN (AssumeRole)."""
    status: int


def target_of(request: ProxyRequest, op: str) -> str:
    if request.service == "s3":
        return urlsplit(request.path).path.lstrip("/").split("/", 1)[0]
    if op == "AssumeRole":
        return parse_qs(request.body.decode(errors="replace")).get("RoleArn", [""])[0]
    if request.service == "kinesis":
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(request.body)
            return str(body.get("StreamName") or body.get("StreamARN", "")).rsplit("/", 1)[-1]
    return ""


class CallLog:
    """Proxy middleware: every call the emulator answered, with its time, op and target."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[Call] = []

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        op = operation(request)
        answer = await forward()
        call = Call(time.time(), op, target_of(request, op), answer.status)
        with self._lock:
            self.calls.append(call)
        return answer

    def ok(self, target: str, ops: frozenset[str], start: float, end: float) -> list[Call]:
        """2xx answers for `target` to one of `ops` in [start, end)."""
        with self._lock:
            return [
                c
                for c in self.calls
                if c.target == target
                and c.op in ops
                and 200 <= c.status < 300
                and start <= c.at < end
            ]
