"""The TCP (and TLS) side of a syslog listener: admission, handshake, read → frame → deliver.

A connection whose delivery is refused stops reading (TCP backpressure) and retries the same
batch with backoff until it is accepted or the listener stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

from logferry.backoff import Backoff
from logferry.ingest.lines import Normalized
from logferry.ingest.syslog.core import (
    READ_BYTES,
    RETRY_LOG_EVERY_S,
    RETRY_MAX_S,
    RETRY_MIN_S,
    ListenerBase,
    _EndpointMissing,
    log,
)
from logferry.ingest.syslog.counters import UNCLEAN_TLS
from logferry.ingest.syslog.framing import MessageBatch, TcpFramer, _FramingError
from logferry.ingest.syslog_stream import RawConnection, SyslogStream
from logferry.tls import server_ssl_context


class TcpSide(ListenerBase):
    """TCP/TLS serving for SyslogServer."""

    async def _listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Bind the TCP server (TLS context first, so bad files fail before binding)."""
        self._tls = self._ssl_context() if self.config.tls else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: RawConnection(self._on_connection, READ_BYTES),
            host,
            port,
            backlog=1024,
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        assert tls is not None
        # No TLS 1.3 session tickets: syslog senders never read, so unread tickets in their
        # receive buffer turn their close() into an RST that discards their own unsent data.
        return server_ssl_context(
            f"{self.config.label}: tls",
            tls.cert_file,
            tls.key_file,
            tls.ca_file,
            tls.client_auth,
            session_tickets=False,
        )

    async def _stop_tcp(self, grace: float) -> None:
        """Close the server and every connection; wait up to `grace` for their last delivery."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._conns):
            conn.close()  # the handler frames and delivers what it already received
        tasks = list(self._conn_tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    def _refuse(self, conn: RawConnection, reason: str, detail: str) -> None:
        c = self.counters
        c.connections_rejected += 1
        c.refused[reason] = c.refused.get(reason, 0) + 1
        if reason != "endpoint_missing":  # _endpoint_ok logged that once already
            self._log_limited(
                f"refuse-{reason}",
                logging.WARNING,
                "%s: refusing connections from %s (%s); counted in "
                "logferry_syslog_connections_refused_total",
                self.config.label,
                conn.peer[0] if conn.peer else "?",
                detail,
            )
        conn.close(abort=True)

    def _on_connection(self, conn: RawConnection) -> None:
        """A new TCP connection (before TLS): admit it or refuse it at once."""
        cfg = self.config
        source = conn.peer[0] if conn.peer else ""
        if self._stopping:
            self._refuse(conn, "stopping", "the listener is stopping")
            return
        if self._open >= cfg.max_connections:
            self._refuse(conn, "max_connections", f"{self._open} open, max_connections")
            return
        if self._per_source.get(source, 0) >= cfg.max_connections_per_source:
            self._refuse(
                conn,
                "per_source",
                f"{self._per_source[source]} open from this address, max_connections_per_source",
            )
            return
        if not self._endpoint_ok():
            self._refuse(conn, "endpoint_missing", "its endpoint no longer exists")
            return
        self._open += 1
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._conns.add(conn)
        task = asyncio.get_running_loop().create_task(self._handle_tcp(conn, source))
        self._conn_tasks.add(task)
        task.add_done_callback(self._conn_tasks.discard)

    async def _handle_tcp(self, conn: RawConnection, source: str) -> None:
        c = self.counters
        stream = SyslogStream(conn, self._tls)
        reason = "local"
        accepted = False
        try:
            if stream.tls is not None:
                assert self.config.tls is not None
                try:
                    async with asyncio.timeout(self.config.tls.handshake_timeout_seconds):
                        await stream.handshake()
                except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
                    c.tls_handshake_failures += 1
                    self._log_limited(
                        "handshake",
                        logging.INFO,
                        "%s: TLS handshake from %s failed: %s (counted in "
                        "logferry_syslog_tls_handshake_failures_total)",
                        self.config.label,
                        source,
                        "timed out" if isinstance(exc, TimeoutError) else exc,
                    )
                    return
            accepted = True
            c.connections_open += 1
            c.connections_total += 1
            reason = await self._read_frames(stream)
        except Exception:  # pragma: no cover - defensive: a bug must not stop the listener
            c.connection_errors += 1
            log.exception("%s: connection from %s failed", self.config.label, source)
        finally:
            self._open -= 1
            left = self._per_source.get(source, 1) - 1
            if left:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)
            self._conns.discard(conn)
            if accepted:
                c.connections_open -= 1
                if reason in c.closed:
                    c.closed[reason] += 1
                if stream.tls is not None and reason in UNCLEAN_TLS:
                    c.tls_unclean_closes += 1
            conn.close(abort=reason in ("idle_timeout", "read_timeout", "framing_error"))

    async def _read_frames(self, stream: SyslogStream) -> str:
        """Read, frame and deliver until the connection ends; returns how it ended."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        batch = MessageBatch(self._max)
        framer = TcpFramer(cfg.framing, self._max)
        idle = cfg.idle_timeout_seconds or None
        read_limit = cfg.read_timeout_seconds or None
        waited = 0.0  # seconds spent waiting for the rest of the current incomplete message
        reason: str
        while True:
            partial = framer.pending and read_limit is not None
            timeout, on_timeout = idle, "idle_timeout"
            if partial and read_limit is not None:
                left = max(read_limit - waited, 0.0)
                if timeout is None or left < timeout:
                    timeout, on_timeout = left, "read_timeout"
            started = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    data = await stream.read(READ_BYTES)
            except TimeoutError:
                reason = on_timeout
                self._log_limited(
                    on_timeout,
                    logging.INFO,
                    "%s: closing a connection from %s: %s (counted in "
                    "logferry_syslog_connections_closed_total)",
                    cfg.label,
                    stream.raw.peer,
                    "nothing sent for idle_timeout_seconds"
                    if on_timeout == "idle_timeout"
                    else "a message still incomplete after read_timeout_seconds",
                )
                break
            finally:
                if partial:
                    waited += loop.time() - started
            if not data:
                reason = stream.end_reason or "local"
                if reason == "local" and self._stopping:
                    reason = "stopped"
                break
            self.counters.bytes_received += len(data)
            try:
                framer.feed(data, batch)
            except _FramingError as exc:
                self.counters.framing_errors += 1
                log.warning("%s: closing connection from %s: %s", cfg.label, stream.raw.peer, exc)
                await self._flush_tcp(batch)
                return "framing_error"
            if batch.messages or not framer.pending:
                waited = 0.0  # a message completed: the next one gets its own time
            if not await self._flush_tcp(batch):
                return "endpoint_missing"
        # The end (however it came): everything received is framed and delivered.
        self.counters.framing_errors += framer.feed_eof(batch, clean=reason == "clean")
        if not await self._flush_tcp(batch):
            return "endpoint_missing"
        return reason

    async def _flush_tcp(self, batch: MessageBatch) -> bool:
        """Deliver what is framed; False when the endpoint no longer exists (lines dropped)."""
        if not batch.messages:
            return True
        norm = self._normalize(batch)
        if norm is None:
            return True
        try:
            await self._deliver_reliably(norm)
        except _EndpointMissing:
            self.counters.endpoint_missing_lines += norm.lines
            return False
        return True

    async def _deliver_reliably(self, norm: Normalized) -> bool:
        """Deliver until accepted (backpressure: the caller is not reading meanwhile).

        Raises _EndpointMissing when a refusal is because the endpoint was deleted.
        """
        # The one backoff policy without jitter: 20 ms doubling to 1 s (the spool's
        # `retry_after` hint, when it gives one, wins within the same bounds).
        policy = Backoff(base=RETRY_MIN_S, cap=RETRY_MAX_S, jitter="none")
        failures = 0
        while True:
            try:
                await self._deliver(norm.data, norm.lines)
            except Exception as exc:
                if not self._endpoint_ok():
                    raise _EndpointMissing("the listener's endpoint no longer exists") from exc
                if self._stopping:
                    self.counters.lost_on_stop += norm.lines
                    log.warning(
                        "%s: stopping; %d lines the spool refused are lost: %s",
                        self.config.label,
                        norm.lines,
                        exc,
                    )
                    return False
                failures += 1
                self.counters.deliver_retries += 1
                now = time.monotonic()
                if failures == 1 or now - self._last_retry_log >= RETRY_LOG_EVERY_S:
                    self._last_retry_log = now
                    log.warning(
                        "%s: spool refused %d lines (%s); pausing this connection and retrying",
                        self.config.label,
                        norm.lines,
                        exc,
                    )
                hint = getattr(exc, "retry_after", None)
                delay = policy.delay(failures - 1)
                wait = hint if isinstance(hint, int | float) and hint > 0 else delay
                await self._sleep(min(max(wait, RETRY_MIN_S), RETRY_MAX_S))
                continue
            self._delivered(norm)
            return True
