"""Keep a customer's S3 `domain` out of the vendor's own network (docs/security.md, "S3 domain").

A customer chooses the `domain` host; without this guard the role check and delivery would send
requests (with the customer's path and lines) to loopback, private or link-local addresses such
as the cloud metadata service at 169.254.169.254, and the error text would tell a port that
refuses from one that answers. Three layers, one rule (`refusal_reason`):

1. At PUT time a literal address (every spelling libc accepts: `127.1`, `0x7f.1`, `2130706433`,
   `[::ffff:127.0.0.1]`) or `localhost` is a 422 (`literal_refusal`).
2. Before the role check's probes, the name is resolved and every address checked.
3. At connect time (`install`): the S3 client of a customer `domain` gets urllib3 connection
   classes whose `_new_conn` resolves the name, checks every address and connects only to an
   address it checked, keeping the name for the Host header, SNI and the certificate check.
   A name that resolves inside only later (DNS rebinding) is refused there, before any packet.

Whatever happened (inside, refused, timed out, no such name), the customer reads one text,
`refusal_message`: no oracle for the vendor's network. `aws.allow_private_domain = true` (an
emulator on loopback) turns the guard off; vendor-configured URLs (`aws.endpoint_url`,
`vendor.sts_endpoints`) never pass through it.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Final
from urllib.parse import urlsplit

from botocore.awsrequest import AWSHTTPConnectionPool, AWSHTTPSConnectionPool
from botocore.client import BaseClient
from botocore.httpsession import URLLib3Session
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from logferry.errors import AwsErrorInfo, SetupError

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) → the addresses to connect to, as strings (socket.getaddrinfo by default)."""

SETTING: Final = "aws.allow_private_domain"

_RFC1918: Final = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_CGNAT: Final = IPv4Network("100.64.0.0/10")  # RFC 6598: not global, yet not `is_private`
_UNIQUE_LOCAL: Final = IPv6Network("fc00::/7")
# Not globally reachable, but only newer Pythons' `is_global` says so (3.12.4+, 3.13):
# listed here so the rule does not depend on the interpreter's version.
_NOT_GLOBAL: Final = (
    IPv4Network("192.0.0.0/24"),  # IETF protocol assignments (RFC 6890)
    IPv6Network("3fff::/20"),  # documentation (RFC 9637)
    IPv6Network("5f00::/16"),  # SRv6 SIDs (RFC 9602)
)
_IPV4_COMPATIBLE: Final = IPv6Network("::/96")  # deprecated (RFC 4291 §2.5.5.1)
_NAT64: Final = IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_NAT64_LOCAL: Final = IPv6Network("64:ff9b:1::/48")  # RFC 8215: local-use translation

REFUSAL_FIX: Final = (
    "Set domain to the public host name of the S3-compatible service: it must resolve only to "
    "public addresses and accept connections on its port. Loopback, private and link-local "
    f"addresses are refused unless the operator sets {SETTING} = true (an emulator)."
)


def refusal_message(domain: str) -> str:
    """The one text a customer reads for a refused or unusable `domain`, whatever the network
    answered: it names neither the address found nor the kind of failure (no oracle)."""
    return (
        f"S3 domain {domain!r} cannot be used: logferry sends data only to a public address "
        "that accepts its connection, and says neither which address it found nor what the "
        "network answered."
    )


class DomainRefused(SetupError):
    """A customer `domain` resolved to (or is) an address inside: never retried."""

    def __init__(self, domain: str, *, operation: str = "") -> None:
        super().__init__(
            refusal_message(domain),
            AwsErrorInfo("DomainRefused", service="s3", operation=operation),
            fix=REFUSAL_FIX,
        )
        self.domain = domain


# --- the rule ---------------------------------------------------------------------------------


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 spelling carries (mapped, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` is inside ("loopback", "private", …), or None for a public address.

    The standard `ipaddress` properties classify; on top, IPv6 spellings that carry an IPv4
    address (mapped, NAT64, 6to4) are judged by that address, since the packet ends up there.
    """
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            return "link-local"  # a zone names one of our own interfaces
        if ip.teredo is not None:
            return "reserved"  # a tunnel relay decides where it goes
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return refusal_reason(embedded)
        if ip in _IPV4_COMPATIBLE and not ip.is_loopback and not ip.is_unspecified:
            return "reserved"
        if ip in _NAT64_LOCAL or ip in _UNIQUE_LOCAL or ip.is_site_local:
            return "private"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, IPv4Address) and (ip in _CGNAT or any(ip in net for net in _RFC1918)):
        return "private"
    if ip.is_reserved or not ip.is_global or any(ip in net for net in _NOT_GLOBAL):
        return "reserved"
    return None


def parse_literal(host: str) -> IPAddress | None:
    """`host` as an address if it is one in any spelling libc's resolver accepts, else None.

    `socket.inet_aton` is libc's own parser (`127.1`, `0x7f.1`, `017700000001`, `2130706433`),
    so a spelling counts as an address here exactly when getaddrinfo would connect to it.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ip_address(bare)
    except ValueError:
        pass
    if ":" in bare or not bare:
        return None
    try:
        return IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


def _is_localhost_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")  # RFC 6761 §6.3


def literal_refusal(host: str) -> str | None:
    """Why a `domain` host is refused without any DNS lookup (an address inside, or
    localhost), or None when only resolution can tell."""
    if _is_localhost_name(host):
        return "loopback"
    literal = parse_literal(host)
    return None if literal is None else refusal_reason(literal)


def domain_host(domain: str) -> tuple[str, int]:
    """(host, port) of a `domain` (a bare host gets https and 443, as the sink does)."""
    url = domain if "://" in domain else f"https://{domain}"
    parts = urlsplit(url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    return parts.hostname or "", port


# --- resolution and connection ----------------------------------------------------------------


def system_resolver(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives for `host` (the same call urllib3 makes)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class AddressGuard:
    """Resolve a customer's host and allow it only when every address is public."""

    resolve: Resolver = system_resolver
    refuse: Callable[[IPAddress], str | None] = refusal_reason

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to, all checked; DomainRefused if any one is inside.

        Resolution errors (OSError) propagate as they are: a resolver hiccup is transient.
        """
        if _is_localhost_name(host):
            raise DomainRefused(host)
        literal = parse_literal(host)
        found = [str(literal)] if literal is not None else list(self.resolve(host, port))
        if not found:
            raise DomainRefused(host)
        for address in found:
            if self.refuse(ip_address(address)) is not None:
                raise DomainRefused(host)
        return found

    def check_domain(self, domain: str) -> list[str]:
        """`checked_addresses` for a `domain` as the endpoint spells it."""
        host, port = domain_host(domain)
        return self.checked_addresses(host, port)


DEFAULT_GUARD: Final = AddressGuard()


class _GuardedConnection:
    """Mixin for botocore's urllib3 connections: connect only to a checked address."""

    guard: AddressGuard = DEFAULT_GUARD
    # Set by urllib3 (typed here for the mixin).
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    proxy: Any
    _dns_host: str
    _tunnel_host: str | None
    _tunnel_port: int | None

    def _new_conn(self) -> socket.socket:
        if self.proxy is not None:
            # The vendor's outbound proxy connects for us: check the target name we know (a
            # CONNECT tunnel); the proxy itself must refuse inside addresses (docs/security.md).
            if self._tunnel_host:
                self.guard.checked_addresses(self._tunnel_host, self._tunnel_port or 443)
            # A mixin: _new_conn is the urllib3 connection class's it is mixed into (_pool_classes).
            return super()._new_conn()  # type: ignore[misc]
        addresses = self.guard.checked_addresses(self._dns_host, self.port)
        # arg-type (twice): urllib3 wants its HTTPConnection; self is one once mixed in.
        error: Exception = NewConnectionError(self, f"no address for {self.host}")  # type: ignore[arg-type]
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError:
                error = ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                )
            except OSError as exc:
                error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")  # type: ignore[arg-type]  # see above
        raise error


@functools.cache
def _pool_classes(guard: AddressGuard) -> dict[str, type]:
    http_conn = type(
        "GuardedHTTPConnection",
        (_GuardedConnection, AWSHTTPConnectionPool.ConnectionCls),
        {"guard": guard},
    )
    https_conn = type(
        "GuardedHTTPSConnection",
        (_GuardedConnection, AWSHTTPSConnectionPool.ConnectionCls),
        {"guard": guard},
    )
    return {
        "http": type(
            "GuardedHTTPConnectionPool", (AWSHTTPConnectionPool,), {"ConnectionCls": http_conn}
        ),
        "https": type(
            "GuardedHTTPSConnectionPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": https_conn}
        ),
    }


def install(client: BaseClient, guard: AddressGuard = DEFAULT_GUARD) -> None:
    """Make every connection of `client` go through `guard` (before its first request).

    botocore offers no hook for the connection class, so this replaces the pool classes its
    URLLib3Session hands to urllib3; anything unexpected raises (no client is made) rather than
    leaving the domain unguarded.
    """
    session = client._endpoint.http_session
    pools = getattr(session, "_pool_classes_by_scheme", None)
    manager: Any = getattr(session, "_manager", None)  # urllib3's PoolManager, or None
    if (
        not isinstance(session, URLLib3Session)
        or getattr(manager, "pool_classes_by_scheme", None) is not pools
        or not isinstance(pools, dict)  # after the `is not`: for mypy that re-widens pools
        or getattr(manager, "pools", None) is None
        or len(manager.pools)
    ):
        raise RuntimeError(
            "cannot guard this botocore client's connections (botocore changed?); refusing to "
            "use a customer S3 domain unguarded"
        )
    pools.update(_pool_classes(guard))  # the same dict serves proxy managers made later


def is_guarded(client: BaseClient) -> bool:
    """Whether `install` ran on `client` (for tests and status)."""
    pools = client._endpoint.http_session._pool_classes_by_scheme
    return all(issubclass(cls.ConnectionCls, _GuardedConnection) for cls in pools.values())
