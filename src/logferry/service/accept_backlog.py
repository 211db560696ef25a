"""First activations give way while new connections wait to be accepted.

Why: when many customers start at once (a deploy, a burst of new customers), the event loop must
accept their connections while the activation threads build botocore clients and sign the write
probe. uvloop takes the GIL back for every callback, so each accept waits its turn behind those
threads: measured with 1,000 new customers, ~900 connections sat in the accept queue and drained
at ~45 a second; first acknowledgements came up to 40 s late (docs/performance.md, tenth pass).
The accept queue's length is the direct measure of "clients wait for us" (Linux reports it for a
listening socket in `TCP_INFO.tcpi_unacked`), so an activation thread checks it before each
activation and sleeps while it is long, handing the GIL to the loop. Bounded: an activation
waits at most MAX_WAIT_SECONDS, so a flood of connections delays activations, never stops them.
Off (always 0) where TCP_INFO is not available.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

QUEUE_LONG = 32
"""Connections waiting to be accepted before activations give way."""
MAX_WAIT_SECONDS = 2.0
STEP_SECONDS = 0.01
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_UNACKED = struct.Struct("=8B6I")  # u8 state..flags, then rto, ato, snd_mss, rcv_mss, unacked, …


class AcceptBacklog:
    """`attach` the server's listening sockets (on the loop); `wait_while_long` from any thread."""

    def __init__(self) -> None:
        self._sockets: Callable[[], list[Any]] = list
        self.waits = 0
        """Activations that waited for the accept queue (for metrics and tests)."""

    def attach(self, sockets: Callable[[], list[Any]]) -> None:
        self._sockets = sockets

    def waiting(self) -> int:
        """Connections in the accept queues of the listening TCP sockets (0 if unknown)."""
        if _TCP_INFO is None:
            return 0
        total = 0
        for sock in list(self._sockets()):
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _UNACKED.size)
            except (OSError, AttributeError, ValueError):
                continue  # closed (shutting down), not TCP, or not this platform
            if len(info) >= _UNACKED.size:
                total += _UNACKED.unpack_from(info)[12]
        return total

    def wait_while_long(self) -> None:
        if self.waiting() <= QUEUE_LONG:
            return
        self.waits += 1
        deadline = time.monotonic() + MAX_WAIT_SECONDS
        while time.monotonic() < deadline and self.waiting() > QUEUE_LONG:
            time.sleep(STEP_SECONDS)
