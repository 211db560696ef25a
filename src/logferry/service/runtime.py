"""The running service: state, spools, credential broker, workers and listeners, wired once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.credentials import Credentials

from logferry.aws.clients import AwsTarget
from logferry.aws.sts_broker import CredentialBroker
from logferry.errors import InputError
from logferry.ingest.syslog import SyslogServer
from logferry.service.accept_backlog import AcceptBacklog
from logferry.service.cluster import ClusterNode
from logferry.service.config import ServeRole, ServiceConfig, node_id
from logferry.service.customers import CustomerRecords
from logferry.service.endpoint_changes import (
    EndpointChanges,
    EndpointConflict,
    EndpointKey,
    UnknownEndpoint,
)
from logferry.service.endpoint_table import EndpointTable
from logferry.service.endpoints import (
    EndpointModel,
    parse_endpoint,
    stored_model,
)
from logferry.service.fair_pool import FairPool
from logferry.service.history import EndpointHistory
from logferry.service.logs import log
from logferry.service.metrics import Metrics
from logferry.service.records import CustomerRecord, EndpointRecord
from logferry.service.registry import StateStore
from logferry.service.service_status import ServiceStatus
from logferry.service.store import Store
from logferry.service.tenants import TenantLimits
from logferry.service.worker import EndpointWorker, WorkerDeps
from logferry.service.worker_stats import StatsBook
from logferry.sinks.registry import FACTORIES
from logferry.spool import Chunk, SpoolManager
from logferry.spool.base import SpoolProvider

logger = logging.getLogger("logferry.service")

__all__ = ["EndpointConflict", "EndpointKey", "Service", "UnknownEndpoint"]
STATS_SAVE_SECONDS = 2.0
"""How often changed endpoint stats are saved (all of them in one transaction)."""


class Service(TenantLimits, CustomerRecords, EndpointChanges, ServiceStatus, ClusterNode):
    """Everything `logferry serve` runs, minus the HTTP server (see `service.api`).

    Split by role: tenant limits (`service.tenants`), customers and role checks
    (`service.customers`), endpoint changes
    (`service.endpoint_changes`), status and metrics snapshot (`service.service_status`); this
    module wires them and runs start-up, shutdown and ingest."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        vendor_credentials: Credentials | None = None,
        role: ServeRole = "all",
    ):
        self.config = config
        self.role = role
        self.stopping = False
        _private_dir(config.spool.dir)
        self.state_dir = config.spool.dir / "state"
        for sub in (self.state_dir, config.spool.dir / "data"):
            if sub.exists():
                _private_dir(sub)
        self._init_tenant_limits()
        self.backend = None
        self.spools: SpoolProvider
        self.store: StateStore
        if config.spool.backend == "nats":
            # Scale-out (docs/scale-out.md): the spool and the registry are shared in NATS;
            # spool.dir keeps this node's scratch files, stats and errors.
            from logferry.service.registry_kv import KvRegistry
            from logferry.spool.nats.backend import NatsBackend

            spool = config.spool
            self.node_id = node_id(config)
            self.backend = NatsBackend(
                spool.nats_settings(),
                node_id=self.node_id,
                deliver=self.delivers,
                scratch_dir=config.spool.dir / "scratch",
            )
            self.backend.provider.set_budget_for(self._budget_for)  # tenant quotas
            self.spools = self.backend.provider
            self.store = KvRegistry(
                spool.nats_url.split(","),
                prefix=spool.stream_prefix,
                replicas=spool.replicas,
                local=Store(config.db_path),
                connect_timeout=spool.connect_timeout_seconds,
                name=f"logferry-registry-{self.node_id}",
            )
        else:
            self.store = Store(config.db_path)
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
        # Process-wide settings a destination takes (S3: its upload memory budget).
        for sink_factory in FACTORIES.values():
            sink_factory.configure(config.server)
        # Calls a sink keeps in flight wait on the network here, not on a delivery thread.
        self.io_executor = ThreadPoolExecutor(
            max_workers=config.server.aws_io_threads, thread_name_prefix="aws-io"
        )
        self.metrics = Metrics(self.snapshot)
        self.admin_token = config.auth.admin_token()
        self.metrics_token = config.auth.metrics_token()
        self.endpoints = EndpointTable()
        self.workers: dict[EndpointKey, EndpointWorker] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._opening: set[str] = set()
        """NATS: owned endpoints whose spool is being opened (followed) to see if it has lines."""
        self.invalid: dict[EndpointKey, tuple[EndpointRecord, str]] = {}
        """Stored endpoints that no longer validate: their spools are kept until they are
        fixed (PUT) or deleted; status shows `invalid` with the reason."""
        self.listeners: list[SyslogServer] = []
        self._stats_at_start: dict[str, str] | None = None
        """Saved stats of endpoints whose worker has not been made yet (JSON text); None until
        `start` has read them."""
        self._stats_handed: set[str] = set()
        """Endpoints that had a worker since start: only their stats can be newer than the
        snapshot above (a worker saves them), so only they are read from SQLite again."""
        self.stats_book = StatsBook()
        """Endpoint stats changed since the last batch save (see `_save_stats_loop`)."""
        self._stats_task: asyncio.Task[None] | None = None
        self._endpoint_writes = asyncio.Lock()
        self.store_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        """SQLite writes a caller must not wait for (endpoint errors), in order, off the loop."""
        self.worker_deps = WorkerDeps(
            spools=self.spools,
            metrics=self.metrics,
            broker=self.broker,
            aws_target=self.aws_target,
            state_root=self.state_dir,
            get_customer=self._customer,
            load_stats=self._load_stats,
            save_stats=self.store.save_stats,
            add_error=self.add_error_soon,
            stats=self.stats_book,
            delivery_pool=self.delivery_executor,
            sts_pool=self.sts_executor,
            activation_pool=self.activation_executor,
            io_pool=self.io_executor,
            accept_backlog=self.accept_backlog,
            shutdown_flush_seconds=config.server.shutdown_flush_seconds,
            idle_flush_seconds=config.server.idle_flush_seconds,
            stopping=lambda: self.stopping,
            may_run=self.may_run,
            journal_for=self.backend.journal if self.backend is not None else None,
            holds=self.backend.holds if self.backend is not None else None,
        )
        self.history = EndpointHistory()
        """Per-minute delivered lines and errors for the console's chart (last hour)."""
        self.ready = False

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """NATS: connect the spool backend and load the registry (before anything listens);
        raises SpoolError / RegistryUnavailable with the fix. Nothing to do on local."""
        if self.backend is None:
            return
        await self.backend.start()
        start = getattr(self.store, "start", None)
        if start is not None:
            await asyncio.to_thread(start)

    def _customer(self, customer_id: str) -> CustomerRecord | None:
        """A worker's customer: from memory (every customer's record is applied at start and
        on every change), SQLite only for one not seen yet — never a read on the event loop
        for a customer's first request (docs/performance.md, cold start)."""
        return self.customer_limits.get(customer_id) or self.store.get_customer(customer_id)

    def _load_stats(self, uid: str) -> dict[str, Any]:
        """A new worker's saved stats: those read in one query at start, once (an endpoint
        without saved stats starts from none: no SQLite read on the loop for a new customer's
        first request either); after that (a worker re-made after it idled) from SQLite."""
        if self._stats_at_start is None or uid in self._stats_handed:
            return self.store.load_stats(uid)
        self._stats_handed.add(uid)
        saved = self._stats_at_start.pop(uid, None)
        return dict(json.loads(saved)) if saved is not None else {}

    async def start(self) -> None:
        self._stats_at_start = await asyncio.to_thread(self.store.saved_stats)
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
        if self.backend is None:
            seeds = await asyncio.to_thread(
                lambda: {uid: self.spools.key_disk_bytes(uid) for uid in self._uid_customer}
            )
            for uid, used in seeds.items():
                if used:
                    self._quota(self._uid_customer[uid]).adjust(used)
        self._apply_static_config()
        if self.backend is None:
            # Resume delivery of whatever a previous run left in the spool (file-system work:
            # off the loop, a crash may leave segments to scan).
            live = {
                record.uid_prefix: (key, record.type) for key, (record, _) in self.endpoints.items()
            }
            resume = await asyncio.to_thread(self._reopen_spools, live)
            for key in resume:
                self.worker(*key).notify()
        else:
            # NATS: delivery resumes where ownership lands (service.cluster).
            self._start_cluster()
            await self._claim_owned()
        for listener_config in self.config.listeners if self.ingests else []:
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
        rows = self.stats_book.take()
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

    def _apply_static_config(self) -> None:
        import os

        from logferry.service.records import ExternalIdTaken

        wanted: dict[str, list[str]] = {}
        endpoints: list[tuple[str, str, str, EndpointModel]] = []
        try:
            # One batch each (one transaction, or many KV writes in flight): one write after
            # another, a first start with thousands of endpoints took seconds.
            self.put_customers([(c.id, c.external_id, c.limits()) for c in self.config.customers])
        except ExternalIdTaken as exc:
            taken = [c.id for c in self.config.customers if c.external_id == exc.external_id]
            where = next((i for i in taken if i != exc.owner), taken[0] if taken else "?")
            raise InputError(
                f"customers[{where}].external_id",
                str(exc) + ".",
                fix="Give this customer a new external ID (and its role a matching trust "
                "policy); a deleted customer's ID is never reused.",
            ) from None
        for customer in self.config.customers:
            token = None
            if customer.token_env:
                token = os.environ.get(customer.token_env)
            elif customer.token_file:
                token = customer.token_file.read_text().strip()
            wanted[customer.id] = [token] if token else []
            for endpoint in customer.endpoints:
                body = endpoint.model_dump()
                type_, model = parse_endpoint(endpoint.name, body, **self.endpoint_rules)
                endpoints.append((customer.id, endpoint.name, type_, model))
        self.put_endpoints(endpoints)
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

    def add_error_soon(
        self, uid: str, code: str, message: str, fix: str | None, when: float
    ) -> None:
        """Record an endpoint error on the store thread: the caller (the event loop, a delivery
        thread) never waits for SQLite. Errors keep their order; `stop` waits for them."""
        try:
            self.store_writer.submit(self._add_error, uid, code, message, fix, when)
        except RuntimeError:  # shut down: the service is stopping and the store closing
            log(logger, logging.WARNING, "endpoint error not saved", uid=uid, code=code)

    def _add_error(self, uid: str, code: str, message: str, fix: str | None, when: float) -> None:
        try:
            self.store.add_error(uid, code, message, fix, when)
        except Exception:  # the error is still in status (last_error) and the log
            logger.exception("saving an endpoint error failed")

    def close_quietly(self) -> None:
        """Release the spool lock and the database when the service never started."""
        self.store_writer.shutdown(wait=False, cancel_futures=True)
        self.delivery_executor.shutdown(wait=False, cancel_futures=True)
        self.activation_executor.shutdown(wait=False, cancel_futures=True)
        self.io_executor.shutdown(wait=False, cancel_futures=True)
        self.spools.close()
        self.store.close()

    async def stop(self) -> None:
        self.stopping = True
        self.ready = False
        self._stop_cluster()
        await self.history.stop()
        if self._stats_task is not None:
            self._stats_task.cancel()
        for listener in self.listeners:
            await listener.stop()
        flush = self.config.server.shutdown_flush_seconds
        await asyncio.gather(*(w.stop(flush) for w in list(self.workers.values())))
        await self.save_dirty_stats()
        await asyncio.to_thread(self.store_writer.shutdown, wait=True)  # errors saved first
        self.delivery_executor.shutdown(wait=False, cancel_futures=True)
        self.sts_executor.shutdown(wait=False, cancel_futures=True)
        self.activation_executor.shutdown(wait=False, cancel_futures=True)
        self.io_executor.shutdown(wait=False, cancel_futures=True)
        self.spools.close()
        self.store.close()

    # ------------------------------------------------------------------ endpoints

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
            worker = self.workers[key] = EndpointWorker(self.worker_deps, record, model)
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
        self.check_ingest()
        record, _ = self.endpoint(customer_id, name)
        spool = self.spools.peek(record.uid_prefix)  # memory only: no file system on the loop
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
