"""`NatsSpoolProvider`: every endpoint's `NatsSpool` in one process (`spool.base.SpoolProvider`).

The byte budget: `budget` is the service-wide limit (spool.max_bytes, the sum of the streams'
limits); its use is refreshed from the streams' own byte counts every heartbeat, so appends
from every ingest node count. Per-customer quotas layer over it as with the local backend
(`set_budget_for`); an ingest-only node learns what delivery freed from the backlog the owner
publishes in the endpoint's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from logferry.spool.budget import SpoolBudget
from logferry.spool.errors import SpoolError
from logferry.spool.nats.errors import NatsUnavailable
from logferry.spool.nats.spool import CALL_TIMEOUT, NatsSpool
from logferry.spool.nats.wire import encode_key

if TYPE_CHECKING:
    from logferry.spool.nats.backend import NatsBackend

log = logging.getLogger(__name__)


class NatsSpoolProvider:
    """Opens and drops endpoints' spools on JetStream; the shared byte budget."""

    def __init__(self, backend: NatsBackend) -> None:
        self.backend = backend
        self._budget = SpoolBudget(backend.settings.max_bytes, 0)
        self._budget_for: Callable[[str], SpoolBudget | None] | None = None
        self._spools: dict[str, NatsSpool] = {}
        self._limits: dict[str, int | None] = {}
        self._mu = threading.Lock()
        self._closed = False

    def set_budget_for(self, budget_for: Callable[[str], SpoolBudget | None]) -> None:
        """Per-key budget (a tenant's quota layered over `budget`), as SpoolManager's
        `budget_for`; set it before spools open."""
        self._budget_for = budget_for

    def set_limit(self, key: str, max_bytes: int | None) -> None:
        with self._mu:
            self._limits[key] = max_bytes
            spool = self._spools.get(key)
        if spool is not None:
            spool.max_bytes = max_bytes

    # -- SpoolProvider -----------------------------------------------------------------------

    def open(self, key: str) -> NatsSpool:
        """The spool of `key`; on the owner it starts following the subject."""
        spool, fresh = self._made(key)
        if fresh and key in self.backend.owned():
            self.backend.call(spool.follow(), CALL_TIMEOUT)
        return spool

    async def open_async(self, key: str) -> NatsSpool:
        """`open` for the service's event loop: the follow runs on the backend's loop and is
        awaited, with no thread held per spool. Why: a node that takes thousands of endpoints
        (start-up, a rebalance) opens them many at a time, each one round trip long."""
        spool, fresh = self._made(key)
        if fresh and key in self.backend.owned():
            future = self.backend.run(spool.follow())
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), CALL_TIMEOUT)
            except TimeoutError:
                raise NatsUnavailable(f"NATS did not answer within {CALL_TIMEOUT}s") from None
        return spool

    def _made(self, key: str) -> tuple[NatsSpool, bool]:
        """The spool object of `key` (memory only), and whether it was made just now."""
        with self._mu:
            if self._closed:
                raise SpoolError("the NATS spool provider is closed")
            spool = self._spools.get(key)
            if spool is not None:
                return spool, False
            budget = (self._budget_for(key) if self._budget_for else None) or self._budget
            spool = self._spools[key] = NatsSpool(self.backend, key, budget)
            spool.max_bytes = self._limits.get(key)
            return spool, True

    def parked(self) -> list[NatsSpool]:
        """Owned spools that stopped following their subject (idle; `wakeup` watches them)."""
        with self._mu:
            spools = list(self._spools.values())
        return [spool for spool in spools if spool.parked]

    def peek(self, key: str) -> NatsSpool | None:
        """The open spool of `key`, without opening one."""
        with self._mu:
            return self._spools.get(key)

    def get(self, key: str) -> NatsSpool | None:
        spool = self.peek(key)
        if spool is not None:
            return spool
        if self.backend.ownership.record(key) is not None:
            return self.open(key)
        return None

    def drop(self, key: str) -> None:
        """Delete the endpoint's messages and its record (the endpoint was deleted)."""
        with self._mu:
            spool = self._spools.pop(key, None)
            self._limits.pop(key, None)
        if spool is not None:
            spool.close()
        self.backend.call(self._drop(key, spool), CALL_TIMEOUT)

    async def _drop(self, key: str, spool: NatsSpool | None) -> None:
        probe = spool or NatsSpool(self.backend, key, None)
        await self.backend.js.purge_stream(probe.stream, subject=probe.subject)
        await self.backend.ownership.release(key)
        kv = await self.backend.kv(self.backend.settings.endpoints_bucket)
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await kv.delete(encode_key(key))
        self.backend.ownership.records.pop(key, None)

    def keys_on_disk(self) -> list[str]:
        """Keys with a record in KV (endpoints that have held data), whoever owns them."""
        return sorted(self.backend.ownership.records)

    def key_disk_bytes(self, key: str) -> int:
        """Pending bytes the owner published for `key` (seeds its customer's quota)."""
        doc = self.backend.ownership.record(key)
        return int(((doc or {}).get("backlog") or {}).get("bytes", 0))

    @property
    def budget(self) -> SpoolBudget:
        return self._budget

    @property
    def total_bytes(self) -> int:
        return self._budget.used

    def close(self) -> None:
        with self._mu:
            self._closed = True
            spools, self._spools = list(self._spools.values()), {}
        for spool in spools:
            spool.close()

    # -- backend hooks (backend loop) --------------------------------------------------------

    async def close_async(self) -> None:
        with self._mu:
            self._closed = True
            spools, self._spools = list(self._spools.values()), {}
        for spool in spools:
            await spool.unfollow()
            spool.close_nowait()

    def ownership_changed(self, key: str, owned: bool) -> None:
        spool = self.peek(key)
        if spool is None:
            return
        task = spool.follow() if owned else spool.unfollow()
        asyncio.get_running_loop().create_task(task)

    def record_changed(self, key: str) -> None:
        spool = self.peek(key)
        if spool is not None:
            spool.record_changed()

    async def refresh_usage(self) -> None:
        """Set the shared budget's use to the streams' byte counts (every ingest node's
        appends included)."""
        total = 0
        for shard in range(self.backend.settings.shards):
            try:
                info = await self.backend.js.stream_info(self.backend.settings.stream_name(shard))
            except (TimeoutError, nats.errors.Error):
                return
            total += info.state.bytes
        self._budget.adjust(total - self._budget.used)
