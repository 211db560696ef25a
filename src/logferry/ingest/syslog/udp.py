"""The UDP side of a syslog listener: drain datagrams in bursts, deliver in batches.

UDP has no backpressure: a batch the spool refuses is dropped and counted, and datagrams that
arrive while more than UDP_QUEUE_BYTES already wait are dropped as overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from logferry.ingest.syslog.core import (
    RETRY_LOG_EVERY_S,
    UDP_MAX_DATAGRAM,
    UDP_QUEUE_BYTES,
    UDP_RCVBUF_BYTES,
    UDP_READ_BURST,
    ListenerBase,
    log,
)

try:
    from logferry.spool import SpoolFull
except ImportError:
    from logferry.spool.log import SpoolFull


class UdpSide(ListenerBase):
    """UDP serving for SyslogServer."""

    async def _bind_udp(self, host: str, port: int) -> socket.socket:
        """A non-blocking UDP socket drained by `_udp_readable` (not a DatagramTransport).

        asyncio's datagram transport reads one datagram per event-loop turn, which caps a
        listener near 50,000 datagrams/s; draining up to UDP_READ_BURST per wake-up does not.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        if not infos:  # pragma: no cover - getaddrinfo raises instead
            raise OSError(f"no address for {host}")
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF_BYTES)
            sock.bind(sockaddr)
            loop.add_reader(sock.fileno(), self._udp_readable)
        except BaseException:
            sock.close()
            raise
        self._udp = sock
        return sock

    async def _stop_udp(self, grace: float) -> None:
        """Close the socket, then deliver what already arrived (one last try)."""
        if self._udp is None:
            return
        asyncio.get_running_loop().remove_reader(self._udp.fileno())
        self._udp.close()
        self._udp = None
        if self._udp_batch.messages and self._udp_flusher is None:
            self._udp_flusher = asyncio.get_running_loop().create_task(self._udp_flush())
        if self._udp_flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._udp_flusher), grace)

    def _udp_readable(self) -> None:
        """Drain the socket (bounded, so TCP connections still get their turn)."""
        sock = self._udp
        if sock is None:
            return
        for _ in range(UDP_READ_BURST):
            try:
                data = sock.recv(UDP_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                self.counters.connection_errors += 1
                log.debug("%s: UDP socket error: %r", self.config.label, exc)
                return
            try:
                self._on_datagram(data)
            except Exception:  # pragma: no cover - defensive: one datagram must not stop the rest
                self.counters.connection_errors += 1
                log.exception("%s: datagram handling failed", self.config.label)

    def _on_datagram(self, data: bytes) -> None:
        c = self.counters
        c.bytes_received += len(data)
        if self._udp_bytes >= UDP_QUEUE_BYTES:
            c.messages += 1
            c.udp_dropped["overload"] = c.udp_dropped.get("overload", 0) + 1
            return
        if not self._endpoint_ok():
            c.messages += 1
            c.udp_dropped["endpoint_missing"] = c.udp_dropped.get("endpoint_missing", 0) + 1
            return
        self._udp_batch.add_message(data)  # <= 64 KiB: normalize cuts it if too long
        self._udp_bytes += len(data)
        if self._udp_flusher is None:
            self._udp_flusher = asyncio.get_running_loop().create_task(self._udp_flush())

    async def _udp_flush(self) -> None:
        """Deliver what arrived meanwhile, batch after batch; drop (counted) what is refused."""
        c = self.counters
        try:
            while self._udp_batch.messages:
                datagrams = self._udp_batch.messages
                norm = self._normalize(self._udp_batch)
                self._udp_bytes = 0
                if norm is None:
                    continue
                try:
                    await self._deliver(norm.data, norm.lines)
                except Exception as exc:
                    if not self._endpoint_ok():
                        reason = "endpoint_missing"
                    elif isinstance(exc, SpoolFull):
                        reason = "spool_full"
                    else:
                        reason = "deliver_error"
                    c.udp_dropped[reason] = c.udp_dropped.get(reason, 0) + datagrams
                    now = time.monotonic()
                    if now - self._last_drop_log >= RETRY_LOG_EVERY_S:
                        self._last_drop_log = now
                        log.warning(
                            "%s: dropped %d datagrams (%s): %s",
                            self.config.label,
                            datagrams,
                            reason,
                            exc,
                        )
                else:
                    self._delivered(norm)
        except Exception:  # pragma: no cover - normalize/count never raise on content
            log.exception("%s: UDP batch failed", self.config.label)
        finally:
            self._udp_flusher = None
