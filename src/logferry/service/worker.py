"""One delivery worker per active endpoint: spool → sink → commit, with error states.

A worker exists only while its endpoint has data in flight; idle endpoints have no task, no
sink, no AWS clients and no open files (10,000 configured endpoints cost a few KiB each).

The worker drives any `Sink` (see `sinks.base`) without knowing which destination it has: what
differs per destination is its `SinkFactory`. Each step runs on the delivery thread pool and
only *works* (`service.worker_step`): it reads chunks, feeds them, lets the sink do what is due
(close a file, send one PutRecords call) and commits the spool up to the sink's durable
position. Every *wait* — shard pacing, a record's retry backoff, the backoff after a failed
step, a file's period end — is awaited here, on the event loop, so a throttled stream or a
broken role never holds a thread that other customers need. Retries after a failed step follow
one policy (`sinks.base.RETRY_POLICY` / `SETUP_RETRY_POLICY`), on top of botocore's own.

The worker reaches the service only through `WorkerDeps` (service.worker_deps); its counters
and status document are `service.worker_stats`. The spool is committed only up to what the
sink confirmed, so a crash at any point leaves every acknowledged line on disk; positions are
line-granular, so a sink may cut anywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from logferry.errors import LogferryError, SetupError
from logferry.service.logs import log
from logferry.service.worker_deps import WorkerDeps
from logferry.service.worker_stats import (
    QUARANTINE_FIX,
    EndpointStats,
    setup_fingerprint,
    status_document,
)
from logferry.service.worker_step import (
    READ_BYTES,
    RECHECK_SECONDS,
    STEP_SECONDS,
    DeliveryStep,
)
from logferry.sinks.backoff import Backoff
from logferry.sinks.base import RETRY_POLICY, SETUP_RETRY_POLICY, Sink, SinkFactory
from logferry.sinks.registry import factory
from logferry.spool import SpoolCorrupt
from logferry.spool.errors import SpoolFenced

if TYPE_CHECKING:
    from logferry.service.records import EndpointRecord
    from logferry.spool.base import Spool

__all__ = [
    "QUARANTINE_FIX",
    "READ_BYTES",
    "RECHECK_SECONDS",
    "STEP_SECONDS",
    "EndpointStats",
    "EndpointWorker",
    "WorkerDeps",
    "setup_fingerprint",
]

logger = logging.getLogger("logferry.worker")

IDLE_EXIT_SECONDS = 30.0
MAX_WAIT = 5.0
"""Longest sleep between steps while the sink holds data and named no time it is due."""
LAG_SLACK_SECONDS = 5.0
"""An endpoint is late when its oldest undelivered line is older than its period plus this."""
LAZY_READ_BYTES = 1024 * 1024
"""While a lazy sink (S3) has a batch open and not yet due, new data wakes the worker only once
this much waits in the spool: a small tenant's requests are read once per period, not once each
(the spool holds them durably meanwhile). Big streams still flow in 1 MiB steps."""


class EndpointWorker(DeliveryStep):
    """Delivers one endpoint's spool. Created on demand by the service."""

    def __init__(self, deps: WorkerDeps, record: EndpointRecord, model: Any) -> None:
        self.deps = deps
        self.record = record
        self.model = model
        self.kind = record.type
        self.factory: SinkFactory = factory(record.type)
        self.lazy = self.factory.lazy
        """Batches built over a period: new data need not be read before the batch is due."""
        self.stats = EndpointStats.from_dict(deps.load_stats(record.uid_prefix))
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
        self._setup_failed = False
        """A setup error since this worker's last probe: the proof in the shared record is not
        trusted until a probe of its own passes."""
        self._read_pos: int | None = None
        self._corrupt: SpoolCorrupt | None = None
        self._failures = 0
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
    def halted(self) -> bool:
        """The endpoint is being deleted: nothing of it is saved any more."""
        return self._halted

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ingest_counters(self, source: str) -> tuple[Any, Any]:
        """The (lines, bytes) ingest counters of this endpoint and `source`, looked up once
        (prometheus' labels() costs a lock and a dict build per call, i.e. per request)."""
        found = self._ingest_counters.get(source)
        if found is None:
            m = self.deps.metrics
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
        if (
            not self.running
            and not self.deps.stopping()
            and not self._halted
            and self.deps.may_run(self.record.uid_prefix)
        ):
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
        spool = self.deps.spools.get(self.record.uid_prefix)
        if spool is not None and spool.pending_bytes > 0:
            return True
        if self._sink is not None and self._sink.holds_data():
            return True
        return self.unfinished_state()

    def unfinished_state(self) -> bool:
        """The sink's durable state (local, or the shared journal with NATS) holds work to
        finish: a file to complete, an upload to abort."""
        if not self.factory.durable_state:
            return False
        journal = self.deps.journal_for(self.record.uid_prefix) if self.deps.journal_for else None
        return self.factory.has_unfinished_state(self._state_dir(), journal)

    async def halt(self, *, retire: bool = True) -> None:
        """Stop delivering without flushing (the endpoint is being deleted). Returns only once
        no delivery thread works for this endpoint any more, so the caller may discard.
        `retire=False`: the endpoint lives on (another node owns it now), see `hand_over`."""
        self._halted = True
        if retire:
            self.deps.stats.retire(self.record.uid_prefix)
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

    async def hand_over(self) -> None:
        """Stop delivering without flushing because this node no longer owns the endpoint
        (NATS), and save its stats: a worker made here again when the ownership comes back
        starts from them (a retired endpoint's stats would never be saved again)."""
        await self.halt(retire=False)
        await self._save_stats()

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
        await self._save_stats()

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """A worker that died of a bug is restarted with backoff; its error shows in status."""
        if task.cancelled() or self._halted or self.deps.stopping():
            return
        exc = task.exception()
        if exc is None:
            return
        logger.error("delivery worker died", exc_info=exc)
        self._record_error(exc, "internal")
        self.deps.metrics.retries.labels(*self.labels).inc()
        self._drop_sink()
        delay = self._next_delay(SETUP_RETRY_POLICY)
        self._restart = asyncio.get_running_loop().call_later(delay, self.notify)

    # --------------------------------------------------------------------- loop

    async def _ensure_credentials(self) -> None:
        """AssumeRole — and its regional failover, which may wait on dead regions — runs on
        the STS pool before a step, so a delivery thread never waits for STS."""
        loop = asyncio.get_running_loop()
        deps = self.deps
        creds = self._credentials
        if creds is None:
            customer = deps.get_customer(self.record.customer_id)
            if customer is None:
                return  # _make_sink refuses with the reason
            creds = await loop.run_in_executor(
                deps.sts_pool,
                functools.partial(
                    deps.broker.credentials,
                    self.model.iam_role,
                    customer.external_id,
                    customer_id=self.record.customer_id,
                ),
            )
            self._credentials = creds
        refresh_needed = getattr(creds, "refresh_needed", None)
        if callable(refresh_needed) and refresh_needed():
            await loop.run_in_executor(deps.sts_pool, creds.get_frozen_credentials)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        """Run blocking sink/spool work on the delivery pool; remember it so halt() can wait.
        The endpoint whose oldest undelivered line is oldest gets the next free thread."""
        fed = self._fed
        priority = fed[0][1] if fed else None
        future = self.deps.delivery_pool.submit(fn, *args, priority=priority)
        self._busy = future
        return await asyncio.wrap_future(future)

    async def _activate(self, spool: Spool) -> None:
        """Make, open and (the first time) probe the sink on the activation pool. Why not in a
        step: it is CPU-heavy (a botocore client) and may wait on the network (the write probe,
        a recovery's Complete/Abort), so a burst of first activations (a deploy, 1,000 new
        customers) would hold the delivery threads other customers need and, all runnable at
        once, crowd the event loop out of the GIL: acknowledgements would run late. The pool's
        size (`server.activation_threads`) bounds both."""
        future = self.deps.activation_pool.submit(self._open_sink_after_accepts, spool)
        self._busy = future
        await asyncio.wrap_future(future)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        spool = await self._in_thread(self.spool)
        idle_since = time.monotonic()
        deadline: float | None = None
        while not self._halted:
            stopping = self.deps.stopping()
            if stopping and deadline is None:
                deadline = time.monotonic() + self.deps.shutdown_flush_seconds
            try:
                # Only a worker with something to deliver assumes the role (one may run idle:
                # woken with nothing new, or waiting out IDLE_EXIT_SECONDS).
                wants = self._wants_activation(spool, stopping)
                if wants or self._sink is not None:
                    await self._ensure_credentials()
                if wants:
                    await self._activate(spool)
                # Cleared before the step, not before the wait: a call that finishes while the
                # step runs must still wake the wait that follows it.
                self._wake.clear()
                before = spool.committed_offset
                worked, delay = await self._in_thread(self._step, stopping)
                # Only progress resets the backoff: with calls in flight, the step that starts a
                # doomed call returns fine and its failure surfaces a step later, so "no raise"
                # is no proof the destination is back (the long-outage chaos case).
                sink = self._sink
                if spool.committed_offset != before or sink is None or not sink.holds_data():
                    self._failures = 0
                if self.state != "active" and (worked or self.state in ("idle", "retrying")):
                    self.state = "active"
            except SpoolFenced as exc:
                # Another node owns the endpoint now (NATS): no retry, no more writes; the
                # new owner resumes from the cursor it finds in KV.
                self.state = "fenced"
                log(
                    logger,
                    logging.WARNING,
                    "delivery stopped: another node owns the endpoint",
                    customer=self.record.customer_id,
                    endpoint=self.record.name,
                    error=str(exc),
                )
                self._drop_sink()
                return
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
                    self.deps.broker.release(self.model.iam_role)
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
                idle = self.deps.idle_flush_seconds
                if idle:
                    timeout = min(timeout, max(0.05, self._last_data + idle - time.monotonic()))
            await self._wait_for(spool, data_after, timeout)
        self._drop_sink()
        self.state = "idle" if self.state == "active" else self.state
        await self._save_stats()

    async def _wait_for(self, spool: Spool, data_after: int | None, timeout: float) -> None:
        """Until new data (past `data_after`), a wake-up (config, verify) or `timeout`."""
        loop = asyncio.get_running_loop()
        waiters: set[asyncio.Task[Any]] = {loop.create_task(self._wake.wait())}
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
        # The policies use equal jitter: failing endpoints spread out, a retry is never immediate.
        delay = policy.delay(self._failures)
        self._failures += 1
        return delay

    def _failed(self, exc: BaseException, kind: str) -> None:
        self._record_error(exc, kind)
        if kind != "setup":
            self.deps.metrics.retries.labels(*self.labels).inc()
        if kind == "setup":
            self._forget_setup_check()  # prove the setup again once it works
            self._credentials = None
        self._needs_open = True  # nothing held only in memory is trusted after a failure

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
        self.deps.add_error(self.record.uid_prefix, code, message, fix, now)
        self.deps.metrics.delivery_errors.labels(*self.labels, code, kind).inc()
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
        """Stats changed (any thread): the service saves every changed endpoint's stats in one
        transaction every few seconds (see `worker_stats.StatsBook`)."""
        self.deps.stats.mark(self.record.uid_prefix, self.stats)

    async def _save_stats(self) -> None:
        """Save now (worker exit, shutdown), on a thread; otherwise the service's batch does."""
        await asyncio.to_thread(self._save_stats_now)

    def _save_stats_now(self) -> None:
        """`_save_stats` from a thread that may block (a delivery or activation thread)."""
        uid = self.record.uid_prefix
        row = self.deps.stats.take_one(uid)
        if row is not None:
            try:
                self.deps.save_stats(uid, row)
            except Exception:  # counters only: mark them again for the next batch
                logger.exception("saving endpoint stats failed")
                self._mark_dirty()

    def status(self) -> dict[str, Any]:
        spool = self.deps.spools.get(self.record.uid_prefix)
        with self._progress_lock:
            pending = (spool.pending_lines, spool.pending_bytes) if spool else (0, 0)
            delivered = (self.stats.lines_delivered, self.stats.bytes_delivered)
        extra: dict[str, Any] = {}
        if self._sink is not None:
            with contextlib.suppress(Exception):
                extra = dict(self._sink.status())
        return status_document(
            self.record,
            unit=self.factory.unit,
            state=self.state,
            stats=self.stats,
            delivered=delivered,
            pending=pending,
            last_error=self.last_error,
            oldest_age=self.oldest_undelivered_age(),
            last_lag=self.last_lag,
            lag_budget=self.lag_budget(),
            sink=extra,
        )
