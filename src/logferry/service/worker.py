"""One delivery worker per active endpoint: spool → sink → commit, with error states.

A worker exists only while its endpoint has data in flight; idle endpoints have no task, no
sink, no AWS clients and no open files (10,000 configured endpoints cost a few KiB each).

The worker drives any `Sink` (see `sinks.base`) without knowing which destination it has. Each
step runs on the delivery thread pool and only *works*: it reads chunks, feeds them, lets the
sink do what is due (close a file, send one PutRecords call) and commits the spool up to the
sink's durable position. Every *wait* — shard pacing, a record's retry backoff, the backoff
after a failed step, a file's period end — is awaited on the event loop, so a throttled stream
or a broken role never holds a thread that other customers need. Retries after a failed step
follow one policy (`sinks.base.RETRY_POLICY` / `SETUP_RETRY_POLICY`), on top of botocore's own.

The spool is committed only up to what the sink confirmed, so a crash at any point leaves every
acknowledged line on disk; positions are line-granular, so a sink may cut anywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logferry.errors import AwsErrorInfo, LogferryError, SetupError
from logferry.service.logs import log
from logferry.sinks.backoff import Backoff
from logferry.sinks.base import RETRY_POLICY, SETUP_RETRY_POLICY, Sink, SinkContext, SinkFactory
from logferry.sinks.registry import factory
from logferry.spool import SpoolCorrupt

if TYPE_CHECKING:
    from logferry.service.runtime import Service
    from logferry.service.store import EndpointRecord
    from logferry.spool import Spool

logger = logging.getLogger("logferry.worker")

READ_BYTES = 4 * 1024 * 1024
IDLE_EXIT_SECONDS = 30.0
STEP_SECONDS = 0.5
"""A step pumps its sink at most this long before yielding its thread to other endpoints."""
PRESSURE_FRACTION = 0.75
"""Above this share of the spool limit, open files close early (before anyone gets a 429)."""
PRESSURE_FLUSH_GAP = 5.0
"""...at most this often per endpoint, so pressure does not turn into a flood of tiny files."""
RECHECK_SECONDS = 24 * 3600.0
"""A new sink skips the write probe (CreateMultipartUpload + Abort in the customer's bucket) when
one passed for the same endpoint settings, role and external ID within this time — in this
process or, through the stored stats, before a restart. A setup error or a changed endpoint
forgets the pass. Why a day and not less: every activation assumes the role anyway (a broken
trust policy shows at once), and a permission removed later shows at the endpoint's next write;
re-probing on each restart would put two calls per endpoint into every customer's CloudTrail
and cost a fleet-wide burst of S3 calls at each deploy."""
MAX_WAIT = 5.0
"""Longest sleep between steps while the sink holds data and named no time it is due."""
LAG_SLACK_SECONDS = 5.0
"""An endpoint is late when its oldest undelivered line is older than its period plus this."""
LAZY_READ_BYTES = 1024 * 1024
"""While an S3 file is open and not yet due, new data wakes the worker only once this much
waits in the spool: a small tenant's requests are read once per period, not once each (the
spool holds them durably meanwhile). Big streams still flow in 1 MiB steps."""


@dataclass
class EndpointStats:
    lines_accepted: int = 0
    bytes_accepted: int = 0
    lines_delivered: int = 0
    bytes_delivered: int = 0
    objects: int = 0
    records: int = 0
    last_success: float | None = None
    last_error_time: float | None = None
    quarantined_records: int = 0
    quarantined_bytes: int = 0
    quarantined_lines: int = 0
    last_quarantine: str | None = None
    setup_checked_at: float | None = None
    """Wall time of the last passing write probe (see RECHECK_SECONDS)..."""
    setup_checked_for: str | None = None
    """...and the fingerprint of the settings it proved (`setup_fingerprint`)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class EndpointWorker:
    """Delivers one endpoint's spool. Created on demand by the registry."""

    def __init__(self, service: Service, record: EndpointRecord, model: Any) -> None:
        self.service = service
        self.record = record
        self.model = model
        self.kind = record.type
        self.factory: SinkFactory = factory(record.type)
        self.lazy = self.factory.lazy
        """Batches built over a period: new data need not be read before the batch is due."""
        self.stats = EndpointStats.from_dict(service.store.load_stats(record.uid_prefix))
        self.state = "idle"
        self.last_error: dict[str, Any] | None = None
        self.stop_event = threading.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy: concurrent.futures.Future[Any] | None = None
        self._sink: Sink | None = None
        self._needs_open = False
        self._setup_key: str | None = None
        self._read_pos: int | None = None
        self._corrupt: SpoolCorrupt | None = None
        self._failures = 0
        self._stats_dirty = False
        self._seen_units = 0
        self._seen_records = 0
        self._last_data = 0.0
        self._last_pressure_flush = 0.0
        self._retire_sink = False
        self._halted = False
        self._restart: asyncio.TimerHandle | None = None
        self._progress_lock = threading.Lock()
        self._credentials: Any = None
        self._ingest_counters: dict[str, tuple[Any, Any]] = {}
        self._fed: deque[tuple[int, float]] = deque()
        """(end position, accepted_at) of chunks fed and not yet committed: the lag gauge."""
        self.last_lag: float | None = None
        """Seconds from acceptance to delivery of the last line committed."""

    # --------------------------------------------------------------------- control

    @property
    def labels(self) -> tuple[str, str]:
        return (self.record.customer_id, self.record.name)

    @property
    def halted(self) -> bool:
        """The endpoint is being deleted: nothing of it is saved any more."""
        return self._halted

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def spool(self) -> Spool:
        return self.service.spools.open(self.record.uid_prefix)

    def ingest_counters(self, source: str) -> tuple[Any, Any]:
        """The (lines, bytes) ingest counters of this endpoint and `source`, looked up once
        (prometheus' labels() costs a lock and a dict build per call, i.e. per request)."""
        found = self._ingest_counters.get(source)
        if found is None:
            m = self.service.metrics
            customer, name = self.labels
            found = (
                m.ingest_lines.labels(customer, name, source),
                m.ingest_bytes.labels(customer, name, source),
            )
            self._ingest_counters[source] = found
        return found

    def lag_budget(self) -> float:
        """How old an undelivered line may be before this endpoint counts as late: the
        sink's own period plus LAG_SLACK_SECONDS."""
        return self.factory.period(self.model) + LAG_SLACK_SECONDS

    def accepted(self, lines: int, nbytes: int) -> None:
        """Count an acknowledged append. A running worker is not woken: it waits on the spool
        itself (at once without an open file, after LAZY_READ_BYTES or the period end with
        one), so a stream of small requests costs no wake-up storm."""
        self.stats.lines_accepted += lines
        self.stats.bytes_accepted += nbytes
        self._mark_dirty()
        if not self.running:
            self.notify()

    def notify(self) -> None:
        """New data or new configuration: wake the worker (start it if idle)."""
        self._wake.set()
        if not self.running and not self.service.stopping and not self._halted:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"deliver:{self.record.customer_id}/{self.record.name}"
            )
            self._task.add_done_callback(self._supervise)

    def reconfigure(self, record: EndpointRecord, model: Any) -> None:
        """A changed endpoint: what the sink holds is flushed under the old settings, then a
        fresh sink serves the new ones (with a fresh probe unless these settings were proven)."""
        self.record, self.model = record, model
        self._retire_sink = True
        self._credentials = None
        self._failures = 0
        self.notify()

    def has_pending(self) -> bool:
        """Accepted lines not yet at the destination (spool or an open file / upload)."""
        spool = self.service.spools.get(self.record.uid_prefix)
        if spool is not None and spool.pending_bytes > 0:
            return True
        if self._sink is not None and self._sink.holds_data():
            return True
        return self.factory.durable_state and self.factory.has_unfinished_state(self._state_dir())

    async def halt(self) -> None:
        """Stop delivering without flushing (the endpoint is being deleted). Returns only once
        no delivery thread works for this endpoint any more, so the caller may discard."""
        self._halted = True
        self.stop_event.set()
        self._wake.set()
        if self._restart is not None:
            self._restart.cancel()
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=30)
            if not task.done():
                task.cancel()
        busy = self._busy
        if busy is not None and not busy.done():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(busy)

    async def stop(self, flush_seconds: float) -> None:
        """Flush open files within `flush_seconds`; whatever is not delivered stays spooled."""
        task = self._task
        if task is not None and not task.done():
            self._wake.set()
            loop = asyncio.get_running_loop()
            timer = loop.call_later(flush_seconds, self.stop_event.set)
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=flush_seconds + 5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            finally:
                timer.cancel()
        busy = self._busy
        if busy is not None and not busy.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(busy), timeout=5)
        self._save_stats(force=True)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """A worker that died of a bug is restarted with backoff; its error shows in status."""
        if task.cancelled() or self._halted or self.service.stopping:
            return
        exc = task.exception()
        if exc is None:
            return
        logger.error("delivery worker died", exc_info=exc)
        self._record_error(exc, "internal")
        self.service.metrics.retries.labels(*self.labels).inc()
        self._drop_sink()
        delay = self._next_delay(SETUP_RETRY_POLICY)
        self._restart = asyncio.get_running_loop().call_later(delay, self.notify)

    # --------------------------------------------------------------------- loop

    async def _ensure_credentials(self) -> None:
        """AssumeRole — and its regional failover, which may wait on dead regions — runs on
        the STS pool before a step, so a delivery thread never waits for STS."""
        loop = asyncio.get_running_loop()
        svc = self.service
        creds = self._credentials
        if creds is None:
            customer = svc.store.get_customer(self.record.customer_id)
            if customer is None:
                return  # _make_sink refuses with the reason
            creds = await loop.run_in_executor(
                svc.sts_executor,
                functools.partial(
                    svc.broker.credentials,
                    self.model.iam_role,
                    customer.external_id,
                    customer_id=self.record.customer_id,
                ),
            )
            self._credentials = creds
        refresh_needed = getattr(creds, "refresh_needed", None)
        if callable(refresh_needed) and refresh_needed():
            await loop.run_in_executor(svc.sts_executor, creds.get_frozen_credentials)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        """Run blocking sink/spool work on the delivery pool; remember it so halt() can wait.
        The endpoint whose oldest undelivered line is oldest gets the next free thread."""
        fed = self._fed
        priority = fed[0][1] if fed else None
        future = self.service.delivery_executor.submit(fn, *args, priority=priority)
        self._busy = future
        return await asyncio.wrap_future(future)

    def _wants_activation(self, spool: Spool, stopping: bool) -> bool:
        """A sink must be made or reopened before the next step can deliver anything."""
        if self._retire_sink or (self._sink is not None and not self._needs_open):
            return False  # (a retiring sink is flushed by the step first)
        if self._sink is not None or stopping or spool.end_offset > spool.committed_offset:
            return True
        return self.factory.durable_state and self._state_dir().exists()

    async def _activate(self, spool: Spool) -> None:
        """Make, open and (the first time) probe the sink on the activation pool. Why not in a
        step: it is CPU-heavy (a botocore client) and may wait on the network (the write probe,
        a recovery's Complete/Abort), so a burst of first activations (a deploy, 1,000 new
        customers) would hold the delivery threads other customers need and, all runnable at
        once, crowd the event loop out of the GIL: acknowledgements would run late. The pool's
        size (`server.activation_threads`) bounds both."""
        future = self.service.activation_executor.submit(self._open_sink_after_accepts, spool)
        self._busy = future
        await asyncio.wrap_future(future)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        spool = await self._in_thread(self.spool)
        idle_since = time.monotonic()
        deadline: float | None = None
        while not self._halted:
            stopping = self.service.stopping
            if stopping and deadline is None:
                deadline = time.monotonic() + self.service.config.server.shutdown_flush_seconds
            try:
                await self._ensure_credentials()
                if self._wants_activation(spool, stopping):
                    await self._activate(spool)
                # Cleared before the step, not before the wait: a call that finishes while the
                # step runs must still wake the wait that follows it.
                self._wake.clear()
                worked, delay = await self._in_thread(self._step, stopping)
                self._failures = 0
                if self.state != "active" and (worked or self.state in ("idle", "retrying")):
                    self.state = "active"
            except SetupError as exc:
                self._failed(exc, "setup")
                if stopping:
                    break
                await self._sleep(self._next_delay(SETUP_RETRY_POLICY))
                continue
            except (LogferryError, OSError) as exc:
                self._failed(exc, "transient")
                if stopping:
                    break
                await self._sleep(self._next_delay(RETRY_POLICY))
                continue
            except Exception as exc:  # a bug: keep data, show it, retry later
                logger.exception("delivery step failed")
                self._failed(exc, "internal")
                if stopping:
                    break
                await self._sleep(self._next_delay(SETUP_RETRY_POLICY))
                continue
            sink = self._sink
            holds = sink is not None and sink.holds_data()
            if stopping:
                if not holds or self.stop_event.is_set():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
            if self._halted:
                break
            read_pos = self._read_pos if self._read_pos is not None else spool.committed_offset
            pending = spool.end_offset > read_pos
            wants = sink is None or sink.wants_data()
            if worked or delay == 0 or (pending and wants):
                idle_since = time.monotonic()
                continue
            if not holds and not pending and time.monotonic() - idle_since > IDLE_EXIT_SECONDS:
                # Idle: free the sink and this role's clients; the next ingest restarts us.
                with contextlib.suppress(Exception):
                    self.service.broker.release(self.model.iam_role)
                break
            timeout = IDLE_EXIT_SECONDS if delay is None else delay
            data_after: int | None = read_pos if wants else None
            if holds:
                if delay is None:
                    timeout = min(timeout, MAX_WAIT)
                elif self.lazy and data_after is not None and not pending:
                    # An open file, due at its period end (a timer, not a poll): read new
                    # data then, or earlier once a part's worth of it waits.
                    data_after = read_pos + LAZY_READ_BYTES - 1
                idle = self.service.config.server.idle_flush_seconds
                if idle:
                    timeout = min(timeout, max(0.05, self._last_data + idle - time.monotonic()))
            await self._wait_for(spool, data_after, timeout)
        self._drop_sink()
        self.state = "idle" if self.state == "active" else self.state
        self._save_stats(force=True)

    async def _wait_for(self, spool: Spool, data_after: int | None, timeout: float) -> None:
        """Until new data (past `data_after`), a wake-up (config, verify) or `timeout`."""
        loop = asyncio.get_running_loop()
        waiters = {loop.create_task(self._wake.wait())}
        if data_after is not None:
            waiters.add(loop.create_task(spool.wait_for_data_async(data_after, timeout=timeout)))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _next_delay(self, policy: Backoff) -> float:
        ceiling = min(policy.cap, policy.base * (2 ** min(self._failures, 16)))
        self._failures += 1
        # Half fixed, half jitter: failing endpoints spread out, but a retry is never immediate.
        return ceiling / 2 + policy.rng.uniform(0, ceiling / 2)

    def _failed(self, exc: BaseException, kind: str) -> None:
        self._record_error(exc, kind)
        if kind != "setup":
            self.service.metrics.retries.labels(*self.labels).inc()
        if kind == "setup":
            self._forget_setup_check()  # prove the setup again once it works
            self._credentials = None
        self._needs_open = True  # nothing held only in memory is trusted after a failure

    # --------------------------------------------------------------------- one step (thread)

    def _make_sink(self, spool: Spool) -> Sink:
        svc = self.service
        customer = svc.store.get_customer(self.record.customer_id)
        if customer is None:
            raise SetupError(
                f"customer {self.record.customer_id!r} has no record, so its external ID is "
                "unknown; delivery is refused rather than guessed.",
                AwsErrorInfo("UnknownCustomer", service="sts", operation="AssumeRole"),
                fix="Re-create the customer (PUT /v1/customers/{id}) or delete the endpoint.",
            )
        self._setup_key = setup_fingerprint(self.record, customer.external_id)
        target = self.factory.target(self.model, svc.aws_target)
        clients = svc.broker.clients(
            self.model.iam_role,
            customer.external_id,
            customer_id=self.record.customer_id,
            target=target,
        )
        self.stop_event.clear()
        context = SinkContext(
            state_dir=self._state_dir(),
            uid_prefix=self.record.uid_prefix,
            stop=self.stop_event,
            wake=self._wake_from_thread,
            io_executor=svc.io_executor,
        )
        return self.factory.build(self.model, clients, context)

    def _wake_from_thread(self) -> None:
        """A call the sink left in flight finished: pump again now (any thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(self._wake.set)

    def _open_sink_after_accepts(self, spool: Spool) -> Sink:
        self.service.accept_backlog.wait_while_long()  # see service.accept_backlog
        return self._open_sink(spool)

    def _open_sink(self, spool: Spool) -> Sink:
        sink = self._sink
        if sink is None:
            sink = self._make_sink(spool)
            self._sink = sink
            self._seen_units = self._seen_records = 0
            self._needs_open = True
        if self._needs_open:
            self._read_pos = sink.open(spool.committed_offset)
            self._needs_open = False
            if not self._setup_proven():
                # Files may stay open for a whole period: prove now that the destination
                # takes writes, so a setup error shows within seconds, not at the period's end.
                sink.healthcheck()
                self._setup_checked()
        return sink

    def _setup_proven(self) -> bool:
        stats = self.stats
        if stats.setup_checked_at is None or stats.setup_checked_for != self._setup_key:
            return False
        return 0.0 <= time.time() - stats.setup_checked_at <= RECHECK_SECONDS

    def _setup_checked(self) -> None:
        with self._progress_lock:
            self.stats.setup_checked_at = time.time()
            self.stats.setup_checked_for = self._setup_key
        self._mark_dirty()

    def remember_setup_proof(self, record: EndpointRecord, external_id: str) -> None:
        """A role check proved these settings (see Service.remember_verified)."""
        with self._progress_lock:
            self.stats.setup_checked_at = time.time()
            self.stats.setup_checked_for = setup_fingerprint(record, external_id)
        self._mark_dirty()

    def _forget_setup_check(self) -> None:
        if self.stats.setup_checked_at is not None:
            with self._progress_lock:
                self.stats.setup_checked_at = self.stats.setup_checked_for = None
            self._mark_dirty()

    def oldest_undelivered_age(self) -> float | None:
        """Seconds the oldest accepted, undelivered line has waited (None: nothing waits).

        Lines read but not yet delivered are known exactly; lines still only in the spool
        are at least as old as the spool's oldest record the worker has not reached."""
        if self._fed:
            return max(0.0, time.time() - self._fed[0][1])
        spool = self.service.spools.get(self.record.uid_prefix)
        if spool is None or spool.pending_bytes <= 0:
            return None
        first = spool.first_pending_accepted_at()
        return None if first is None else max(0.0, time.time() - first)

    def _state_dir(self) -> Path:
        return self.factory.state_dir(self.service.state_dir, self.record.uid_prefix)

    def _drop_sink(self) -> None:
        self._fed.clear()
        self._sink = None
        self._read_pos = None
        self._needs_open = False

    def _step(self, stopping: bool) -> tuple[bool, float | None]:
        """Move data one step; returns (anything fed or delivered, seconds until due)."""
        spool = self.spool()
        if self._retire_sink:
            if self._sink is not None and not self._needs_open:
                self._sink.flush()
                delay = self._pump(self._sink, spool, caught_up=True)
                if self._sink.holds_data():
                    # Calls still in flight: wait for their wake, do not spin.
                    return False, delay
            self._retire_sink = False  # new settings: their fingerprint asks for a new probe
            self._drop_sink()
            return True, 0.0  # the new sink is made on the activation pool (see `_activate`)
        if self._sink is None and not self._wants_activation(spool, stopping):
            return False, None
        sink = self._open_sink(spool)
        assert self._read_pos is not None
        if self._corrupt is not None:
            return self._quarantine(sink, spool)
        worked = False
        # Shutting down: flush what the sink holds, read no more (the spool keeps the rest,
        # and reading on would only cut one small file per read).
        if not stopping and not self.stop_event.is_set() and sink.wants_data():
            try:
                chunks = spool.read(self._read_pos, READ_BYTES)
            except SpoolCorrupt as exc:
                self._corrupt = exc
                chunks = []
            for chunk in chunks:
                sink.feed(chunk)
                self._read_pos = chunk.end
                self._fed.append((chunk.end, chunk.accepted_at))
            if chunks:
                worked = True
                self._last_data = time.monotonic()
        caught_up = self._read_pos >= spool.end_offset and self._corrupt is None
        now = time.monotonic()
        if stopping:
            sink.flush()
        elif caught_up and sink.holds_data():
            idle = self.service.config.server.idle_flush_seconds
            if idle and now - self._last_data >= idle:
                sink.flush()
        if sink.holds_data() and self._under_pressure(spool, now):
            sink.flush()
            self._last_pressure_flush = now
            self.service.metrics.early_closes.labels(*self.labels).inc()
        delay = self._pump(sink, spool, caught_up=caught_up or stopping)
        if self._corrupt is not None:
            delay = 0.0
        return worked, delay

    def _pump(self, sink: Sink, spool: Spool, *, caught_up: bool) -> float | None:
        """Let the sink work until it must wait (or STEP_SECONDS passed), committing after
        every unit of work: a crash replays at most what was in flight."""
        deadline = time.monotonic() + STEP_SECONDS
        while True:
            delay = sink.pump(caught_up=caught_up)
            self._commit(sink, spool)
            if delay != 0.0 or time.monotonic() >= deadline or self.stop_event.is_set():
                return delay

    def _under_pressure(self, spool: Spool, now: float) -> bool:
        if now - self._last_pressure_flush < PRESSURE_FLUSH_GAP:
            return False
        budget = self.service.spools.budget
        if budget.max_bytes and budget.used > budget.max_bytes * PRESSURE_FRACTION:
            return True
        limit = spool.max_bytes
        return bool(limit and spool.disk_bytes > limit * PRESSURE_FRACTION)

    def _quarantine(self, sink: Sink, spool: Spool) -> tuple[bool, float | None]:
        """Deliver everything before the damage, then move the damaged bytes aside."""
        error = self._corrupt
        assert error is not None
        sink.flush()
        delay = self._pump(sink, spool, caught_up=True)
        if sink.durable < error.offset or spool.committed_offset < error.offset:
            return False, delay  # calls in flight: their wake brings us back
        found = spool.quarantine(error)
        self._corrupt = None
        self.stats.quarantined_records += 1
        self.stats.quarantined_bytes += found.nbytes
        self.stats.quarantined_lines += found.lines
        self.stats.last_quarantine = found.path
        self._mark_dirty()
        self.service.metrics.quarantined.labels(*self.labels).inc(found.nbytes)
        message = (
            f"{found.nbytes} damaged spool bytes (positions {found.start}..{found.end}, "
            f"{found.lines} lines) were moved to {found.path}; delivery goes on after them"
        )
        self.service.store.add_error(
            self.record.uid_prefix,
            "SpoolCorrupt",
            message,
            QUARANTINE_FIX,
            time.time(),
        )
        log(
            logger,
            logging.ERROR,
            "spool damage quarantined",
            customer=self.record.customer_id,
            endpoint=self.record.name,
            path=found.path,
            bytes=found.nbytes,
        )
        self._needs_open = True  # the sink resumes after the skipped range
        return True, 0.0

    def _commit(self, sink: Sink, spool: Spool) -> bool:
        durable = sink.durable
        before, before_line = spool.committed_offset, spool.committed_line
        if durable <= before:
            self._count_units(sink)
            return False
        with self._progress_lock:  # status never sees the commit without its counters
            spool.commit(durable)
            self._delivered(spool.committed_line - before_line, durable - before)
        sink.committed(durable)
        fed = self._fed
        while fed and fed[0][0] <= durable:
            self.last_lag = max(0.0, time.time() - fed.popleft()[1])
        self._count_units(sink)
        for lost in self.factory.lost_ranges(sink)[self._lost_seen :]:
            self._record_error(
                LogferryError(
                    f"lines at positions {lost.start}..{lost.end} were lost: {lost.why}",
                    fix=lost.fix,
                ),
                "setup",
            )
            self._lost_seen += 1
        return True

    _lost_seen = 0

    def _count_units(self, sink: Sink) -> None:
        counters = sink.counters()
        units = max(0, counters.units - self._seen_units)
        records = max(0, counters.records - self._seen_records)
        self._seen_units, self._seen_records = counters.units, counters.records
        if not units and not records:
            return
        if self.factory.unit == "objects":
            self.stats.objects += units
        self.stats.records += records
        self._mark_dirty()
        if units:
            self.service.metrics.delivered_units.labels(*self.labels, self.kind).inc(units)

    def _delivered(self, lines: int, nbytes: int) -> None:
        self.stats.lines_delivered += lines
        self.stats.bytes_delivered += nbytes
        self.stats.last_success = time.time()
        self._mark_dirty()
        m = self.service.metrics
        m.delivered_lines.labels(*self.labels, self.kind).inc(lines)
        m.delivered_bytes.labels(*self.labels, self.kind).inc(nbytes)
        if self.state in ("error", "retrying"):
            self.state = "active"

    # --------------------------------------------------------------------- errors and stats

    def _record_error(self, exc: BaseException, kind: str) -> None:
        info = getattr(exc, "info", None)
        code = getattr(info, "code", None) or type(exc).__name__
        message = getattr(exc, "message", None) or str(exc)
        fix = getattr(exc, "fix", None)
        now = time.time()
        self.last_error = {"time": now, "code": code, "message": message, "fix": fix, "kind": kind}
        self.stats.last_error_time = now
        self.state = "error" if kind == "setup" else "retrying"
        self.service.store.add_error(self.record.uid_prefix, code, message, fix, now)
        self.service.metrics.delivery_errors.labels(*self.labels, code, kind).inc()
        log(
            logger,
            logging.WARNING,
            "delivery failed",
            customer=self.record.customer_id,
            endpoint=self.record.name,
            code=code,
            kind=kind,
            error=message,
            fix=fix,
        )
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        """Stats changed (any thread): the service saves every dirty endpoint's stats in one
        transaction every few seconds, not one SQLite commit per endpoint per step."""
        if not self._stats_dirty:
            with self.service.stats_lock:
                self._stats_dirty = True
                self.service.stats_dirty.add(self)

    def stats_row(self) -> tuple[str, dict[str, Any]]:
        """(uid, stats) to save; the caller holds service.stats_lock and clears the flag."""
        self._stats_dirty = False
        return self.record.uid_prefix, asdict(self.stats)

    def _save_stats(self, force: bool = False) -> None:
        """Save now (worker exit, shutdown); otherwise the service's batch saves them."""
        if self._stats_dirty and force:
            with self.service.stats_lock:
                self._stats_dirty = False
                self.service.stats_dirty.discard(self)
                row = asdict(self.stats)
            self.service.store.save_stats(self.record.uid_prefix, row)

    def status(self) -> dict[str, Any]:
        spool = self.service.spools.get(self.record.uid_prefix)
        with self._progress_lock:
            pending_bytes = spool.pending_bytes if spool else 0
            pending_lines = spool.pending_lines if spool else 0
            delivered_lines = self.stats.lines_delivered
            delivered_bytes = self.stats.bytes_delivered
        extra: dict[str, Any] = {}
        if self._sink is not None:
            with contextlib.suppress(Exception):
                extra = dict(self._sink.status())
        quarantine = None
        if self.stats.quarantined_records:
            quarantine = {
                "records": self.stats.quarantined_records,
                "bytes": self.stats.quarantined_bytes,
                "lines": self.stats.quarantined_lines,
                "path": self.stats.last_quarantine,
                "fix": QUARANTINE_FIX,
            }
        age = self.oldest_undelivered_age()
        return {
            "customer_id": self.record.customer_id,
            "name": self.record.name,
            "type": self.kind,
            "state": self.state,
            "lines": {
                "accepted": self.stats.lines_accepted,
                "delivered": delivered_lines,
                "pending": pending_lines,
            },
            "bytes": {
                "accepted": self.stats.bytes_accepted,
                "delivered": delivered_bytes,
                "pending": pending_bytes,
            },
            "objects" if self.factory.unit == "objects" else "records": (
                self.stats.objects if self.factory.unit == "objects" else self.stats.records
            ),
            "last_success": self.stats.last_success,
            "last_error": self.last_error,
            "lag": {
                "oldest_undelivered_seconds": _round(age),
                "last_delivered_seconds": _round(self.last_lag),
                "budget_seconds": self.lag_budget(),
                "late": age is not None and age > self.lag_budget(),
            },
            "quarantine": quarantine,
            "sink": extra,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


QUARANTINE_FIX = (
    "The spool's disk returned damaged bytes; check the disk (dmesg, SMART). The damaged "
    "records are kept byte for byte in the quarantine file for inspection; nothing else was "
    "lost, and the file can be deleted once inspected."
)


def setup_fingerprint(record: EndpointRecord, external_id: str) -> str:
    """What a write probe proves: these endpoint settings (bucket, role, path, headers...),
    assumed with this external ID. Any change asks for a new probe."""
    doc = json.dumps(
        [record.type, record.config, external_id], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(doc.encode()).hexdigest()[:32]
