"""The accept queue's length is read from the listening socket itself (Linux TCP_INFO), and a
first activation waits while it is long — bounded, so activations are delayed, never stopped."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from logferry.service import accept_backlog
from logferry.service.accept_backlog import AcceptBacklog

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO of a listener: Linux")


def test_waiting_counts_connections_not_yet_accepted_and_the_wait_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    backlog = AcceptBacklog()
    assert backlog.waiting() == 0  # nothing attached yet
    backlog.attach(lambda: [listener])
    clients = [socket.create_connection(listener.getsockname()) for _ in range(40)]
    try:
        assert backlog.waiting() == 40
        monkeypatch.setattr(accept_backlog, "MAX_WAIT_SECONDS", 0.3)
        began = time.monotonic()
        backlog.wait_while_long()  # 40 > QUEUE_LONG: waits, but only MAX_WAIT_SECONDS
        assert time.monotonic() - began >= 0.3 and backlog.waits == 1
        for _ in range(40 - accept_backlog.QUEUE_LONG):
            listener.accept()[0].close()
        assert backlog.waiting() == accept_backlog.QUEUE_LONG
        backlog.wait_while_long()  # no longer long: returns at once
        assert backlog.waits == 1
    finally:
        for c in clients:
            c.close()
        listener.close()
    assert backlog.waiting() == 0  # a closed socket counts as nothing
