"""The thread-side half of a delivery worker: make and open the sink, and one step of work.

Everything here runs on a pool thread (the delivery pool, or the activation pool for making and
opening a sink), never on the event loop, and only *works*: it reads chunks, feeds them, lets
the sink do what is due and commits the spool up to the sink's durable position after every
unit of work. The waiting between steps is `service.worker`'s (on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logferry.errors import AwsErrorInfo, LogferryError, SetupError
from logferry.service.logs import log
from logferry.service.worker_stats import QUARANTINE_FIX, EndpointStats, setup_fingerprint
from logferry.sinks.base import Sink, SinkContext, SinkFactory
from logferry.spool import SpoolCorrupt
from logferry.spool.errors import SpoolError

if TYPE_CHECKING:
    from logferry.service.records import EndpointRecord
    from logferry.service.worker_deps import WorkerDeps
    from logferry.spool.base import Spool

logger = logging.getLogger("logferry.worker")

READ_BYTES = 4 * 1024 * 1024
STEP_SECONDS = 0.5
"""A step pumps its sink at most this long before yielding its thread to other endpoints."""
PRESSURE_FRACTION = 0.75
"""Above this share of the spool limit, open files close early (before anyone gets a 429)."""
PRESSURE_FLUSH_GAP = 5.0
"""...at most this often per endpoint, so pressure does not turn into a flood of tiny files."""
RECHECK_SECONDS = 24 * 3600.0
"""A new sink skips the write probe (CreateMultipartUpload + Abort in the customer's bucket) when
one passed for the same endpoint settings, role and external ID within this time — in this
process or, through the stored stats, before a restart (with NATS also on another node, through
the endpoint's record). A setup error or a changed endpoint
forgets the pass. Why a day and not less: every activation assumes the role anyway (a broken
trust policy shows at once), and a permission removed later shows at the endpoint's next write;
re-probing on each restart would put two calls per endpoint into every customer's CloudTrail
and cost a fleet-wide burst of S3 calls at each deploy."""
CLOCK_SKEW = 300.0
"""How far ahead of this node's clock another node's probe time may be and still count."""


class DeliveryStep:
    """The sink and the step, as part of `EndpointWorker` (which owns the state below)."""

    deps: WorkerDeps
    record: EndpointRecord
    model: Any
    kind: str
    factory: SinkFactory
    state: str
    stats: EndpointStats
    stop_event: threading.Event
    last_lag: float | None
    _sink: Sink | None
    _needs_open: bool
    _setup_key: str | None
    _setup_failed: bool
    _read_pos: int | None
    _corrupt: SpoolCorrupt | None
    _retire_sink: bool
    _seen_units: int
    _seen_records: int
    _last_data: float
    _last_pressure_flush: float
    _loop: asyncio.AbstractEventLoop | None
    _wake: asyncio.Event
    _progress_lock: threading.Lock
    _fed: deque[tuple[int, float]]
    _credentials: Any

    @property
    def labels(self) -> tuple[str, str]:
        return (self.record.customer_id, self.record.name)

    if TYPE_CHECKING:  # provided by the class this is part of

        def _record_error(self, exc: BaseException, kind: str) -> None: ...

        def _mark_dirty(self) -> None: ...

        def _save_stats_now(self) -> None: ...

        def unfinished_state(self) -> bool: ...

    def spool(self) -> Spool:
        return self.deps.spools.open(self.record.uid_prefix)

    def _wants_activation(self, spool: Spool, stopping: bool) -> bool:
        """A sink must be made or reopened before the next step can deliver anything."""
        if self._retire_sink or (self._sink is not None and not self._needs_open):
            return False  # (a retiring sink is flushed by the step first)
        if self._sink is not None or stopping or spool.end_offset > spool.committed_offset:
            return True
        if self.deps.journal_for is not None:
            return self.unfinished_state()  # the shared journal: a previous owner's upload
        return self.factory.durable_state and self._state_dir().exists()

    def _make_sink(self, spool: Spool) -> Sink:
        deps = self.deps
        customer = deps.get_customer(self.record.customer_id)
        if customer is None:
            raise SetupError(
                f"customer {self.record.customer_id!r} has no record, so its external ID is "
                "unknown; delivery is refused rather than guessed.",
                AwsErrorInfo("UnknownCustomer", service="sts", operation="AssumeRole"),
                fix="Re-create the customer (PUT /v1/customers/{id}) or delete the endpoint.",
            )
        self._setup_key = setup_fingerprint(self.record, customer.external_id)
        target = self.factory.target(self.model, deps.aws_target)
        clients = deps.broker.clients(
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
            io_executor=deps.io_pool,
            **self._shared_kwargs(),
        )
        return self.factory.build(self.model, clients, context)

    def _shared_kwargs(self) -> dict[str, Any]:
        """NATS: the journal lives in the endpoint's KV record (so a new owner finds it), and
        every call to the destination first asks whether this node still owns the endpoint."""
        uid = self.record.uid_prefix
        given: dict[str, Any] = {}
        if self.deps.journal_for is not None:
            given["journal"] = self.deps.journal_for(uid)
        holds = self.deps.holds
        if holds is not None:
            given["holds"] = lambda: holds(uid)
        return given

    def _wake_from_thread(self) -> None:
        """A call the sink left in flight finished: pump again now (any thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(self._wake.set)

    def _open_sink_after_accepts(self, spool: Spool) -> Sink:
        self.deps.accept_backlog.wait_while_long()  # see service.accept_backlog
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
        if stats.setup_checked_for == self._setup_key and _fresh(stats.setup_checked_at):
            return True
        if self._setup_failed:
            return False  # a setup error here since: only a probe of its own proves it again
        shared = self._shared_record()
        proof = shared.setup_proof() if shared is not None else None
        if proof is None or proof[0] != self._setup_key or not _fresh(proof[1], CLOCK_SKEW):
            return False
        with self._progress_lock:  # another owner's probe proved these settings
            stats.setup_checked_at, stats.setup_checked_for = proof[1], proof[0]
        self._mark_dirty()
        return True

    def _shared_record(self) -> Any:
        """The endpoint's shared record store (NATS), or None with the local spool."""
        journal_for = self.deps.journal_for
        return journal_for(self.record.uid_prefix) if journal_for is not None else None

    def _setup_checked(self) -> None:
        self._setup_failed = False
        with self._progress_lock:
            self.stats.setup_checked_at = time.time()
            self.stats.setup_checked_for = self._setup_key
        self._mark_dirty()
        # Saved at once, not with the next batch: a process killed within the batch interval
        # would probe again in its next life, and each probe is an upload a kill during its
        # CreateMultipartUpload round trip leaves open (its ID never arrived). With NATS the
        # proof goes into the endpoint's record too, for the node that takes it over.
        self._save_stats_now()
        shared = self._shared_record()
        if shared is not None and self.stats.setup_checked_at is not None:
            try:
                shared.save_setup_proof(self._setup_key, self.stats.setup_checked_at)
            except SpoolError as exc:  # only a proof: the next owner probes again
                logger.info("setup proof not shared: %s", exc)

    def remember_setup_proof(self, record: EndpointRecord, external_id: str) -> None:
        """A role check proved these settings (see Service.remember_verified)."""
        with self._progress_lock:
            self.stats.setup_checked_at = time.time()
            self.stats.setup_checked_for = setup_fingerprint(record, external_id)
        self._mark_dirty()

    def _forget_setup_check(self) -> None:
        self._setup_failed = True  # the record's proof (another owner's, or ours) is stale too
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
        spool = self.deps.spools.get(self.record.uid_prefix)
        if spool is None or spool.pending_bytes <= 0:
            return None
        first = spool.first_pending_accepted_at()
        return None if first is None else max(0.0, time.time() - first)

    def _state_dir(self) -> Path:
        return self.factory.state_dir(self.deps.state_root, self.record.uid_prefix)

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
        if self._sink is None:
            if not self._wants_activation(spool, stopping):
                return False, None
            if self._credentials is None and self.deps.get_customer(self.record.customer_id):
                return False, 0.0  # data came meanwhile: assume the role off this thread first
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
            idle = self.deps.idle_flush_seconds
            if idle and now - self._last_data >= idle:
                sink.flush()
        if sink.holds_data() and self._under_pressure(spool, now):
            sink.flush()
            self._last_pressure_flush = now
            self.deps.metrics.early_closes.labels(*self.labels).inc()
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
        budget = self.deps.spools.budget
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
        self.deps.metrics.quarantined.labels(*self.labels).inc(found.nbytes)
        message = (
            f"{found.nbytes} damaged spool bytes (positions {found.start}..{found.end}, "
            f"{found.lines} lines) were moved to {found.path}; delivery goes on after them"
        )
        self.deps.add_error(
            self.record.uid_prefix, "SpoolCorrupt", message, QUARANTINE_FIX, time.time()
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
            self.deps.metrics.delivered_units.labels(*self.labels, self.kind).inc(units)

    def _delivered(self, lines: int, nbytes: int) -> None:
        self.stats.lines_delivered += lines
        self.stats.bytes_delivered += nbytes
        self.stats.last_success = time.time()
        self._mark_dirty()
        m = self.deps.metrics
        m.delivered_lines.labels(*self.labels, self.kind).inc(lines)
        m.delivered_bytes.labels(*self.labels, self.kind).inc(nbytes)
        if self.state in ("error", "retrying"):
            self.state = "active"


def _fresh(checked_at: float | None, skew: float = 0.0) -> bool:
    """A probe at `checked_at` still proves the setup: within RECHECK_SECONDS, and not ahead of
    this clock by more than `skew` (another node's clock, for a proof from the record)."""
    return checked_at is not None and -skew <= time.time() - checked_at <= RECHECK_SECONDS
