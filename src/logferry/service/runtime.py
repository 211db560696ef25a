"""The running service: state, spools, credential broker, workers and listeners, wired once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import threading
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.credentials import Credentials

from logferry.aws.clients import AwsTarget
from logferry.aws.role_check import Report
from logferry.aws.sts_broker import CredentialBroker
from logferry.errors import InputError, LogferryError
from logferry.ingest.syslog import SyslogServer
from logferry.service.accept_backlog import AcceptBacklog
from logferry.service.config import ServiceConfig
from logferry.service.endpoints import (
    EndpointModel,
    endpoint_document,
    parse_endpoint,
    stored_model,
)
from logferry.service.fair_pool import FairPool
from logferry.service.history import EndpointHistory
from logferry.service.limits import KeyedBuckets
from logferry.service.logs import log
from logferry.service.metrics import Metrics
from logferry.service.store import CustomerRecord, EndpointRecord, Store
from logferry.service.worker import EndpointWorker
from logferry.sinks.base import SinkContext
from logferry.sinks.registry import factory
from logferry.sinks.s3_budget import configure_shared_budget
from logferry.spool import Chunk, SpoolManager
from logferry.spool.budget import LayeredBudget
from logferry.spool.log import SpoolBudget

logger = logging.getLogger("logferry.service")

EndpointKey = tuple[str, str]
STATS_SAVE_SECONDS = 2.0
"""How often changed endpoint stats are saved (all of them in one transaction)."""
HEAVY_SLOTS = 2
"""Concurrent CPU-heavy ingest jobs (threads competing with the event loop for the GIL)."""


class UnknownEndpoint(InputError):
    pass


class EndpointConflict(InputError):
    """The change would strand accepted lines (HTTP 409): deliver them first."""


class Service:
    """Everything `logferry serve` runs, minus the HTTP server (see `service.api`)."""

    def __init__(self, config: ServiceConfig, *, vendor_credentials: Credentials | None = None):
        self.config = config
        self.stopping = False
        _private_dir(config.spool.dir)
        self.state_dir = config.spool.dir / "state"
        for sub in (self.state_dir, config.spool.dir / "data"):
            if sub.exists():
                _private_dir(sub)
        self.store = Store(config.db_path)
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
        self.spools = SpoolManager(
            config.spool.dir / "data",
            max_bytes=config.spool.max_bytes,
            segment_bytes=config.spool.segment_bytes,
            quarantine_dir=config.spool.dir / "quarantine",
            budget_for=self._budget_for,
            group_sync=config.spool.group_sync,
        )
        _raise_fd_limit()
        self.aws_target = AwsTarget(
            endpoint_url=config.aws.endpoint_url,
            allow_private_domain=config.aws.allow_private_domain,
        )
        self.broker = CredentialBroker(
            vendor_name=config.vendor.name,
            vendor_account_id=config.vendor.account_id,
            regions=config.vendor.sts_regions,
            sts_endpoints=config.vendor.sts_endpoints,
            target=self.aws_target,
            vendor_credentials=vendor_credentials,
            duration_seconds=config.vendor.session_duration_seconds,
            source_identity=config.vendor.source_identity,
        )
        # Oldest undelivered line first (see service.fair_pool), not first come first served.
        self.delivery_executor = FairPool(config.server.delivery_threads, "deliver")
        # AssumeRole and its regional failover (which can wait on a dead region's connect
        # timeout) run here, never on a delivery thread other customers need.
        self.sts_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sts")
        # Making, opening and probing sinks (see EndpointWorker._activate): bounded, so a burst
        # of first activations neither holds delivery threads nor starves the event loop.
        self.accept_backlog = AcceptBacklog()
        """Connections waiting to be accepted: first activations give way while it is long."""
        self.activation_executor = ThreadPoolExecutor(
            max_workers=config.server.activation_threads, thread_name_prefix="activate"
        )
        # S3 bodies in flight share one budget per process (server.upload_memory_bytes).
        configure_shared_budget(config.server.upload_memory_bytes)  # type: ignore[arg-type]
        # Calls a sink keeps in flight wait on the network here, not on a delivery thread.
        self.io_executor = ThreadPoolExecutor(
            max_workers=config.server.aws_io_threads, thread_name_prefix="aws-io"
        )
        self.metrics = Metrics(self.snapshot)
        self.admin_token = config.auth.admin_token()
        self.metrics_token = config.auth.metrics_token()
        self.endpoints: dict[EndpointKey, tuple[EndpointRecord, EndpointModel]] = {}
        self.workers: dict[EndpointKey, EndpointWorker] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.invalid: dict[EndpointKey, tuple[EndpointRecord, str]] = {}
        """Stored endpoints that no longer validate: their spools are kept until they are
        fixed (PUT) or deleted; status shows `invalid` with the reason."""
        self.listeners: list[SyslogServer] = []
        self.stats_lock = threading.Lock()
        self.stats_dirty: set[EndpointWorker] = set()
        """Workers whose stats changed since the last batch save (see `_save_stats_loop`)."""
        self._stats_task: asyncio.Task[None] | None = None
        self.history = EndpointHistory()
        """Per-minute delivered lines and errors for the console's chart (last hour)."""
        self.ready = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for record in self.store.list_endpoints():
            self._uid_customer[record.uid_prefix] = record.customer_id
            try:
                model = stored_model(record.type, record.name, record.config)
                self.endpoints[(record.customer_id, record.name)] = (record, model)
            except Exception as exc:  # a stored endpoint no longer validates: keep its data
                reason = str(exc) or type(exc).__name__
                self.invalid[(record.customer_id, record.name)] = (record, reason)
                log(
                    logger,
                    logging.ERROR,
                    "stored endpoint is invalid",
                    endpoint=record.name,
                    customer=record.customer_id,
                    error=str(exc),
                )
        for customer in self.store.list_customers():
            self._apply_limits(customer)
        # Seed each tenant's quota with what its spools already hold (before any spool opens:
        # an opening spool only reports changes against the bytes on disk).
        seeds = await asyncio.to_thread(
            lambda: {uid: self.spools.key_disk_bytes(uid) for uid in self._uid_customer}
        )
        for uid, used in seeds.items():
            if used:
                self._quota(self._uid_customer[uid]).adjust(used)
        self._apply_static_config()
        # Resume delivery of whatever a previous run left in the spool (file-system work: off
        # the loop, a crash may leave segments to scan).
        live = {
            record.uid_prefix: (key, record.type) for key, (record, _) in self.endpoints.items()
        }
        resume = await asyncio.to_thread(self._reopen_spools, live)
        for key in resume:
            self.worker(*key).notify()
        for listener_config in self.config.listeners:
            key = (listener_config.customer_id, listener_config.endpoint)
            if key not in self.endpoints:
                raise InputError(
                    "listeners",
                    f"listener {listener_config.listen} names endpoint {key[1]!r} of customer "
                    f"{key[0]!r}, which does not exist.",
                    fix="Define it under [[customers.endpoints]] or create it via the API first.",
                )
            server = SyslogServer(
                listener_config,
                self._syslog_deliver(key),
                endpoint_exists=functools.partial(self.endpoints.__contains__, key),
            )
            await server.start()
            self.listeners.append(server)
        self.history.start(self)
        self._stats_task = asyncio.get_running_loop().create_task(
            self._save_stats_loop(), name="save-stats"
        )
        self.ready = True

    async def _save_stats_loop(self) -> None:
        """Every STATS_SAVE_SECONDS, the stats of every endpoint that changed, in one SQLite
        transaction off the loop (was: one commit per endpoint every 2 s, on the loop)."""
        while True:
            await asyncio.sleep(STATS_SAVE_SECONDS)
            await self.save_dirty_stats()

    async def save_dirty_stats(self) -> None:
        with self.stats_lock:
            workers, self.stats_dirty = self.stats_dirty, set()
            rows = [w.stats_row() for w in workers if not w.halted]
        if rows:
            try:
                await asyncio.to_thread(self.store.save_stats_many, rows)
            except Exception:  # counters only; the next change saves them again
                logger.exception("saving endpoint stats failed")

    def _reopen_spools(self, live: dict[str, tuple[EndpointKey, str]]) -> list[EndpointKey]:
        """Open the spools left on disk (drop those of deleted endpoints); keys to resume."""
        resume = []
        kept = {record.uid_prefix for record, _ in self.invalid.values()}
        for uid in self.spools.keys_on_disk():
            found = live.get(uid)
            if uid in kept:
                continue  # an invalid endpoint keeps its accepted lines until fixed or deleted
            if found is None:
                log(logger, logging.WARNING, "spool of a deleted endpoint removed", uid=uid)
                self.spools.drop(uid)
                continue
            key, type_ = found
            spool = self.spools.open(uid)
            if spool.end_offset > spool.committed_offset or self._has_state(type_, uid):
                resume.append(key)
        return resume

    def _has_state(self, type_: str, uid: str) -> bool:
        """The destination kept durable state for this endpoint (e.g. an open upload)."""
        sink_factory = factory(type_)
        return sink_factory.durable_state and sink_factory.state_dir(self.state_dir, uid).exists()

    def _apply_static_config(self) -> None:
        import os

        from logferry.service.store import ExternalIdTaken

        wanted: dict[str, list[str]] = {}
        for customer in self.config.customers:
            try:
                self.put_customer(customer.id, customer.external_id, customer.limits())
            except ExternalIdTaken as exc:
                raise InputError(
                    f"customers[{customer.id}].external_id",
                    str(exc) + ".",
                    fix="Give this customer a new external ID (and its role a matching trust "
                    "policy); a deleted customer's ID is never reused.",
                ) from None
            token = None
            if customer.token_env:
                token = os.environ.get(customer.token_env)
            elif customer.token_file:
                token = customer.token_file.read_text().strip()
            wanted[customer.id] = [token] if token else []
            for endpoint in customer.endpoints:
                body = endpoint.model_dump()
                type_, model = parse_endpoint(endpoint.name, body, **self.endpoint_rules)
                self.put_endpoint(customer.id, endpoint.name, type_, model)
        # The config is the truth for static tokens: removed or rotated ones stop working.
        revoked = self.store.reconcile_static_tokens(wanted)
        if revoked:
            log(
                logger, logging.INFO, "static tokens no longer in the config revoked", count=revoked
            )

    @property
    def endpoint_rules(self) -> dict[str, Any]:
        """Service-level rules for endpoint bodies (on top of the sink's own validation)."""
        return {
            "allow_http_domain": self.config.aws.allow_http_domain,
            "allow_private_domain": self.config.aws.allow_private_domain,
        }

    def close_quietly(self) -> None:
        """Release the spool lock and the database when the service never started."""
        self.delivery_executor.shutdown(wait=False, cancel_futures=True)
        self.activation_executor.shutdown(wait=False, cancel_futures=True)
        self.io_executor.shutdown(wait=False, cancel_futures=True)
        self.spools.close()
        self.store.close()

    async def stop(self) -> None:
        self.stopping = True
        self.ready = False
        await self.history.stop()
        if self._stats_task is not None:
            self._stats_task.cancel()
        for listener in self.listeners:
            await listener.stop()
        flush = self.config.server.shutdown_flush_seconds
        await asyncio.gather(*(w.stop(flush) for w in list(self.workers.values())))
        await self.save_dirty_stats()
        self.delivery_executor.shutdown(wait=False, cancel_futures=True)
        self.sts_executor.shutdown(wait=False, cancel_futures=True)
        self.activation_executor.shutdown(wait=False, cancel_futures=True)
        self.io_executor.shutdown(wait=False, cancel_futures=True)
        self.spools.close()
        self.store.close()

    # ------------------------------------------------------------------ customers / endpoints

    def new_external_id(self, customer_id: str) -> str:
        """The default external ID; never one that was ever bound before (tombstones)."""
        if self.config.vendor.external_id_mode == "customer_id":
            if not self.store.external_id_bound(customer_id):
                return customer_id
            # A re-created customer id: the deleted tenant's roles still trust the old ID.
            return f"{customer_id[:64]}-{secrets.token_urlsafe(12)}"
        return f"{self.config.vendor.name[:16]}-{secrets.token_urlsafe(24)}"

    def put_customer(
        self,
        customer_id: str,
        external_id: str | None = None,
        limits: dict[str, Any] | None = None,
    ) -> tuple[CustomerRecord, bool]:
        """Create (or update the limits of) a customer; raises ExternalIdTaken on reuse."""
        if external_id is None and self.store.get_customer(customer_id) is None:
            external_id = self.new_external_id(customer_id)
        record, new = self.store.put_customer(customer_id, external_id or "", limits)
        self._apply_limits(record)
        return record, new

    # ------------------------------------------------------------------ tenant limits

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

    async def delete_customer(self, customer_id: str) -> None:
        for key in [k for k in self.endpoints if k[0] == customer_id]:
            await self._retire(key)
        for uid in await asyncio.to_thread(self.store.delete_customer, customer_id):
            await asyncio.to_thread(self.spools.drop, uid)
        self.customer_limits.pop(customer_id, None)
        self._heavy_per_customer.pop(customer_id, None)
        for buckets in (self.ingest_bytes_buckets, self.ingest_lines_buckets, self.verify_buckets):
            buckets.forget(customer_id)

    def put_endpoint(
        self, customer_id: str, name: str, type_: str, model: EndpointModel
    ) -> tuple[EndpointRecord, bool]:
        document = endpoint_document(type_, model)
        document.pop("type")
        key = (customer_id, name)
        old = self.endpoints.get(key)
        broken = self.invalid.get(key)
        old_type = old[0].type if old else broken[0].type if broken else None
        if old_type is not None and old_type != type_ and self._has_pending(key):
            raise EndpointConflict(
                "endpoint",
                f"endpoint {name!r} of customer {customer_id!r} still has accepted lines pending "
                f"for its {old_type} destination; changing its type now would strand them.",
                fix=f"Wait until GET /v1/customers/{customer_id}/endpoints/{name}/status shows "
                "0 pending lines (or DELETE the endpoint to drop them), then change its type.",
            )
        record, new = self.store.put_endpoint(customer_id, name, type_, document)
        self._uid_customer[record.uid_prefix] = customer_id
        if broken is not None:
            self.invalid.pop(key, None)
            if broken[0].uid_prefix != record.uid_prefix:
                self._drop_later(broken[0].uid_prefix)
        if old is not None and old[0].uid_prefix != record.uid_prefix:
            # Another type: a new incarnation. Retire the old one (abort its open upload).
            self.endpoints.pop(key, None)
            worker = self.workers.pop(key, None)
            asyncio.get_running_loop().create_task(self._retire(key, old, worker))
        self.endpoints[key] = (record, model)
        worker = self.workers.get(key)
        if worker is not None:
            worker.reconfigure(record, model)
        elif broken is not None and broken[0].uid_prefix == record.uid_prefix:
            self.worker(customer_id, name).notify()  # deliver what it kept while invalid
        return record, new

    def _has_pending(self, key: EndpointKey) -> bool:
        worker = self.workers.get(key)
        if worker is None and key in self.endpoints:
            worker = self.worker(*key)
        if worker is not None:
            return worker.has_pending()
        record = self.invalid[key][0]
        spool = self.spools.get(record.uid_prefix)
        return bool(spool is not None and spool.pending_bytes > 0)

    def _drop_later(self, uid: str) -> None:
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.spools.drop, uid))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def delete_endpoint(self, customer_id: str, name: str) -> bool:
        key = (customer_id, name)
        broken = self.invalid.pop(key, None)
        if broken is not None:
            await asyncio.to_thread(self.spools.drop, broken[0].uid_prefix)
            self.store.delete_endpoint(customer_id, name)
            return True
        if key not in self.endpoints:
            return False
        await self._retire(key)
        self.store.delete_endpoint(customer_id, name)
        return True

    async def _retire(
        self,
        key: EndpointKey,
        entry: tuple[EndpointRecord, EndpointModel] | None = None,
        worker: EndpointWorker | None = None,
    ) -> None:
        """Stop delivery, abort an open multipart upload, drop the spool: nothing half-done."""
        entry = entry or self.endpoints.pop(key, None)
        worker = worker or self.workers.pop(key, None)
        if worker is not None:
            await worker.halt()
        if entry is None:
            return
        record, model = entry
        await asyncio.to_thread(self._discard, record, model)
        await asyncio.to_thread(self.spools.drop, record.uid_prefix)

    def _discard(self, record: EndpointRecord, model: EndpointModel) -> None:
        """Leave nothing half-done at the destination (S3: abort the open multipart upload)."""
        sink_factory = factory(record.type)
        if not self._has_state(record.type, record.uid_prefix):
            return
        state = sink_factory.state_dir(self.state_dir, record.uid_prefix)
        customer = self.store.get_customer(record.customer_id)
        try:
            if customer is None:  # fail closed: never guess an external ID
                raise LogferryError(f"customer {record.customer_id!r} has no record")
            clients = self.broker.clients(
                model.iam_role,
                customer.external_id,
                customer_id=record.customer_id,
                target=sink_factory.target(model, self.aws_target),
            )
            context = SinkContext(state, record.uid_prefix, threading.Event())
            sink_factory.build(model, clients, context).discard()
        except LogferryError as exc:
            log(
                logger,
                logging.ERROR,
                "could not abort the open upload of a deleted endpoint",
                customer=record.customer_id,
                endpoint=record.name,
                error=str(exc),
                fix="an AbortIncompleteMultipartUpload lifecycle rule on the bucket removes it "
                "(logferry role create --abort-incomplete-multipart-days 1)",
            )

    def no_customer(self, record: EndpointRecord) -> str:
        """Fail closed when an endpoint's customer record is missing: never guess the ID."""
        raise InputError(
            "customer",
            f"customer {record.customer_id!r} of endpoint {record.name!r} has no record: "
            "no external ID, so no role is assumed.",
            fix=f"Re-create the endpoint under PUT /v1/customers/{record.customer_id}.",
        )

    def endpoint(self, customer_id: str, name: str) -> tuple[EndpointRecord, EndpointModel]:
        found = self.endpoints.get((customer_id, name))
        broken = self.invalid.get((customer_id, name))
        if found is None and broken is not None:
            raise UnknownEndpoint(
                "endpoint",
                f"endpoint {name!r} of customer {customer_id!r} is stored but no longer valid "
                f"({broken[1].splitlines()[0]}).",
                fix=f"PUT /v1/customers/{customer_id}/endpoints/{name} with valid settings.",
            )
        if found is None:
            raise UnknownEndpoint(
                "endpoint",
                f"customer {customer_id!r} has no endpoint {name!r}.",
                fix=f"Create it: PUT /v1/customers/{customer_id}/endpoints/{name}",
            )
        return found

    def worker(self, customer_id: str, name: str) -> EndpointWorker:
        key = (customer_id, name)
        worker = self.workers.get(key)
        if worker is None:
            record, model = self.endpoint(customer_id, name)
            worker = self.workers[key] = EndpointWorker(self, record, model)
        return worker

    # ------------------------------------------------------------------ ingest

    async def ingest(
        self,
        customer_id: str,
        name: str,
        data: bytes,
        lines: int,
        source: str,
        *,
        normalized: bool = False,
    ) -> Chunk:
        """Append durably (raises SpoolFull when the spool is at its limit), then wake delivery.

        `normalized=True` when `data, lines` come straight from `ingest.lines.normalize`.
        """
        record, _ = self.endpoint(customer_id, name)
        spool = self.spools.get(record.uid_prefix)
        if spool is None:  # opening may scan a segment after a crash: keep it off the loop
            spool = await asyncio.to_thread(self.spools.open, record.uid_prefix)
        chunk = await spool.append(data, lines, normalized=normalized)
        worker = self.worker(customer_id, name)
        counted = worker.ingest_counters(source)
        counted[0].inc(lines)
        counted[1].inc(len(data))
        worker.accepted(lines, len(data))
        return chunk

    def _syslog_deliver(self, key: EndpointKey) -> Any:
        async def deliver(data: bytes, lines: int) -> None:
            # SyslogListener calls this only with `normalize`'s output (_normalize).
            await self.ingest(key[0], key[1], data, lines, "syslog", normalized=True)

        return deliver

    # ------------------------------------------------------------------ verification

    def verify(self, customer_id: str, type_: str, model: EndpointModel) -> Report:
        customer = self.store.get_customer(customer_id)
        if customer is None:  # fail closed: never guess an external ID
            raise UnknownEndpoint(
                "customer",
                f"no customer {customer_id!r}.",
                fix=f"Create it: PUT /v1/customers/{customer_id}",
            )
        return factory(type_).verify(
            model,
            broker=self.broker,
            external_id=customer.external_id,
            customer_id=customer_id,
            aws_target=self.aws_target,
        )

    def remember_verified(self, record: EndpointRecord, report: Report) -> None:
        """A role check whose write probe passed for this stored endpoint stands in for the
        worker's own probe (the same calls, headers and destination): no second probe."""
        if report.write_proven():
            worker = self.worker(record.customer_id, record.name)
            worker.remember_setup_proof(record, report.external_id)

    # ------------------------------------------------------------------ status

    def endpoint_status(self, customer_id: str, name: str) -> dict[str, Any]:
        broken = self.invalid.get((customer_id, name))
        if broken is not None:
            return self._invalid_status(*broken)
        record, _ = self.endpoint(customer_id, name)
        worker = self.worker(customer_id, name)
        status = worker.status()  # pending and delivered read together (spools.get opens it)
        status["errors"] = self.store.errors(record.uid_prefix)
        return status

    def _invalid_status(self, record: EndpointRecord, reason: str) -> dict[str, Any]:
        spool = self.spools.get(record.uid_prefix)
        return {
            "customer_id": record.customer_id,
            "name": record.name,
            "type": record.type,
            "state": "invalid",
            "reason": reason,
            "fix": "PUT the endpoint again with valid settings (its accepted lines are kept and "
            "delivered then), or DELETE it to drop them.",
            "lines": {"pending": spool.pending_lines if spool else 0},
            "bytes": {"pending": spool.pending_bytes if spool else 0},
            "errors": self.store.errors(record.uid_prefix),
        }

    def snapshot(self) -> dict[str, Any]:
        pending = {}
        lag = {}
        late = 0
        for key, worker in list(self.workers.items()):
            spool = self.spools.get(worker.record.uid_prefix)
            if spool is not None:
                pending[key] = (spool.pending_bytes, spool.pending_lines)
            if worker.running:
                # Lines not yet read count too (a lazy S3 file, a role that never worked):
                # one cached header read per spool, and /metrics renders off the event loop.
                age = worker.oldest_undelivered_age()
                lag[key] = 0.0 if age is None else age
                if age is not None and age > worker.lag_budget():
                    late += 1
        states: Counter[tuple[str, str]] = Counter()
        for key, (record, _) in list(self.endpoints.items()):
            worker = self.workers.get(key)
            states[(record.type, worker.state if worker else "idle")] += 1
        return {
            "sts": dict(self.broker.outcomes),
            "regions": self.broker.region_health(),
            "pending": pending,
            "lag": lag,
            "late": late,
            "delivery_queue_wait": self.delivery_executor.oldest_wait(),
            "delivery_queued": self.delivery_executor.queued(),
            "disk": self.spools.total_bytes,
            "states": dict(states),
            "syslog": {
                f"{ln.config.protocol}://{ln.config.listen}": ln.counters for ln in self.listeners
            },
        }


def _private_dir(path: Any) -> None:
    """Create `path` (0700) or tighten it: spool data and state are the customers' logs."""
    import os

    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _raise_fd_limit() -> None:
    """Many endpoints mean many segment files: use the hard fd limit, not the soft default."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
