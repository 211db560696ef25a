"""The per-listener counters the metrics exporter reads (`logferry_syslog_*`)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
