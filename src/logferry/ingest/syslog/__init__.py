"""Syslog listeners: TCP (optionally TLS) and UDP, each bound to one (customer, endpoint).

Every listener turns what it reads into lines for one endpoint's spool. The raw message is what is
stored (format "raw"); RFC 5424 / RFC 3164 recognition only feeds the `by_format` counters.

Framing (TCP, `framing`):
- `octet`: RFC 6587 §3.4.1 octet counting, strictly: `MSG-LEN SP SYSLOG-MSG`, MSG-LEN 1-9 digits
  without a leading zero. Anything else is a framing error: counted, logged, and that connection
  is closed (what was framed before it is still delivered).
- `lf`: RFC 6587 §3.4.2 non-transparent framing with LF as the trailer (CRLF works too).
- `auto` (default): decided per message. A message that starts with `[1-9][0-9]{0,8} ` is
  octet-counted, anything else is an LF-terminated line, so one connection may mix both. (A plain
  line that happens to start with "123 " is read as an octet count: that is the price of
  detection, as in rsyslog; use `lf` for such senders.)
- UDP: each datagram is one message.

Per message (a message always becomes exactly one stored line):
- Trailing CR/LF characters are removed (senders often end octet-counted frames and datagrams
  with a newline). An LF *inside* a message (multi-line stack traces) is written as the four
  characters `#012`, rsyslog's escape for LF, and a CR right before it is dropped; counted in
  `newlines_escaped` (messages).
- Then the rules of `logferry.ingest.lines.normalize` apply, with `max_message_bytes` as the
  line limit: empty messages are skipped (`empty_skipped`), invalid UTF-8 is repaired with U+FFFD
  (`invalid_utf8`), messages over the limit are cut at a character boundary (`truncated`; the
  rest of the frame or line is read and discarded, never buffered whole).
- Every byte a connection received is framed and delivered however the connection ends (FIN,
  close_notify, TLS without close_notify, RST, a TLS error, a timeout, the listener stopping):
  see `syslog_stream` for why asyncio's StreamReader could not promise that. A message the end
  cuts short — an octet-counted frame shorter than its count, or (unless the end was clean: FIN
  on plain TCP, close_notify on TLS) a last line without its LF — is delivered as far as it got
  and counted in `truncated` and `truncated_at_close`.

Delivery and backpressure: what one socket read yields is delivered with a single
`deliver(data, lines)` call (not one per message) so the spool's group commit sees few, large
appends. TCP: when `deliver` raises (`SpoolFull` or anything else) the connection stops reading —
the kernel's TCP window then slows the sender — and the same batch is retried with backoff
(`SpoolFull.retry_after` as a hint, 20 ms-1 s) until it is accepted or the listener stops; nothing
read is ever dropped while the listener runs (`deliver_retries` counts the retries; on stop, a
batch the spool still refuses is counted in `lost_on_stop`, in lines). UDP has no backpressure: a
batch the spool refuses is dropped and its datagrams counted in `udp_dropped["spool_full"]` (or
`["deliver_error"]`); datagrams arriving while more than 8 MiB already wait for the spool are
dropped as `udp_dropped["overload"]`.

Connections (TCP): at most `max_connections` open, and `max_connections_per_source` from one
IP address; a connection that sends nothing for `idle_timeout_seconds`, or leaves a message
incomplete for `read_timeout_seconds` of waiting (slowloris), or has not finished its TLS
handshake within `tls.handshake_timeout_seconds`, is closed. Refusals are counted by reason
(`refused`), ends by reason (`closed`), failed TLS handshakes in `tls_handshake_failures` and TLS
connections that ended without close_notify in `tls_unclean_closes`. Nothing a client sends can
stop a listener: each connection handler catches, counts and logs its own errors.

Deleted endpoint: while the listener's endpoint does not exist (`endpoint_exists`), connections
are refused and datagrams dropped, counted, with one log line when it goes and one when it is
back; a connection open at that moment is closed and what it had read is counted in
`endpoint_missing_lines`.

Layout (docs/architecture.md): config.py (listener options), counters.py, parse.py
(format recognition), framing.py (RFC 6587 framer, message batches), core.py (state both
transports share), tcp.py, udp.py, server.py (SyslogServer). This package re-exports what
importers use, so `from logferry.ingest.syslog import ...` keeps working.
"""

from __future__ import annotations

from logferry.ingest.syslog.config import SyslogListenerConfig, SyslogTlsConfig
from logferry.ingest.syslog.core import (
    READ_BYTES,
    RETRY_LOG_EVERY_S,
    RETRY_MAX_S,
    RETRY_MIN_S,
    STOP_GRACE_S,
    UDP_MAX_DATAGRAM,
    UDP_QUEUE_BYTES,
    UDP_RCVBUF_BYTES,
    UDP_READ_BURST,
    Deliver,
)
from logferry.ingest.syslog.counters import (
    CLOSE_REASONS,
    REFUSE_REASONS,
    UNCLEAN_TLS,
    SyslogCounters,
)
from logferry.ingest.syslog.framing import MessageBatch, TcpFramer, _FramingError
from logferry.ingest.syslog.parse import FormatName, SyslogInfo, _parse, count_formats, parse_syslog
from logferry.ingest.syslog.server import SyslogServer
from logferry.netaddr import parse_listen

__all__ = [
    "CLOSE_REASONS",
    "READ_BYTES",
    "REFUSE_REASONS",
    "RETRY_LOG_EVERY_S",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "STOP_GRACE_S",
    "UDP_MAX_DATAGRAM",
    "UDP_QUEUE_BYTES",
    "UDP_RCVBUF_BYTES",
    "UDP_READ_BURST",
    "UNCLEAN_TLS",
    "Deliver",
    "FormatName",
    "MessageBatch",
    "SyslogCounters",
    "SyslogInfo",
    "SyslogListenerConfig",
    "SyslogServer",
    "SyslogTlsConfig",
    "TcpFramer",
    "_FramingError",
    "_parse",
    "count_formats",
    "parse_listen",
    "parse_syslog",
]
