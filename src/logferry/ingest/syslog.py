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
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from logferry.errors import InputError
from logferry.ingest.lines import Normalized, drop_partial_char, normalize
from logferry.ingest.syslog_stream import RawConnection, SyslogStream
from logferry.tls import server_ssl_context

try:
    from logferry.spool import SpoolFull  # type: ignore[attr-defined]
except ImportError:
    from logferry.spool.log import SpoolFull

log = logging.getLogger(__name__)

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

FormatName = Literal["rfc5424", "rfc3164", "unknown"]


# ---------------------------------------------------------------------------------------------
# Configuration


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' → (host, port). Port 0 picks a free port (tests)."""
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{value!r} is not [IPV6]:PORT (example: [::1]:6514)")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {value!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} is not HOST:PORT (example: 0.0.0.0:514)")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets: [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} in {value!r} is not a number from 0 to 65535")
    return host, int(port_text)


class SyslogTlsConfig(BaseModel):
    """Server certificate for syslog over TLS (RFC 5425); client certificates are optional.

    `client_auth = "required"` admits only clients whose certificate chains to `ca_file`
    (mutual TLS); "optional" verifies a certificate when one is sent. A refused certificate is a
    failed handshake (counted in `logferry_syslog_tls_handshake_failures_total`).
    """

    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    """CA bundle that client certificates must chain to (needed when client_auth is set)."""
    client_auth: Literal["none", "optional", "required"] = "none"
    handshake_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """A client that has not completed its TLS handshake by then is disconnected (counted)."""

    @model_validator(mode="after")
    def _ca_for_client_auth(self) -> SyslogTlsConfig:
        if self.client_auth != "none" and self.ca_file is None:
            raise ValueError(f"client_auth = {self.client_auth!r} needs ca_file")
        return self


_TCP_ONLY = frozenset(
    {
        "max_connections",
        "max_connections_per_source",
        "idle_timeout_seconds",
        "read_timeout_seconds",
    }
)


class SyslogListenerConfig(BaseModel):
    """One syslog listener; everything it receives goes to one customer's endpoint."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["tcp", "udp"]
    listen: str
    """HOST:PORT, e.g. "0.0.0.0:514" or "[::1]:6514"."""
    customer_id: str = Field(min_length=1)
    endpoint: str = Field(min_length=1)
    """Name of the customer's endpoint that receives the lines."""
    framing: Literal["auto", "octet", "lf"] = "auto"
    tls: SyslogTlsConfig | None = None
    max_message_bytes: int = Field(default=64 * 1024, ge=480, le=16 * 1024 * 1024)
    """Longest stored message (RFC 5424 asks receivers for at least 480, ideally 2048)."""
    max_connections: int = Field(default=1000, ge=1)
    """TCP connections open at once; more are refused (counted)."""
    max_connections_per_source: int = Field(default=100, ge=1)
    """TCP connections open at once from one source IP address; more are refused (counted)."""
    idle_timeout_seconds: float = Field(default=600.0, ge=0)
    """A TCP connection that sends nothing for this long is closed (counted); 0 = never."""
    read_timeout_seconds: float = Field(default=60.0, ge=0)
    """A message that has begun must be complete after this many seconds of waiting for its
    bytes, or the connection is closed (slowloris; counted, the part kept as a cut message);
    0 = never."""
    format: Literal["raw"] = "raw"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value.strip()

    @model_validator(mode="after")
    def _tcp_only_options(self) -> SyslogListenerConfig:
        if self.protocol == "udp" and self.tls is not None:
            raise ValueError("tls needs protocol 'tcp' (syslog over UDP has no TLS here)")
        if self.protocol == "udp" and self.framing != "auto":
            raise ValueError("framing applies to protocol 'tcp' only (a datagram is a message)")
        if self.protocol == "udp":
            tcp_only = sorted(self.model_fields_set & _TCP_ONLY)
            if tcp_only:
                names = ", ".join(tcp_only)
                raise ValueError(f"{names}: protocol 'tcp' only (UDP has no connections)")
        return self

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    @property
    def label(self) -> str:
        scheme = "tls" if self.tls else self.protocol
        return f"syslog {scheme}://{self.listen} ({self.customer_id}/{self.endpoint})"


# ---------------------------------------------------------------------------------------------
# Counters


def _formats() -> dict[str, int]:
    return {"rfc5424": 0, "rfc3164": 0, "unknown": 0}


def _drop_reasons() -> dict[str, int]:
    return {"spool_full": 0, "deliver_error": 0, "overload": 0, "endpoint_missing": 0}


CLOSE_REASONS = (
    "clean",
    "fin_without_close_notify",
    "reset",
    "tls_error",
    "idle_timeout",
    "read_timeout",
    "framing_error",
    "endpoint_missing",
    "stopped",
)
"""How TCP connections ended (`closed`): `clean` is a FIN (plain TCP) or a close_notify (TLS)."""
UNCLEAN_TLS = frozenset({"fin_without_close_notify", "reset", "tls_error"})
REFUSE_REASONS = ("max_connections", "per_source", "endpoint_missing", "stopping")


def _closed() -> dict[str, int]:
    return dict.fromkeys(CLOSE_REASONS, 0)


def _refused() -> dict[str, int]:
    return dict.fromkeys(REFUSE_REASONS, 0)


@dataclass(slots=True)
class SyslogCounters:
    """Plain ints for the metrics exporter (one instance per listener, or shared)."""

    messages: int = 0
    """Frames / datagrams received (including empty and dropped ones)."""
    lines: int = 0
    """Lines accepted by the spool."""
    bytes: int = 0
    """Bytes accepted by the spool (lines with their newline)."""
    bytes_received: int = 0
    """Payload bytes read from sockets (after TLS)."""
    by_format: dict[str, int] = field(default_factory=_formats)
    """Normalized lines by recognised format (counted before delivery)."""
    truncated: int = 0
    """Messages cut: over max_message_bytes, or by the end of their connection."""
    truncated_at_close: int = 0
    """Messages the end of a TCP connection cut short (kept as far as they got; in `truncated`)."""
    invalid_utf8: int = 0
    empty_skipped: int = 0
    newlines_escaped: int = 0
    framing_errors: int = 0
    udp_dropped: dict[str, int] = field(default_factory=_drop_reasons)
    """Datagrams dropped, by reason: spool_full, deliver_error, overload, endpoint_missing."""
    endpoint_missing_lines: int = 0
    """Lines read over TCP and dropped because the listener's endpoint no longer exists."""
    deliver_retries: int = 0
    lost_on_stop: int = 0
    """Lines read over TCP that the spool still refused when the listener stopped."""
    connection_errors: int = 0
    """Unexpected errors inside a connection handler (a bug if ever non-zero)."""
    connections_open: int = 0
    connections_total: int = 0
    """TCP connections accepted (TLS: after a successful handshake)."""
    connections_rejected: int = 0
    """TCP connections refused, all reasons (see `refused`)."""
    refused: dict[str, int] = field(default_factory=_refused)
    closed: dict[str, int] = field(default_factory=_closed)
    tls_handshake_failures: int = 0
    """TLS handshakes that failed or timed out (not TLS, bad certificate, no client cert…)."""
    tls_unclean_closes: int = 0
    """TLS connections that ended without close_notify (FIN, RST or a TLS error)."""


# ---------------------------------------------------------------------------------------------
# RFC 5424 / RFC 3164 recognition

_PRIVAL = rb"(?:19[01]|1[0-8][0-9]|0?[0-9]?[0-9])"  # 0..191, leading zeros tolerated
_BSD_TS = rb"[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2}"
# A syslog head: group 1 is b"1 " for RFC 5424, b"" for RFC 3164 (any other PRI, or a BSD
# timestamp without PRI). The "\n" prefix lets sre jump from line start to line start with a
# literal search instead of testing `^` at every byte (~10x faster on 1 MiB batches).
_HEAD = rb"(?:<" + _PRIVAL + rb">(1 )?|" + _BSD_TS + rb" )"
_FIRST_HEAD = re.compile(_HEAD)
_NEXT_HEADS = re.compile(rb"\n" + _HEAD)
_PRI = re.compile(rb"<(" + _PRIVAL + rb")>")
_TS_3164 = re.compile(rb"(" + _BSD_TS + rb"|[0-9]{4}-[0-9]{2}-[0-9]{2}T[^ ]+) ")


@dataclass(frozen=True, slots=True)
class SyslogInfo:
    """What the header of one syslog line says (for labels and counters only)."""

    format: FormatName
    pri: int | None = None
    facility: int | None = None
    severity: int | None = None
    hostname: str | None = None
    app_name: str | None = None
    timestamp: str | None = None


def _text(token: bytes) -> str | None:
    return None if token in (b"", b"-") else token.decode("utf-8", "replace")


def parse_syslog(line: bytes) -> SyslogInfo | None:
    """Recognise an RFC 5424 or RFC 3164 header; never raises.

    None for an empty line. A line is "rfc5424" when it starts with `<PRI>1 ` (PRI 0-191);
    "rfc3164" when it starts with any other `<PRI>`, or with no PRI but a BSD timestamp
    (`Mmm dd hh:mm:ss `, which RFC 3164 §4.3.3 still treats as syslog); else "unknown". The
    counters (`count_formats`) use the very same rules.
    """
    try:
        return _parse(bytes(line).rstrip(b"\r\n"))
    except Exception:  # pragma: no cover - defensive: recognition must never fail ingest
        log.debug("syslog header parse failed", exc_info=True)
        return SyslogInfo("unknown")


def _parse(line: bytes) -> SyslogInfo | None:
    if not line:
        return None
    m = _PRI.match(line)
    if m is None:
        if re.match(_BSD_TS + rb" ", line) is None:
            return SyslogInfo("unknown")
        return _parse_3164(line, None)
    pri = int(m.group(1))
    rest = line[m.end() :]
    if rest.startswith(b"1 "):
        fields = rest[2:].split(b" ", 3)
        fields += [b""] * (3 - len(fields))
        return SyslogInfo(
            "rfc5424",
            pri,
            pri >> 3,
            pri & 7,
            hostname=_text(fields[1]),
            app_name=_text(fields[2]),
            timestamp=_text(fields[0]),
        )
    return _parse_3164(rest, pri)


def _parse_3164(rest: bytes, pri: int | None) -> SyslogInfo:
    facility = None if pri is None else pri >> 3
    severity = None if pri is None else pri & 7
    m = _TS_3164.match(rest)
    if m is None:  # PRI only: RFC 3164 still calls it syslog (a relay would add the header)
        return SyslogInfo("rfc3164", pri, facility, severity)
    tokens = rest[m.end() :].split(b" ", 2)
    hostname: bytes | None = None
    tag = tokens[0]
    if not _looks_like_tag(tag) and len(tokens) > 1 and _looks_like_tag(tokens[1]):
        hostname, tag = tokens[0], tokens[1]
    elif not _looks_like_tag(tag):
        hostname, tag = tag, b""
    app = re.split(rb"[\[:]", tag, maxsplit=1)[0] if tag else b""
    return SyslogInfo(
        "rfc3164",
        pri,
        facility,
        severity,
        hostname=_text(hostname or b""),
        app_name=_text(app),
        timestamp=m.group(1).decode("ascii", "replace"),
    )


def _looks_like_tag(token: bytes) -> bool:
    return token.endswith(b":") or b"[" in token


def count_formats(data: bytes, lines: int) -> tuple[int, int, int]:
    """(rfc5424, rfc3164, unknown) over normalized `data`, with parse_syslog's rules, in C."""
    heads = _NEXT_HEADS.findall(data, 0, len(data) - 1)  # an LF at the very end starts no line
    first = _FIRST_HEAD.match(data)
    if first is not None:
        heads.append(first.group(1) or b"")
    n5424 = heads.count(b"1 ")
    n3164 = len(heads) - n5424
    return n5424, n3164, lines - len(heads)


# ---------------------------------------------------------------------------------------------
# Framing


class _FramingError(Exception):
    """A TCP stream that cannot be framed any further: the connection is closed."""


class MessageBatch:
    """Messages framed from one read, kept as pieces for a single join + normalize."""

    __slots__ = (
        "cut_at_close",
        "escaped",
        "invalid",
        "max_bytes",
        "messages",
        "pieces",
        "truncated",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.pieces: list[bytes | bytearray] = []
        self.messages = 0
        self.escaped = 0
        self.truncated = 0
        self.invalid = 0
        self.cut_at_close = 0

    def add_message(self, msg: bytes | bytearray) -> None:
        """One complete message: trailing CR/LF dropped, inner LFs escaped as #012."""
        self.messages += 1
        if msg[-1:] in (b"\n", b"\r"):
            msg = msg.rstrip(b"\r\n")
        if b"\n" in msg:
            msg = msg.replace(b"\r\n", b"\n").replace(b"\n", b"#012")
            self.escaped += 1
        self.pieces.append(msg)
        self.pieces.append(b"\n")

    def add_messages(self, msgs: list[bytearray]) -> None:
        """Complete messages; one C-level join when none holds an LF (the usual case)."""
        joined = b"\n".join(msgs) + b"\n"
        if joined.count(b"\n") == len(msgs):
            self.messages += len(msgs)
            self.pieces.append(joined)  # trailing CRs are left to normalize (same rule)
            return
        for msg in msgs:
            self.add_message(msg)

    def add_lines(self, segment: bytes | bytearray) -> None:
        """LF-framed messages, one per line, every line ending with b"\\n"."""
        self.messages += segment.count(b"\n")
        self.pieces.append(segment)

    def add_cut(self, prefix: bytes | bytearray) -> None:
        """The first `max_bytes` of a message that is longer (its rest is being discarded)."""
        self.messages += 1
        self.truncated += 1
        msg = drop_partial_char(bytes(prefix[: self.max_bytes])).rstrip(b"\r\n")
        if b"\n" in msg:
            msg = msg.replace(b"\r\n", b"\n").replace(b"\n", b"#012")
            self.escaped += 1
        norm = normalize(msg, max_line_bytes=self.max_bytes)
        self.invalid += norm.invalid_utf8
        if norm.lines:
            self.pieces.append(norm.data)

    def add_cut_at_close(self, part: bytes | bytearray) -> None:
        """A message the end of the connection cut short: kept as far as it got, counted."""
        self.cut_at_close += 1
        self.truncated += 1
        if part.strip(b"\r\n"):
            self.add_message(part)
        else:
            self.messages += 1  # nothing of it arrived but its header: counted, no line

    def take(self) -> tuple[bytes, int, int, int, int, int]:
        body = b"".join(self.pieces)
        out = (body, self.messages, self.escaped, self.truncated, self.invalid, self.cut_at_close)
        self.pieces = []
        self.messages = self.escaped = self.truncated = self.invalid = self.cut_at_close = 0
        return out


_OCTET_HDR = re.compile(rb"([1-9][0-9]{0,8}) ")
_MAX_HDR = 10  # 9 digits + space
_NL_OCTET = re.compile(rb"\n[1-9][0-9]{0,8} ")


class TcpFramer:
    """Incremental RFC 6587 framer for one TCP connection (octet counting and/or LF).

    `feed` frames everything complete and keeps the rest; memory stays bounded by one read plus
    `max_bytes` however long a frame or line claims to be. LF-framed runs are handed over as whole
    segments (no per-line Python work); octet-counted frames cost one regex match each.
    """

    __slots__ = ("_buf", "_lf_skip", "_max", "_mode", "_skip")

    def __init__(self, mode: Literal["auto", "octet", "lf"], max_bytes: int) -> None:
        self._mode = mode
        self._max = max_bytes
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversize octet frame still to discard
        self._lf_skip = False  # discarding the rest of an oversize LF line

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, batch: MessageBatch) -> None:
        """Frame `data` into `batch`; raises _FramingError (batch keeps what came before)."""
        buf = self._buf
        buf += data
        try:
            pos = self._frame(buf, batch)
        except _FramingError:
            buf.clear()
            raise
        del buf[:pos]

    @property
    def pending(self) -> bool:
        """A message has started but is not complete (the read timeout applies)."""
        return bool(self._buf) or bool(self._skip) or self._lf_skip

    def feed_eof(self, batch: MessageBatch, *, clean: bool = True) -> int:
        """The connection ended: frame what is left. Returns framing errors found (0 or 1).

        A message cut by the end is delivered as far as it got and counted in
        `batch.truncated` and `batch.cut_at_close`: an octet-counted frame shorter than its
        count always; a last LF line without its LF only when the end was not `clean` (a FIN
        on plain TCP or a close_notify on TLS ends a last line the way HTTP ingest does).
        """
        buf = self._buf
        self._skip, skipping = 0, self._skip
        self._lf_skip = False
        if skipping:
            buf.clear()
            batch.cut_at_close += 1  # an oversize frame: its prefix was delivered (truncated)
            return 0
        if not buf:
            return 0
        errors = 0
        m = _OCTET_HDR.match(buf) if self._mode != "lf" else None
        if m is not None:
            batch.add_cut_at_close(buf[m.end() :])  # incomplete frame: deliver what arrived
        elif self._mode == "octet":
            errors = 1  # not even a count: nothing to deliver
        elif clean:
            batch.add_message(bytes(buf))  # a last line without its LF (a copy: buf is reused)
        else:
            batch.add_cut_at_close(bytes(buf))
        buf.clear()
        return errors

    def _frame(self, buf: bytearray, batch: MessageBatch) -> int:
        mode = self._mode
        limit = self._max
        n = len(buf)
        pos = 0
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            if self._lf_skip:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    return n
                self._lf_skip = False
                pos = nl + 1
                continue
            first = buf[pos]
            if mode == "octet" or (mode == "auto" and 0x31 <= first <= 0x39):
                m = _OCTET_HDR.match(buf, pos)
                if m is not None:
                    frames: list[bytearray] = []
                    while m is not None:  # complete frames back to back: the hot loop
                        start = m.end()
                        end = start + int(m.group(1))
                        if end > n:
                            break
                        frames.append(buf[start:end])
                        pos = end
                        m = _OCTET_HDR.match(buf, pos)
                    if frames:
                        batch.add_messages(frames)
                        continue
                    length = int(m.group(1))
                    start = m.end()
                    have = n - start
                    if have >= length:
                        batch.add_message(buf[start : start + length])
                        pos = start + length
                        continue
                    if length <= limit:
                        return pos  # wait for the rest of the frame
                    if have < limit:
                        return pos  # wait until the kept prefix is complete
                    batch.add_cut(buf[start : start + limit])
                    self._skip = length - have
                    return n
                head = buf[pos : pos + _MAX_HDR]
                if len(head) < _MAX_HDR and head.isdigit() and first != 0x30:
                    return pos  # an octet count still arriving
                if mode == "octet":
                    raise _FramingError(f"expected an RFC 6587 octet count, got {bytes(head)!r}")
            # LF framing: hand over whole lines up to the next possible octet-counted frame.
            end = -1
            if mode == "auto":
                m = _NL_OCTET.search(buf, pos)
                if m is not None:
                    end = m.start() + 1
            if end < 0:
                end = buf.rfind(b"\n", pos) + 1
            if end > pos:
                batch.add_lines(buf[pos:end])
                pos = end
                continue
            if n - pos > limit:  # a line longer than the limit and still no LF
                batch.add_cut(buf[pos : pos + limit])
                self._lf_skip = True
                return n
            return pos
        return pos


# ---------------------------------------------------------------------------------------------
# The listener


class _EndpointMissing(Exception):
    """The listener's endpoint no longer exists: what was read cannot be delivered."""


class SyslogServer:
    """One syslog listener (TCP or UDP) delivering to one endpoint's spool.

    `endpoint_exists` (optional) tells whether the listener's endpoint still exists; while it does
    not, TCP connections are refused and datagrams dropped (both counted), with one log line when
    the endpoint disappears and one when it is back — instead of retrying deliveries forever.
    """

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

    async def start(self) -> None:
        """Bind and start serving. Raises InputError when the address or TLS files are unusable."""
        cfg = self.config
        self._stop_event = asyncio.Event()
        self._stopping = False
        host, port = parse_listen(cfg.listen)
        loop = asyncio.get_running_loop()
        try:
            if cfg.protocol == "tcp":
                self._tls = self._ssl_context() if cfg.tls else None
                self._server = await loop.create_server(
                    lambda: RawConnection(self._on_connection, READ_BYTES),
                    host,
                    port,
                    backlog=1024,
                )
                sockname = self._server.sockets[0].getsockname()
            else:
                sock = await self._bind_udp(host, port)
                sockname = sock.getsockname()
        except OSError as exc:
            raise InputError(
                f"{cfg.label}: listen",
                f"cannot listen on {cfg.protocol} {cfg.listen}: {exc.strerror or exc}",
                fix="Pick a free port or stop the process using it; ports below 1024 need "
                "root or CAP_NET_BIND_SERVICE.",
            ) from exc
        self._address = (str(sockname[0]), int(sockname[1]))
        log.info("%s listening on %s", cfg.label, self._address)

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

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop accepting, deliver what was already read (one last try each), then close."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        if self._server is not None:
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
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
            if self._udp_batch.messages and self._udp_flusher is None:
                self._udp_flusher = asyncio.get_running_loop().create_task(self._udp_flush())
            if self._udp_flusher is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._udp_flusher), grace)
        log.info("%s stopped", self.config.label)

    # -- shared ----------------------------------------------------------------------------------

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

    # -- TCP -------------------------------------------------------------------------------------

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
        delay = RETRY_MIN_S
        failures = 0
        while True:
            try:
                await self._deliver(norm.data, norm.lines)
            except Exception as exc:
                if not self._endpoint_ok():
                    raise _EndpointMissing() from exc
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
                wait = hint if isinstance(hint, int | float) and hint > 0 else delay
                delay = min(delay * 2, RETRY_MAX_S)
                await self._sleep(min(max(wait, RETRY_MIN_S), RETRY_MAX_S))
                continue
            self._delivered(norm)
            return True

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the listener stops."""
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    # -- UDP -------------------------------------------------------------------------------------

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
