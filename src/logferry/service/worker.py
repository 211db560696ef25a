"""One delivery worker per active endpoint: spool → sink → commit, with error states.

A worker exists only while its endpoint has data in flight; idle endpoints have no task, no
sink, no AWS clients and no open files (10,000 configured endpoints cost a few KiB each).
Blocking sink calls run on the service's delivery thread pool; the spool is committed only up
to what the sink confirmed, so a crash at any point leaves every acknowledged line on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from logferry.errors import LogferryError, SetupError, TransientError
from logferry.service.logs import log
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.sinks.s3_config import S3Endpoint

if TYPE_CHECKING:
    from logferry.service.runtime import Service
    from logferry.service.store import EndpointRecord
    from logferry.spool import Spool

logger = logging.getLogger("logferry.worker")

READ_BYTES = 4 * 1024 * 1024
IDLE_EXIT_SECONDS = 30.0
ERROR_BACKOFF = (2.0, 300.0)
"""(first, cap) seconds between attempts after a customer-setup error (verify wakes it early)."""
TRANSIENT_CAP = 30.0
"""Cap after transient errors: an outage is noticed to be over within half a minute."""


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
        self.stats = EndpointStats.from_dict(service.store.load_stats(record.uid_prefix))
        self.state = "idle"
        self.last_error: dict[str, Any] | None = None
        self.stop_event = threading.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sink: Any = None
        self._read_pos: int | None = None
        self._in_flight: deque[tuple[int, int, int]] = deque()  # (end offset, lines, bytes)
        self._backoff = ERROR_BACKOFF[0]
        self._stats_dirty = False
        self._stats_saved = 0.0

    # --------------------------------------------------------------------- control

    @property
    def labels(self) -> tuple[str, str]:
        return (self.record.customer_id, self.record.name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def spool(self) -> Spool:
        return self.service.spools.open(self.record.uid_prefix)

    def accepted(self, lines: int, nbytes: int) -> None:
        self.stats.lines_accepted += lines
        self.stats.bytes_accepted += nbytes
        self._stats_dirty = True
        self.notify()

    def notify(self) -> None:
        """New data or new configuration: wake the worker (start it if idle)."""
        self._wake.set()
        if not self.running and not self.service.stopping and not self._halted:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"deliver:{self.record.customer_id}/{self.record.name}"
            )

    def reconfigure(self, record: EndpointRecord, model: Any) -> None:
        """A changed endpoint: the next batch uses a fresh sink (open files are flushed first)."""
        self.record, self.model = record, model
        self._retire_sink = True
        self._backoff = ERROR_BACKOFF[0]
        self.notify()

    _retire_sink = False

    _halted = False

    async def halt(self) -> None:
        """Stop delivering without flushing (the endpoint is being deleted)."""
        self._halted = True
        self.stop_event.set()
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=30)
            except TimeoutError:
                task.cancel()

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
        self._save_stats(force=True)

    # --------------------------------------------------------------------- loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        executor = self.service.delivery_executor
        spool = await loop.run_in_executor(executor, self.spool)
        idle_since = time.monotonic()
        while not self._halted:
            stopping = self.service.stopping
            try:
                worked = await loop.run_in_executor(executor, self._step, stopping)
                self._backoff = ERROR_BACKOFF[0]
                if self.state != "active" or worked:
                    self.state = "active"
            except SetupError as exc:
                self._record_error(exc, "setup")
                self._drop_sink()
                if stopping:
                    break
                await self._sleep(self._next_backoff())
                continue
            except (TransientError, LogferryError, OSError) as exc:
                self._record_error(exc, "transient")
                self.service.metrics.retries.labels(*self.labels).inc()
                self._drop_sink()
                if stopping:
                    break
                await self._sleep(min(self._next_backoff(), TRANSIENT_CAP))
                continue
            except Exception as exc:  # a bug: keep data, show it, retry later
                logger.exception("delivery worker crashed")
                self._record_error(exc, "internal")
                self._drop_sink()
                if stopping:
                    break
                await self._sleep(self._next_backoff())
                continue
            self._save_stats()
            if stopping or self._halted:
                break
            pending = spool.end_offset > (self._read_pos or spool.committed_offset)
            if worked or pending:
                idle_since = time.monotonic()
                continue
            has_open = self._sink is not None and self._sink_has_open_data(spool)
            if not has_open and time.monotonic() - idle_since > IDLE_EXIT_SECONDS:
                break  # idle: free the sink and clients; the next ingest restarts us
            self._wake.clear()
            waiter = loop.create_task(self._wake.wait())
            data = loop.create_task(
                spool.wait_for_data_async(self._read_pos or spool.committed_offset, timeout=1.0)
            )
            await asyncio.wait({waiter, data}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, data):
                task.cancel()
        self._drop_sink()
        self.state = "idle" if self.state == "active" else self.state
        self._save_stats(force=True)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _next_backoff(self) -> float:
        current = self._backoff
        self._backoff = min(self._backoff * 2, ERROR_BACKOFF[1])
        return current

    # --------------------------------------------------------------------- one step (thread)

    def _sink_has_open_data(self, spool: Spool) -> bool:
        if self.kind == "s3":
            return self._sink.durable_offset < (self._read_pos or spool.committed_offset)
        return False

    def _make_sink(self, spool: Spool) -> None:
        svc = self.service
        customer = svc.store.get_customer(self.record.customer_id)
        external_id = customer.external_id if customer else svc.no_customer(self.record)
        target = svc.aws_target
        if self.kind == "s3" and getattr(self.model, "domain", None):
            from logferry.aws.clients import AwsTarget

            domain = self.model.domain
            url = domain if domain.startswith(("http://", "https://")) else f"https://{domain}"
            target = AwsTarget(target.endpoint_url, {**target.service_endpoints, "s3": url})
        clients = svc.broker.clients(
            self.model.iam_role, external_id, customer_id=self.record.customer_id, target=target
        )
        self.stop_event.clear()
        if self.kind == "s3":
            from logferry.sinks.s3 import S3Sink

            sink = S3Sink(
                self.model,
                clients,
                svc.state_dir / "s3" / self.record.uid_prefix,
                uid_prefix=self.record.uid_prefix,
                stop=self.stop_event,
            )
            resume = sink.recover()
            self._read_pos = max(resume, spool.committed_offset)
            # Files may stay open for a whole period: prove now that the bucket takes writes,
            # so a setup error shows in the status within seconds, not at the period's end.
            sink.healthcheck()
        else:
            from logferry.sinks.kinesis import KinesisSink

            sink = KinesisSink(self.model, clients, stop=self.stop_event)
            self._read_pos = spool.committed_offset
        self._in_flight.clear()
        self._sink = sink

    def _drop_sink(self) -> None:
        self._sink = None
        self._read_pos = None
        self._in_flight.clear()
        self._units_seen = self._records_seen = 0  # a new sink counts from zero

    def _step(self, stopping: bool) -> bool:
        """Move one batch; returns True when anything was delivered or fed."""
        spool = self.spool()
        if self._retire_sink and self._sink is not None:
            self._retire_sink = False
            if self.kind == "s3":
                self._sink.flush()
                self._commit(spool)
            self._drop_sink()
        if self._sink is None:
            if spool.end_offset <= spool.committed_offset and not stopping:
                return False
            self._make_sink(spool)
        assert self._read_pos is not None
        chunks = spool.read(self._read_pos, READ_BYTES) if not self.stop_event.is_set() else []
        worked = bool(chunks)
        if self.kind == "s3":
            now = time.monotonic()
            for chunk in chunks:
                self._sink.feed(chunk)
                self._read_pos = chunk.end
                self._in_flight.append((chunk.end, chunk.lines, len(chunk.data)))
                self._last_data = now
            if stopping:
                self._sink.flush()
            elif self._read_pos >= spool.end_offset:
                # Only once caught up: while a backlog drains, files close at the period
                # boundaries of the data itself, not after every read (one object per period).
                self._sink.tick()
                idle_flush = self.service.config.server.idle_flush_seconds
                if idle_flush and now - self._last_data >= idle_flush:
                    self._sink.flush()
        elif chunks:
            try:
                self._sink.deliver(chunks)
                done = len(chunks)
            except LogferryError as exc:
                # Chunks fully accepted before the failure are acknowledged, never re-sent.
                done = int(getattr(exc, "completed_chunks", 0) or 0)
                self._accept_kinesis(spool, chunks[:done])
                raise
            self._accept_kinesis(spool, chunks[:done])
        return self._commit(spool) or worked

    def _accept_kinesis(self, spool: Spool, chunks: list[Any]) -> None:
        if not chunks:
            return
        self._read_pos = chunks[-1].end
        for chunk in chunks:
            self._in_flight.append((chunk.end, chunk.lines, len(chunk.data)))
        self._commit(spool)

    def _commit(self, spool: Spool) -> bool:
        durable = self._sink.durable_offset if self.kind == "s3" else (self._read_pos or 0)
        if durable <= spool.committed_offset:
            return False
        spool.commit(durable)
        if self.kind == "s3":
            self._sink.committed(durable)
        lines = nbytes = 0
        while self._in_flight and self._in_flight[0][0] <= durable:
            _, n, b = self._in_flight.popleft()
            lines += n
            nbytes += b
        self._delivered(lines, nbytes)
        return True

    def _delivered(self, lines: int, nbytes: int) -> None:
        sink_stats = getattr(self._sink, "stats", None)
        if self.kind == "s3":
            units = getattr(sink_stats, "objects", 0)
            added = max(0, units - self._units_seen)
            self._units_seen = units
            self.stats.objects += added
        else:  # Kinesis: records for the status, PutRecords calls for the units metric
            records = getattr(sink_stats, "records", 0)
            self.stats.records += max(0, records - self._records_seen)
            self._records_seen = records
            units = getattr(sink_stats, "calls", 0)
            added = max(0, units - self._units_seen)
            self._units_seen = units
        self.stats.lines_delivered += lines
        self.stats.bytes_delivered += nbytes
        self.stats.last_success = time.time()
        self._stats_dirty = True
        m = self.service.metrics
        m.delivered_lines.labels(*self.labels, self.kind).inc(lines)
        m.delivered_bytes.labels(*self.labels, self.kind).inc(nbytes)
        if added:
            m.delivered_units.labels(*self.labels, self.kind).inc(added)
        if self.state == "error":
            self.state = "active"

    _units_seen = 0
    _records_seen = 0
    _last_data = 0.0

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
        self._stats_dirty = True

    def _save_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._stats_dirty and (force or now - self._stats_saved > 2.0):
            self.service.store.save_stats(self.record.uid_prefix, asdict(self.stats))
            self._stats_dirty = False
            self._stats_saved = now

    def status(self) -> dict[str, Any]:
        spool = self.service.spools.get(self.record.uid_prefix)
        pending_bytes = spool.pending_bytes if spool else 0
        pending_lines = spool.pending_lines if spool else 0
        extra = {}
        if self._sink is not None and hasattr(self._sink, "status"):
            with contextlib.suppress(Exception):
                extra = dict(self._sink.status())
        return {
            "customer_id": self.record.customer_id,
            "name": self.record.name,
            "type": self.kind,
            "state": self.state,
            "lines": {
                "accepted": self.stats.lines_accepted,
                "delivered": self.stats.lines_delivered,
                "pending": pending_lines,
            },
            "bytes": {
                "accepted": self.stats.bytes_accepted,
                "delivered": self.stats.bytes_delivered,
                "pending": pending_bytes,
            },
            "objects" if self.kind == "s3" else "records": (
                self.stats.objects if self.kind == "s3" else self.stats.records
            ),
            "last_success": self.stats.last_success,
            "last_error": self.last_error,
            "sink": extra,
        }


def model_for(record: EndpointRecord) -> S3Endpoint | KinesisEndpoint:
    cls = S3Endpoint if record.type == "s3" else KinesisEndpoint
    return cls.model_validate({**record.config, "name": record.name})
