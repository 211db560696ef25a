"""Waiting for data: delivery sleeps until an append past its read position is durable.

A thread waits on the state's condition (`wait_for_data`); the event loop registers a future
(`wait_for_data_async`) that the writer resolves when it publishes a synced batch, through the
group-sync round when it runs on that thread (one wake-up per loop per round), and that `close`
resolves so no waiter outlives the spool.
"""

from __future__ import annotations

import asyncio

from logferry.spool.state import AsyncWaiter, LogState


def _wake(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(True)


def _wake_many(futs: list[asyncio.Future[bool]]) -> None:
    for fut in futs:
        _wake(fut)


class LogWaiters(LogState):
    """Waiters for durable data past an offset (the state layer's only consumers of `_cond`
    besides the writer)."""

    def wait_for_data(self, offset: int, timeout: float | None = None) -> bool:
        """Block until data past `offset` is durable (True) or `timeout` / close (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._end > offset or self._closed, timeout)
            return self._end > offset

    async def wait_for_data_async(self, offset: int, timeout: float | None = None) -> bool:
        """`wait_for_data` for the event loop."""
        loop = asyncio.get_running_loop()
        with self._mu:
            if self._end > offset or self._closed:
                return self._end > offset
            fut: asyncio.Future[bool] = loop.create_future()
            entry = (loop, fut, offset)
            self._async_waiters.append(entry)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            with self._mu:
                if entry in self._async_waiters:
                    self._async_waiters.remove(entry)
        return self._end > offset

    def _take_waiters_below(self, end: int) -> list[AsyncWaiter]:
        """Caller holds _mu. Remove and return the async waiters that data up to `end` wakes."""
        if not self._async_waiters:
            return []
        waiters = [x for x in self._async_waiters if x[2] < end]
        self._async_waiters = [x for x in self._async_waiters if x[2] >= end]
        return waiters

    def _wake_waiters(self, waiters: list[AsyncWaiter]) -> None:
        """Resolve `waiters` on their loops (merged into the sync round when inside one)."""
        if not waiters:
            return
        group = self._group_sync
        if group is not None and group.in_round():
            for loop, fut, _ in waiters:
                group.post(loop, _wake_many, [fut])
            return
        for loop, fut, _ in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                pass
