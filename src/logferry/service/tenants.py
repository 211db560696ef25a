"""Per-customer limits of the running service: spool quotas, ingest rates, CPU-heavy slots
and the role-check budget (part of `service.runtime.Service`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from logferry.service.config import ServiceConfig
from logferry.service.limits import KeyedBuckets
from logferry.service.records import CustomerRecord
from logferry.spool.base import SpoolProvider
from logferry.spool.budget import LayeredBudget
from logferry.spool.errors import SpoolFull
from logferry.spool.log import SpoolBudget

HEAVY_SLOTS = 2
"""Concurrent CPU-heavy ingest jobs (threads competing with the event loop for the GIL)."""


class TenantLimits:
    config: ServiceConfig
    spools: SpoolProvider

    def _init_tenant_limits(self) -> None:
        # Tenant quotas: one budget per customer, layered over the shared one (see spool.budget).
        self._quotas: dict[str, SpoolBudget] = {}
        self._layered: dict[str, LayeredBudget] = {}
        self._uid_customer: dict[str, str] = {}
        self.customer_limits: dict[str, CustomerRecord] = {}
        self.ingest_bytes_buckets = KeyedBuckets()
        self.ingest_lines_buckets = KeyedBuckets()
        self.verify_buckets = KeyedBuckets()
        self._heavy_per_customer: dict[str, asyncio.Semaphore] = {}
        self._heavy_all: asyncio.Semaphore | None = None

    def _forget_tenant(self, customer_id: str) -> None:
        self.customer_limits.pop(customer_id, None)
        self._heavy_per_customer.pop(customer_id, None)
        for buckets in (self.ingest_bytes_buckets, self.ingest_lines_buckets, self.verify_buckets):
            buckets.forget(customer_id)

    def _quota(self, customer_id: str) -> SpoolBudget:
        quota = self._quotas.get(customer_id)
        if quota is None:
            # Until the customer sets its own spool_max_bytes: the default share, so one
            # customer whose role is broken cannot fill the spool every customer shares.
            quota = self._quotas[customer_id] = SpoolBudget(
                self.config.spool.default_customer_quota(), 0
            )
            self._layered[customer_id] = LayeredBudget(
                [
                    (self._quota_label(customer_id, own=False), quota),
                    ("the spool directory (spool.max_bytes)", self.spools.budget),
                ]
            )
        return quota

    def _quota_label(self, customer_id: str, *, own: bool) -> str:
        """Names the limit a 429 hit, and so the setting that raises it."""
        if own:
            return f"customer {customer_id!r}'s spool quota (spool_max_bytes)"
        share = self.config.spool.default_customer_share
        return (
            f"customer {customer_id!r}'s default spool quota ({share:g} of spool.max_bytes: "
            "spool.default_customer_share; set spool_max_bytes for this customer to change it)"
        )

    def _budget_for(self, uid: str) -> SpoolBudget | None:
        customer_id = self._uid_customer.get(uid)
        if customer_id is None:
            return None
        self._quota(customer_id)
        return self._layered[customer_id]

    def _apply_limits(self, record: CustomerRecord) -> None:
        quota = self._quota(record.id)
        own = record.spool_max_bytes is not None
        quota.max_bytes = (
            record.spool_max_bytes if own else self.config.spool.default_customer_quota()
        )
        self._layered[record.id].layers[0] = (self._quota_label(record.id, own=own), quota)
        self.customer_limits[record.id] = record

    def quota_refusal(self, customer_id: str, nbytes: int) -> SpoolFull | None:
        """The 429 an append of `nbytes` would meet now (its quota, or the spool's limit), so
        a body can be refused before it is read; None when it may fit. Nothing is reserved:
        the append checks again."""
        self._quota(customer_id)
        layered = self._layered[customer_id]
        return None if layered.fits(nbytes) else layered.refusal(nbytes)

    def ingest_wait(self, customer_id: str, nbytes: int | None = None) -> float:
        """Seconds the customer must wait under its ingest rate (0.0: go ahead). With `nbytes`,
        an admitted request is charged for them."""
        record = self.customer_limits.get(customer_id)
        if record is None:
            return 0.0
        waits = []
        if record.ingest_rate_bytes:
            bucket = self.ingest_bytes_buckets.get(customer_id, record.ingest_rate_bytes)
            waits.append(bucket.wait() if nbytes is None else bucket.take(nbytes))
        if record.ingest_rate_lines:
            bucket = self.ingest_lines_buckets.get(customer_id, record.ingest_rate_lines)
            waits.append(bucket.wait())
        return max(waits, default=0.0)

    def charge_lines(self, customer_id: str, lines: int) -> None:
        record = self.customer_limits.get(customer_id)
        if record is not None and record.ingest_rate_lines and lines:
            self.ingest_lines_buckets.get(customer_id, record.ingest_rate_lines).charge(lines)

    @contextlib.asynccontextmanager
    async def heavy_slot(self, customer_id: str) -> AsyncIterator[None]:
        """A slot for CPU-heavy ingest work (gunzip, normalisation of a large body): one per
        customer and HEAVY_SLOTS in all, so one tenant's flood waits for itself."""
        mine = self._heavy_per_customer.setdefault(customer_id, asyncio.Semaphore(1))
        if self._heavy_all is None:
            self._heavy_all = asyncio.Semaphore(HEAVY_SLOTS)
        async with mine, self._heavy_all:
            yield

    def verify_wait(self, customer_id: str) -> float:
        """Per-customer verify budget (each verify costs up to 6 AssumeRole calls)."""
        per_minute = self.config.server.verify_per_minute
        bucket = self.verify_buckets.get(customer_id, per_minute / 60.0, max(1.0, per_minute))
        return bucket.take(1.0, debt=False)
