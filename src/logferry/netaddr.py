"""Listen addresses ("HOST:PORT", "[IPv6]:PORT"): one parser for every listener.

The HTTP listener (`[server] listen`) and the syslog listeners (`[[syslog.listeners]] listen`)
accept the same spelling and refuse the same mistakes (a port over 65535, an IPv6 address without
brackets), so an address that validates in one place binds in the other.
"""

from __future__ import annotations

import ipaddress

__all__ = ["parse_listen"]


def parse_listen(value: str, *, example: str = "0.0.0.0:514") -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' → (host, port). Port 0 picks a free port (tests).

    Raises ValueError (pydantic turns it into a config error with its key path); `example` is
    the spelling the message suggests for this listener.
    """
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
            raise ValueError(f"{value!r} is not HOST:PORT (example: {example})")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets: [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} in {value!r} is not a number from 0 to 65535")
    return host, int(port_text)
