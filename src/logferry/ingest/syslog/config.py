"""Syslog listener options: `[[syslog.listeners]]` and its `tls` table (pydantic models)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from logferry.netaddr import parse_listen

__all__ = ["SyslogListenerConfig", "SyslogTlsConfig", "parse_listen"]


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
