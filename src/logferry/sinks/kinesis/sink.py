"""The Kinesis delivery engine: chunks of lines in, every line accepted by PutRecords out.

Roles, as in Vector's sinks: the endpoint config (`kinesis_config`), the request builder
(`kinesis_records`: lines → records), one call's assembly and the records not yet accepted
(`kinesis_batch`), the shard map (`shard_map`: where each record goes), pacing (`pacing`: never
faster than a shard accepts), and the service (`KinesisSink`, here: keep up to `max_in_flight_calls`
PutRecords calls in flight on the service's shared I/O pool, harvest the finished ones on the
next `pump`, re-send only the records that failed, for as long as it takes, and say when to pump
again instead of sleeping).

Guarantees:

- Nothing is dropped. Records answered `ProvisionedThroughputExceededException` or
  `InternalFailure` (or any other per-record error) are re-sent alone, each after its own capped
  exponential backoff with full jitter, and there is no attempt limit (Fastly's "limited number
  of retries" loses data; Fluent Bit re-sends whole chunks and duplicates them). `holds_data`
  stays True until Kinesis has accepted every line; a setup error (access denied, stream
  missing, KMS) raises `SetupError` from `pump` and the spool keeps the lines.
- Records spread exactly evenly over the open shards (round-robin with an `ExplicitHashKey`
  inside the chosen shard's range), following splits, merges and UpdateShardCount: a response
  whose `ShardId` is not the shard we aimed at triggers a fresh ListShards.
- Only PutRecords and ListShards are called (the guide's permission policy), plus
  DescribeStreamSummary with each shard listing to learn a larger `MaxRecordSizeInKiB`; its
  AccessDenied (the guide's policy) only means the default 1 MiB limit, and it is not asked again.

- At least once, duplicates bounded by what was in flight: `durable` is the first line not yet
  accepted and the worker commits the spool there after every pump; the sink never runs more
  than `max_outstanding` records (default `2 × max_in_flight_calls × 500`) ahead of it.
  Partition keys name positions (see `kinesis_records`) and replays are byte-identical, so a
  consumer can drop duplicates by key.
- Several calls in flight, throttled records retried alone: a call's records are booked in the
  stream's shared pacer when it is sent, and a record Kinesis refuses waits for its own backoff
  while later records keep going (up to `max_outstanding` ahead of the first one not accepted).
  So records reach a shard roughly, not strictly, in log order; the partition key's position is
  the order (docs/performance.md, "Kinesis ordering").
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import asdict
from typing import Any

from botocore.client import BaseClient

from logferry.aws.clients import AwsClients
from logferry.errors import AwsError, SetupError
from logferry.sinks.aws_errors import is_aws_exception
from logferry.sinks.backoff import Backoff
from logferry.sinks.base import SinkCounters
from logferry.sinks.kinesis import calls, errors, shards
from logferry.sinks.kinesis.calls import InFlight
from logferry.sinks.kinesis.shards import DEFAULT_MAX_RECORD_BYTES
from logferry.sinks.kinesis.stats import KinesisSinkStats
from logferry.sinks.kinesis_batch import MAX_RECORDS_PER_CALL, Batch, Progress
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.sinks.kinesis_records import RecordBuilder
from logferry.sinks.pacing import (
    SHARD_RECORDS_PER_SECOND,
    ShardPacer,
    ThrottleMonitor,
    shared_pacer,
)
from logferry.sinks.shard_map import ShardMap, load_shard_map
from logferry.spool.chunk import Chunk

AUTO_MIN_CALLS = 8
AUTO_MAX_CALLS = 64
AUTO_CALLS_PER_SHARD = 4
"""Bounds of the default number of calls in flight (see `KinesisSink._max_in_flight`)."""
DEFAULT_MAX_HELD_BYTES = 16 * 1024 * 1024
"""Record bytes one sink holds (fed, not yet accepted) before it stops asking for data."""
IN_FLIGHT_POLL = 1.0
"""While calls are in flight, `pump` asks to be called again after at most this long even if
no completion wakes the worker: a safety net only (the worker clears its wake-up before each
step, so a completion during the step is not lost)."""


class KinesisSink:
    """Delivers chunks to one Kinesis endpoint; a `Sink`. One thread feeds and pumps it at a
    time; `status`, `stats` and `healthcheck` may be used from any thread. `stop` and `sleep`
    are kept for blocking drivers (the tests' `kinesis_helpers.deliver`, bench).

    With an `io_executor`, PutRecords calls run there, up to `max_in_flight` at once, and `pump`
    only harvests finished ones and sends more (it never waits for the network); `wake` is
    called from the I/O thread when a call finishes. Without one, each `pump` makes one call
    inline (tools and tests).
    """

    refresh_interval = 60.0
    """Seconds between periodic ListShards (besides the ones a stale map triggers)."""
    min_refresh_gap = 1.0
    """A map found stale is listed again at once; if the new one looks stale too (a reshard
    still in progress), further listings are this many seconds apart."""
    record_backoff = (0.1, 5.0)
    """(base, cap) seconds of the full-jitter backoff before a failed record is re-sent."""
    call_backoff = (0.25, 20.0)
    """(base, cap) seconds of the backoff after a whole call (or ListShards) failed."""
    list_shards_page_size = 1000

    def __init__(
        self,
        endpoint: KinesisEndpoint,
        clients: AwsClients,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        stop: threading.Event | None = None,
        hostname: str = socket.gethostname(),
        rng: random.Random | None = None,
        uid_prefix: str | None = None,
        max_outstanding: int | None = None,
        io_executor: Executor | None = None,
        wake: Callable[[], None] | None = None,
        max_in_flight: int | None = None,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        pacer: ShardPacer | None = None,
        holds: Callable[[], bool] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.stream_arn = endpoint.stream_arn()
        self.stats = KinesisSinkStats()
        self._clients = clients
        self._clock = clock
        self._sleep = sleep
        self._stop = stop
        self._holds = holds
        """SinkContext.holds: asked before every PutRecords leaves (`calls._send`)."""
        self._hostname = hostname
        self._rng = rng or random.Random()
        self._record_backoff = Backoff(*self.record_backoff, rng=self._rng)
        self._call_backoff = Backoff(*self.call_backoff, rng=self._rng)
        self._pacer_given = pacer
        self._monitor = ThrottleMonitor(clock=clock)
        self._map: ShardMap | None = None
        self._stale = False
        self._stale_refreshed = False
        self._last_refresh = float("-inf")
        self._max_record_bytes = DEFAULT_MAX_RECORD_BYTES
        self._describe: str = "not asked"
        self._stream_summary: dict[str, Any] = {}
        self._call_failures = 0
        self._error: AwsError | None = None
        self._retrying = False
        self._last_record_error: str | None = None
        self._builder = RecordBuilder(endpoint, hostname=hostname, uid_prefix=uid_prefix)
        self._progress = Progress()
        self._executor = io_executor
        self._wake = wake
        self._max_in_flight_given = max_in_flight or endpoint.max_in_flight_calls
        if io_executor is None:
            self._max_in_flight_given = 1
        self._max_outstanding_given = max_outstanding
        self._max_held_bytes = max_held_bytes
        self._in_flight: list[InFlight] = []
        self._shard_in_flight: dict[str, tuple[int, int]] = {}
        """Shard id → (records, bytes) in calls still in flight."""
        self.answered = threading.Event()
        """Set whenever a call finishes (cleared by each pump): what a driver without `wake`
        waits on."""
        self._committed = 0

    # --- public API -----------------------------------------------------------------------------

    @property
    def _max_in_flight(self) -> int:
        """Calls kept in flight at once: the endpoint's `max_in_flight_calls`, or by default
        enough for the stream that the pacer, not this cap, is the brake: AUTO_CALLS_PER_SHARD
        per open shard, so that calls of a few hundred records fill the one-second-per-shard
        bound on records in flight, at least AUTO_MIN_CALLS and at most AUTO_MAX_CALLS (the
        shared I/O pool's default size). At a 100 ms round trip 8 calls move at most 40,000
        records/s, half a 64-shard stream's quota; at 700 ms (the emulator on a loaded box)
        5,700/s, 70 % of an 8-shard one."""
        given = self._max_in_flight_given
        if given is not None:
            return given
        return max(AUTO_MIN_CALLS, min(AUTO_MAX_CALLS, AUTO_CALLS_PER_SHARD * self._shards()))

    def _shards(self) -> int:
        return len(self._map) if self._map is not None else 0

    @property
    def _max_outstanding(self) -> int:
        """Records run ahead of the first one not accepted (what a crash may replay): twice
        what the calls in flight carry, so calls answered out of order (a slow head) still
        leave room for full 500-record calls (inline this is the historical 1,000); with the
        default number of calls, two seconds of the stream's quota (at least 8,000), twice
        what the one-second-per-shard bound lets be in flight — never more than
        `2 × calls × 500`."""
        given = self._max_outstanding_given
        if given:
            return given
        calls = 2 * self._max_in_flight * MAX_RECORDS_PER_CALL
        if self._max_in_flight_given is not None:
            return calls
        quota = 2 * SHARD_RECORDS_PER_SECOND * self._shards()
        return min(calls, max(2 * AUTO_MIN_CALLS * MAX_RECORDS_PER_CALL, quota))

    @property
    def client(self) -> BaseClient:
        """The Kinesis client calls go through (cached by AwsClients; tests hook its events)."""
        return self._clients.client("kinesis", self.endpoint.region)

    @property
    def max_record_bytes(self) -> int:
        return self._max_record_bytes

    @property
    def _pacer(self) -> ShardPacer:
        """The stream's process-wide pacer (`shared_pacer`): shared with every other endpoint
        and every earlier sink object writing to the same stream through the same API URL."""
        pacer = self._pacer_given
        if pacer is None:
            key = (str(self.client.meta.endpoint_url), self.stream_arn)
            pacer = self._pacer_given = shared_pacer(key, clock=self._clock)
        return pacer

    @property
    def pacer(self) -> ShardPacer:
        return self._pacer

    # --- the Sink interface (see sinks.base) -------------------------------------------------

    kind = "kinesis"

    def open(self, committed: int = 0) -> int:
        """Kinesis keeps no journal: after a crash the spool replays from its committed
        position, which is the first line not yet accepted when it was written."""
        self._committed = committed
        if self._progress.fed_end is None or self._progress.outstanding == 0:
            self._progress = Progress()
            self._progress.fed_end = committed
        return self._progress.fed_end  # set just above when it was None

    def feed(self, chunk: Chunk) -> None:
        """Frame the chunk's lines into records (skipping lines already fed) and queue them."""
        progress = self._progress
        fed = progress.fed_end
        if fed is not None and chunk.end <= fed:
            return
        if fed is not None and chunk.start < fed:
            cut = fed - chunk.start
            if chunk.data[cut - 1] != 0x0A:
                raise ValueError(
                    f"feed position {fed} is not at a line boundary of chunk "
                    f"[{chunk.start}, {chunk.end})"
                )
            tail = chunk.data[cut:]
            chunk = Chunk(fed, chunk.end, chunk.accepted_at, tail, tail.count(b"\n"))
        self._builder.max_record_bytes = self._max_record_bytes
        progress.add(self._builder.build(chunk))
        progress.fed_end = chunk.end

    def wants_data(self) -> bool:
        progress = self._progress
        return (
            progress.outstanding < self._max_outstanding
            and progress.held_bytes < self._max_held_bytes
        )

    def pump(self, *, caught_up: bool = True) -> float | None:
        """Harvest finished calls, then send what is due (inline: one call; with an I/O pool:
        up to `max_in_flight` calls in flight); never sleeps or waits for the network.

        Returns 0.0 when more can go at once, the seconds until the next record may go (shard
        pacing, a record's retry backoff, or at most IN_FLIGHT_POLL while calls are in flight:
        their completion also calls `wake`), or None when every record fed was accepted.
        A whole-call failure raises TransientError (its records wait for the next pump).
        """
        try:
            return self._pump()
        except SetupError as exc:
            self._set_error(exc)
            raise

    def _pump(self) -> float | None:
        progress = self._progress
        self.answered.clear()
        self._harvest(progress)
        if not progress.outstanding:
            return None
        if self._map is None:
            self._refresh()
        self._refresh_if_due()
        if self._executor is None:
            return self._pump_inline(progress)
        delay: float | None = None
        while len(self._in_flight) < self._max_in_flight:
            delay = self._next_delay_or_send(progress)
            if delay is not None:
                break
        if self._in_flight:
            # A completion wakes the worker; the poll only bounds a missed wake-up.
            return IN_FLIGHT_POLL if delay is None else min(delay, IN_FLIGHT_POLL)
        if not progress.outstanding:
            return None
        return delay

    def _pump_inline(self, progress: Progress) -> float | None:
        """One call per pump, made on the calling thread (no I/O pool)."""
        delay = self._next_delay_or_send(progress)
        if delay is not None:
            return delay
        if not progress.outstanding:
            return None
        if progress.fresh or (progress.retry and progress.retry[0][0] <= self._clock()):
            return 0.0
        return max(progress.retry[0][0] - self._clock(), 0.001)

    def _next_delay_or_send(self, progress: Progress) -> float | None:
        """Build and send one call; None when it was sent, else the seconds until one can go
        (None too when nothing is left to send but calls are in flight)."""
        batch = self._next_batch(progress)
        if not batch.items:
            if batch.paced is not None:
                shard_id, demand = batch.paced  # the next record waits for its shard's window
                delay = self._pacer.delay({shard_id: demand})
                if delay <= 0 and shard_id in self._shard_in_flight:
                    return IN_FLIGHT_POLL  # held by its calls in flight: their answer wakes us
                return max(delay, 0.001)
            if progress.retry:
                return max(progress.retry[0][0] - self._clock(), 0.001)
            assert self._in_flight, "records outstanding but neither sent nor queued"
            return IN_FLIGHT_POLL
        if self._executor is None:
            delay = self._pacer.reserve(batch.demand)
        else:
            booked = self._pacer.hold(batch.demand)  # its second starts when it leaves
            if isinstance(booked, float):
                delay = booked
            else:
                delay, batch.booking = 0.0, booked
        if delay > 0:
            self._unwind(batch, progress)
            return delay
        self._send(batch, progress)
        return None

    def _harvest(self, progress: Progress) -> None:
        """Settle every call that has finished; raise the first failure once all are settled
        (records of a failed call wait for the next pump, so nothing is lost by raising)."""
        if not self._in_flight:
            return
        done = [c for c in self._in_flight if c.future.done()]
        if not done:
            return
        self._in_flight = [c for c in self._in_flight if c not in done]
        for call in done:
            self._count_in_flight(call.batch, -1)
        self.stats.in_flight_calls = len(self._in_flight)
        first: BaseException | None = None
        # Newest first: a failed call's records go back to the front of the queue, so the
        # oldest failed call ends up first and log order is kept among them.
        for call in reversed(done):
            try:
                self._finish(call.batch, call.future, progress)
            except Exception as exc:
                if first is None or (
                    isinstance(exc, SetupError) and not isinstance(first, SetupError)
                ):
                    first = exc
        if first is not None:
            raise first

    def _count_in_flight(self, batch: Batch, sign: int) -> None:
        busy = self._shard_in_flight
        for shard_id, (records, size) in batch.demand.items():
            had_records, had_bytes = busy.get(shard_id, (0, 0))
            now_records, now_bytes = had_records + sign * records, had_bytes + sign * size
            if now_records <= 0:
                busy.pop(shard_id, None)
            else:
                busy[shard_id] = (now_records, now_bytes)

    def _call_done(self, _future: Future[dict[str, Any]]) -> None:
        """On the I/O thread: a call finished; have the sink pumped again now."""
        self.answered.set()
        if self._wake is not None:
            self._wake()

    def flush(self) -> None:
        """Records go out as fast as the shards allow anyway; nothing to close."""

    @property
    def durable(self) -> int:
        return self._progress.durable(self._committed)

    def committed(self, position: int) -> None:
        self._committed = max(self._committed, position)

    def holds_data(self) -> bool:
        return self._progress.outstanding > 0

    def discard(self) -> None:
        """Records already accepted stay in the stream (they are the customer's); unsent ones
        are dropped with the endpoint (calls in flight finish unobserved)."""
        self._progress = Progress()
        self._in_flight = []
        self._shard_in_flight = {}
        self.stats.in_flight_calls = 0

    def counters(self) -> SinkCounters:
        s = self.stats
        return SinkCounters(
            units=s.calls, records=s.records, retries=s.retried_records + s.failed_calls
        )

    def healthcheck(self) -> None:
        """List the stream's shards with the endpoint's role: proves the role, the stream and
        kinesis:ListShards (a denial names that action). Raises SetupError / TransientError."""
        try:
            found = load_shard_map(
                self.client,
                self.stream_arn,
                now=self._clock(),
                page_size=self.list_shards_page_size,
            )
        except Exception as exc:
            if not is_aws_exception(exc):
                raise
            error = self._classify(exc, "ListShards")
            if isinstance(error, SetupError):
                self._set_error(error)
            if error is exc:
                raise
            raise error from exc
        if found is None:
            raise self._no_open_shards()

    def status(self) -> dict[str, Any]:
        """What the endpoint's status page shows; safe to call from any thread."""
        current = self._map
        estimate = self._monitor.estimate(len(current)) if current else None
        error = self._error
        if error is not None:
            state = "error"
        elif self._retrying:
            state = "retrying"
        elif self.stats.last_success is None:
            state = "idle"
        else:
            state = "ok"
        return {
            "state": state,
            "stream_arn": self.stream_arn,
            "error": (
                None
                if error is None
                else {"code": error.code, "message": error.message, "fix": error.fix}
            ),
            "open_shards": len(current) if current else None,
            "shard_ids": current.ids() if current else [],
            "closed_shards": current.closed if current else None,
            "max_record_bytes": self._max_record_bytes,
            "describe_stream_summary": self._describe,
            "stream": dict(self._stream_summary),
            "under_provisioned": estimate.message() if estimate else None,
            "last_record_error": self._last_record_error,
            "max_in_flight_calls": self._max_in_flight,
            "stats": asdict(self.stats),
        }

    # --- methods defined by role in their own modules (see the package docstring) ---

    # calls
    _next_batch = calls._next_batch
    _room = calls._room
    _unwind = calls._unwind
    _place = calls._place
    _transient_or_raise = calls._transient_or_raise
    _send = calls._send
    _finish = calls._finish
    _settle = calls._settle
    _accept = calls._accept
    _retry_later = calls._retry_later

    # shards
    _refresh_if_due = shards._refresh_if_due
    _refresh = shards._refresh
    _describe_stream = shards._describe_stream
    _no_open_shards = shards._no_open_shards

    # errors
    _classify = errors._classify
    _classify_record_error = errors._classify_record_error
    _note_transient = errors._note_transient
    _set_error = errors._set_error
