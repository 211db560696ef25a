"""The delivery pool serves the endpoint with the oldest undelivered line first (issue 15)."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future

import pytest

from logferry.service.fair_pool import FairPool


def _occupy(pool: FairPool, gate: threading.Event) -> Future[bool]:
    """Keep the pool's only thread busy until `gate` is set (returns once it is running)."""
    started = threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(30)

    future = pool.submit(hold)
    assert started.wait(30)
    return future


def test_free_thread_takes_the_oldest_priority_first() -> None:
    pool = FairPool(1, "t")
    gate = threading.Event()
    order: list[str] = []
    try:
        busy = _occupy(pool, gate)  # the only thread is busy while the rest queue up
        futures = [
            pool.submit(order.append, name, priority=priority)
            for name, priority in [("new", 300.0), ("oldest", 100.0), ("middle", 200.0)]
        ]
        futures.append(pool.submit(order.append, "also-oldest", priority=100.0))
        assert pool.queued() == 4 and pool.oldest_wait() >= 0.0
        gate.set()
        busy.result(30)
        for f in futures:
            f.result(30)
        # Equal priorities keep submission order.
        assert order == ["oldest", "also-oldest", "middle", "new"]
        assert pool.queued() == 0 and pool.oldest_wait() == 0.0
    finally:
        gate.set()
        pool.shutdown()


def test_exceptions_reach_the_caller_and_shutdown_cancels_the_queue() -> None:
    pool = FairPool(1, "t")
    gate = threading.Event()

    def boom() -> None:
        raise ValueError("bad step")

    busy = _occupy(pool, gate)
    failing = pool.submit(boom, priority=1.0)
    ran: list[int] = []
    queued = pool.submit(ran.append, 1, priority=2.0)
    gate.set()
    busy.result(30)
    with pytest.raises(ValueError, match="bad step"):
        failing.result(30)
    queued.result(30)
    assert ran == [1]
    gate.clear()
    _occupy(pool, gate)
    late = pool.submit(print, "never")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    with pytest.raises(CancelledError):
        late.result(30)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print, "refused")
