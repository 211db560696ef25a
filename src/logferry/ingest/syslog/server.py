"""SyslogServer: one listener (TCP, TLS or UDP) bound to one (customer, endpoint)."""

from __future__ import annotations

import asyncio

from logferry.errors import InputError
from logferry.ingest.syslog.core import STOP_GRACE_S, log
from logferry.ingest.syslog.tcp import TcpSide
from logferry.ingest.syslog.udp import UdpSide
from logferry.netaddr import parse_listen


class SyslogServer(TcpSide, UdpSide):
    """One syslog listener (TCP or UDP) delivering to one endpoint's spool.

    `endpoint_exists` (optional) tells whether the listener's endpoint still exists; while it does
    not, TCP connections are refused and datagrams dropped (both counted), with one log line when
    the endpoint disappears and one when it is back — instead of retrying deliveries forever.
    """

    async def start(self) -> None:
        """Bind and start serving. Raises InputError when the address or TLS files are unusable."""
        cfg = self.config
        self._stop_event = asyncio.Event()
        self._stopping = False
        host, port = parse_listen(cfg.listen)
        try:
            if cfg.protocol == "tcp":
                self._address = await self._listen_tcp(host, port)
            else:
                sockname = (await self._bind_udp(host, port)).getsockname()
                self._address = (str(sockname[0]), int(sockname[1]))
        except OSError as exc:
            raise InputError(
                f"{cfg.label}: listen",
                f"cannot listen on {cfg.protocol} {cfg.listen}: {exc.strerror or exc}",
                fix="Pick a free port or stop the process using it; ports below 1024 need "
                "root or CAP_NET_BIND_SERVICE.",
            ) from exc
        log.info("%s listening on %s", cfg.label, self._address)

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop accepting, deliver what was already read (one last try each), then close."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        await self._stop_tcp(grace)
        await self._stop_udp(grace)
        log.info("%s stopped", self.config.label)
