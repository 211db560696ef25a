"""The one TLS server context of the project: syslog over TLS and HTTPS on the HTTP port share
it, so both have the same floor (TLS 1.2 or newer, Python's default ciphers) and the same
client-certificate rules."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from logferry.errors import InputError

ClientAuth = Literal["none", "optional", "required"]


def server_ssl_context(
    where: str,
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None = None,
    client_auth: ClientAuth = "none",
    *,
    session_tickets: bool = True,
) -> ssl.SSLContext:
    """A server context; raises InputError naming `where`.cert_file / .ca_file when a file
    cannot be loaded. `client_auth = "required"` admits only clients whose certificate chains
    to `ca_file`; "optional" verifies a certificate when one is sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not session_tickets:
        ctx.num_tickets = 0
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(
            f"{where}.cert_file",
            f"cannot load certificate {cert_file} with key {key_file}: {exc}",
            fix="Point cert_file at a PEM certificate (chain) and key_file at its private key.",
        ) from exc
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(
                f"{where}.ca_file",
                f"cannot load CA bundle {ca_file}: {exc}",
                fix="Point ca_file at a PEM file of CA certificates.",
            ) from exc
        ctx.verify_mode = {
            "none": ssl.CERT_NONE,
            "optional": ssl.CERT_OPTIONAL,
            "required": ssl.CERT_REQUIRED,
        }[client_auth]
    return ctx
