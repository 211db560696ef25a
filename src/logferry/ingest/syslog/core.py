"""What TCP and UDP listeners share: state, counters, rate-limited logging, endpoint checks.

`SyslogServer` (server.py) is this base plus the TCP side (tcp.py) and the UDP side (udp.py);
each side keeps its own I/O, this module keeps what both update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from logferry.errors import LogferryError
from logferry.ingest.lines import Normalized, normalize
from logferry.ingest.syslog.config import SyslogListenerConfig
from logferry.ingest.syslog.counters import SyslogCounters
from logferry.ingest.syslog.framing import MessageBatch
from logferry.ingest.syslog.parse import count_formats
from logferry.ingest.syslog_stream import RawConnection

log = logging.getLogger("logferry.ingest.syslog")
"""One logger for the whole package (the name operators filter on, as before the split)."""

Deliver = Callable[[bytes, int], Awaitable[object]]
"""Appends newline-terminated lines to the endpoint's durable spool; may raise (SpoolFull…)."""

READ_BYTES = 256 * 1024
"""One TCP read (and so at most about one delivered batch) per connection; also the stream
buffer limit, so a connection whose deliveries are stuck holds at most ~2x this in memory."""
UDP_QUEUE_BYTES = 8 * 1024 * 1024
"""Datagram bytes allowed to wait while a delivery is in flight; more are dropped (overload)."""
UDP_RCVBUF_BYTES = 4 * 1024 * 1024
UDP_READ_BURST = 256
UDP_MAX_DATAGRAM = 65535
RETRY_MIN_S = 0.02
RETRY_MAX_S = 1.0
RETRY_LOG_EVERY_S = 30.0
STOP_GRACE_S = 5.0


class _EndpointMissing(LogferryError):
    """The listener's endpoint no longer exists: what was read cannot be delivered.

    Internal: caught inside the TCP handler and counted, never raised to a caller.
    """


class ListenerBase:
    """Shared state and helpers of one syslog listener (see SyslogServer)."""

    def __init__(
        self,
        config: SyslogListenerConfig,
        deliver: Deliver,
        *,
        counters: SyslogCounters | None = None,
        endpoint_exists: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.counters = counters if counters is not None else SyslogCounters()
        self._deliver = deliver
        self._endpoint_exists = endpoint_exists or (lambda: True)
        self._endpoint_gone = False
        self._max = config.max_message_bytes
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._udp: socket.socket | None = None
        self._udp_batch = MessageBatch(self._max)
        self._udp_bytes = 0
        self._udp_flusher: asyncio.Task[None] | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._conns: set[RawConnection] = set()
        self._per_source: dict[str, int] = {}
        self._open = 0
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._address: tuple[str, int] | None = None
        self._last_retry_log = 0.0
        self._last_drop_log = 0.0
        self._last_log: dict[str, float] = {}

    @property
    def bound_address(self) -> tuple[str, int]:
        """(host, port) actually bound; the real port when the config said port 0."""
        if self._address is None:
            raise RuntimeError(f"{self.config.label} is not started")
        return self._address

    def _log_limited(self, key: str, level: int, msg: str, *args: object) -> None:
        """At most one line per `key` every RETRY_LOG_EVERY_S (floods must not flood the log)."""
        now = time.monotonic()
        if now - self._last_log.get(key, -RETRY_LOG_EVERY_S) >= RETRY_LOG_EVERY_S:
            self._last_log[key] = now
            log.log(level, msg, *args)

    def _endpoint_ok(self) -> bool:
        """Whether the endpoint exists; logs once when it disappears and once when it is back."""
        exists = self._endpoint_exists()
        if exists == self._endpoint_gone:
            self._endpoint_gone = not exists
            cfg = self.config
            if exists:
                log.warning(
                    "%s: endpoint %r of customer %r exists again; accepting syslog again",
                    cfg.label,
                    cfg.endpoint,
                    cfg.customer_id,
                )
            else:
                log.warning(
                    "%s: endpoint %r of customer %r no longer exists; refusing connections and "
                    "dropping datagrams (counted) until it is created again",
                    cfg.label,
                    cfg.endpoint,
                    cfg.customer_id,
                )
        return exists

    def _normalize(self, batch: MessageBatch) -> Normalized | None:
        """Join and normalize a batch; updates the content counters. None when nothing is left."""
        body, messages, escaped, truncated, invalid, cut = batch.take()
        norm = normalize(body, max_line_bytes=self._max)
        c = self.counters
        c.messages += messages
        c.newlines_escaped += escaped
        c.truncated += truncated + norm.truncated
        c.truncated_at_close += cut
        c.invalid_utf8 += invalid + norm.invalid_utf8
        c.empty_skipped += norm.empty_skipped
        if not norm.lines:
            return None
        n5424, n3164, unknown = count_formats(norm.data, norm.lines)
        fmt = c.by_format
        fmt["rfc5424"] = fmt.get("rfc5424", 0) + n5424
        fmt["rfc3164"] = fmt.get("rfc3164", 0) + n3164
        fmt["unknown"] = fmt.get("unknown", 0) + unknown
        return norm

    def _delivered(self, norm: Normalized) -> None:
        self.counters.lines += norm.lines
        self.counters.bytes += len(norm.data)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the listener stops."""
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)
