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
  of retries" loses data; Fluent Bit re-sends whole chunks and duplicates them). `deliver` returns
  only when Kinesis has accepted every line; a setup error (access denied, stream missing, KMS)
  raises `SetupError` and the caller keeps its chunks.
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

import heapq
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import asdict, dataclass
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from logferry.aws.clients import AwsClients
from logferry.errors import AwsError, AwsErrorInfo, LogferryError, SetupError, TransientError
from logferry.sinks.aws_errors import classify, is_aws_exception
from logferry.sinks.backoff import Backoff, wait
from logferry.sinks.base import SinkCounters
from logferry.sinks.kinesis_batch import MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL, Batch, Progress
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.sinks.kinesis_records import Record, RecordBuilder
from logferry.sinks.pacing import ShardPacer, ThrottleMonitor, shared_pacer
from logferry.sinks.shard_map import ShardMap, load_shard_map
from logferry.spool.chunk import Chunk

DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
"""Kinesis's default record limit (data + partition key)."""
THROTTLED = "ProvisionedThroughputExceededException"
INTERNAL = "InternalFailure"

_WAIT_SLICE = 0.5
DEFAULT_MAX_HELD_BYTES = 16 * 1024 * 1024
"""Record bytes one sink holds (fed, not yet accepted) before it stops asking for data."""
IN_FLIGHT_POLL = 1.0
"""While calls are in flight, `pump` asks to be called again after at most this long even if
no completion wakes the worker: a safety net only (the worker clears its wake-up before each
step, so a completion during the step is not lost)."""


@dataclass(eq=False)
class _InFlight:
    """A PutRecords call running on the I/O pool."""

    batch: Batch
    future: Future[dict[str, Any]]


class DeliveryInterrupted(LogferryError):
    """`stop` was set while `deliver` waited (retry backoff or pacing). Nothing is lost: the
    caller keeps the chunks; the first `completed_chunks` of them were fully accepted."""

    def __init__(self, message: str, *, completed_chunks: int, pending_records: int) -> None:
        super().__init__(message, fix="None needed: deliver the remaining chunks again later.")
        self.completed_chunks = completed_chunks
        self.pending_records = pending_records


class KinesisSetupError(SetupError):
    """A SetupError raised by `deliver`, with how far delivery got (`completed_chunks`)."""

    def __init__(
        self, message: str, info: AwsErrorInfo, *, fix: str | None, completed_chunks: int
    ) -> None:
        super().__init__(message, info, fix=fix)
        self.completed_chunks = completed_chunks


@dataclass
class KinesisSinkStats:
    """Counters since the sink was created (records = what Kinesis accepted)."""

    in_flight_calls: int = 0
    """PutRecords calls sent and not yet answered (a gauge)."""
    max_in_flight_seen: int = 0
    """The most calls this sink had in flight at once."""

    records: int = 0
    """Records accepted by Kinesis."""
    lines: int = 0
    """Lines accepted (a packed record holds several; a split line counts once, at its end)."""
    bytes: int = 0
    """Accepted record bytes, data plus partition key (what Kinesis meters)."""
    calls: int = 0
    """PutRecords calls made."""
    failed_calls: int = 0
    """PutRecords calls that failed as a whole (transient) and were repeated."""
    retried_records: int = 0
    """Records sent again after a per-record or whole-call failure."""
    throttled: int = 0
    """Records answered ProvisionedThroughputExceededException."""
    internal_failures: int = 0
    """Records answered InternalFailure."""
    other_record_errors: int = 0
    """Records answered with any other per-record error code (also retried)."""
    oversize_lines: int = 0
    """Lines larger than one record, split or truncated per the endpoint's `oversize`."""
    split_records: int = 0
    """Records that carry a piece of a split line."""
    truncated_bytes: int = 0
    """Bytes cut off oversize lines (oversize = "truncate")."""
    misrouted_records: int = 0
    """Records that landed on another shard than aimed at (stale shard map)."""
    shard_map_refreshes: int = 0
    paced_seconds: float = 0.0
    """Time spent holding calls so shards stay within 1,000 records/s and 1 MB/s."""
    backoff_seconds: float = 0.0
    """Time spent waiting before retries."""
    last_success: float | None = None
    """Unix time of the last PutRecords call that had at least one record accepted."""
    last_error: str | None = None
    last_error_at: float | None = None


class KinesisSink:
    """Delivers chunks to one Kinesis endpoint. One `deliver` runs at a time (calls from several
    threads are serialised); `status`, `stats` and `healthcheck` may be used from any thread.

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
    ) -> None:
        self.endpoint = endpoint
        self.stream_arn = endpoint.stream_arn()
        self.stats = KinesisSinkStats()
        self._clients = clients
        self._clock = clock
        self._sleep = sleep
        self._stop = stop
        self._hostname = hostname
        self._rng = rng or random.Random()
        self._record_backoff = Backoff(*self.record_backoff, rng=self._rng)
        self._call_backoff = Backoff(*self.call_backoff, rng=self._rng)
        self._pacer_given = pacer
        self._monitor = ThrottleMonitor(clock=clock)
        self._deliver_lock = threading.Lock()
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
        self._max_in_flight = max_in_flight or endpoint.max_in_flight_calls
        if io_executor is None:
            self._max_in_flight = 1
        # Twice what the calls in flight carry: calls answered out of order (a slow head) still
        # leave room for full 500-record calls; inline this is the historical 1,000.
        self._max_outstanding = max_outstanding or 2 * self._max_in_flight * MAX_RECORDS_PER_CALL
        self._max_held_bytes = max_held_bytes
        self._in_flight: list[_InFlight] = []
        self._shard_in_flight: dict[str, tuple[int, int]] = {}
        """Shard id → (records, bytes) in calls still in flight."""
        self._answered = threading.Event()
        self._committed = 0

    # --- public API -----------------------------------------------------------------------------

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

    def deliver(self, chunks: list[Chunk]) -> None:
        """Feed `chunks` and return once Kinesis has accepted every line (a blocking driver
        over the `Sink` interface, for tools and tests; the service's worker pumps instead).

        Raises `KinesisSetupError` (a SetupError) when the customer's setup prevents delivery and
        `DeliveryInterrupted` when `stop` is set during a wait; in both cases the records stay
        queued, the exception's `completed_chunks` says how many leading chunks were fully
        accepted, and calling `deliver` again with the same chunks carries on (lines already
        fed are not fed twice).
        """
        if not chunks:
            return
        with self._deliver_lock:
            for chunk in chunks:
                self.feed(chunk)
            failures = 0
            while True:
                try:
                    delay = self.pump(caught_up=True)
                    failures = 0
                except SetupError as exc:
                    raise KinesisSetupError(
                        exc.message,
                        exc.info,
                        fix=exc.fix,
                        completed_chunks=self._completed(chunks),
                    ) from exc
                except TransientError:
                    failures += 1
                    delay = self._call_backoff.delay(failures - 1)
                if delay is None:
                    return
                if self._in_flight and not failures:
                    # Calls on the I/O pool: wait for an answer (or the pacing delay).
                    if self._stop is not None and self._stop.is_set():
                        raise self._interrupted(chunks)
                    self._answered.wait(delay)
                    continue
                counter = "backoff_seconds" if failures else "paced_seconds"
                self._wait(delay, chunks, counter)

    # --- the Sink interface (see sinks.base) -------------------------------------------------

    kind = "kinesis"

    def open(self, committed: int = 0) -> int:
        """Kinesis keeps no journal: after a crash the spool replays from its committed
        position, which is the first line not yet accepted when it was written."""
        self._committed = committed
        if self._progress.fed_end is None or self._progress.outstanding == 0:
            self._progress = Progress()
            self._progress.fed_end = committed
        return self._progress.fed_end if self._progress.fed_end is not None else committed

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
        self._answered.clear()
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
        delay = self._pacer.reserve(batch.demand)
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
        self._answered.set()
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

    def _completed(self, chunks: list[Chunk]) -> int:
        durable = self.durable
        return sum(1 for c in chunks if c.end <= durable)

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

    # --- one call ---------------------------------------------------------------------------

    def _next_batch(self, state: Progress) -> Batch:
        shards = self._map
        assert shards is not None
        batch = Batch(
            max(MAX_BYTES_PER_CALL, self._max_record_bytes),
            self._pacer.records_per_second,
            self._pacer.bytes_per_second,
            room=self._room,
        )
        now = self._clock()
        while state.retry and state.retry[0][0] <= now:
            due, seq, record = state.retry[0]
            if not self._place(batch, shards, record):
                return batch
            heapq.heappop(state.retry)
            batch.taken_retry.append((due, seq, record))
        # Bound what a crash can replay: never run more than `max_outstanding` records ahead
        # of the first one not yet accepted (a record throttled again and again holds the rest).
        room = self._max_outstanding - (len(state.units) - len(state.fresh))
        while state.fresh and room > 0:
            if not self._place(batch, shards, state.fresh[0]):
                break
            batch.taken_fresh.append(state.fresh.popleft())
            room -= 1
        return batch

    def _room(self, shard_id: str) -> tuple[int, int]:
        """What a shard takes now: its pacing window's room, and never more than one second's
        quota in flight. A call slower than a second would otherwise let the window send more
        behind it, and a crash replays whatever was in flight."""
        records, size = self._pacer.room(shard_id)
        busy_records, busy_bytes = self._shard_in_flight.get(shard_id, (0, 0))
        pacer = self._pacer
        return (
            min(records, max(0, pacer.records_per_second - busy_records)),
            min(size, max(0, pacer.bytes_per_second - busy_bytes)),
        )

    def _unwind(self, batch: Batch, state: Progress) -> None:
        """Put a batch that must wait back where its records came from (order kept)."""
        state.fresh.extendleft(reversed(batch.taken_fresh))
        for item in batch.taken_retry:
            heapq.heappush(state.retry, item)

    def _place(self, batch: Batch, shards: ShardMap, record: Record) -> bool:
        shard = shards.peek() if record.sticky is None else shards.sticky(record.sticky)
        if not batch.fits(record, shard):
            return False
        batch.add(record, shard, shard.random_key(self._rng))
        if record.sticky is None:
            shards.advance()
        return True

    def _transient_or_raise(self, exc: Exception, operation: str) -> TransientError:
        """Classify a failed call: return (and note) a transient error, raise anything else."""
        if not is_aws_exception(exc):
            raise exc
        error = self._classify(exc, operation)
        if not isinstance(error, TransientError):
            if error is exc:
                raise exc
            raise error from exc
        self._note_transient(error)
        return error

    def _send(self, batch: Batch, state: Progress) -> None:
        """Send one call: inline (settled before returning) or on the I/O pool (settled by the
        `_harvest` of a later pump)."""
        entries = [
            {"Data": record.data, "PartitionKey": record.key, "ExplicitHashKey": hash_key}
            for record, _, hash_key in batch.items
        ]
        self.stats.calls += 1
        client = self.client
        future: Future[dict[str, Any]]
        if self._executor is None:
            future = Future()
            try:
                future.set_result(client.put_records(StreamARN=self.stream_arn, Records=entries))
            except Exception as exc:
                future.set_exception(exc)
            self._finish(batch, future, state)
            return
        try:
            future = self._executor.submit(
                client.put_records, StreamARN=self.stream_arn, Records=entries
            )
        except RuntimeError as exc:  # the pool was shut down: the service is stopping
            self.stats.calls -= 1
            self._unwind(batch, state)
            raise TransientError(
                "the AWS I/O pool is shut down (the service is stopping); the records stay "
                "spooled.",
                AwsErrorInfo("ShuttingDown", service="kinesis", operation="PutRecords"),
            ) from exc
        self._in_flight.append(_InFlight(batch, future))
        self._count_in_flight(batch, 1)
        self.stats.in_flight_calls = len(self._in_flight)
        self.stats.max_in_flight_seen = max(self.stats.max_in_flight_seen, len(self._in_flight))
        future.add_done_callback(self._call_done)

    def _finish(self, batch: Batch, future: Future[dict[str, Any]], state: Progress) -> None:
        """Settle one finished call: count what was accepted, queue what failed."""
        try:
            response = future.result()
        except CancelledError as exc:  # the I/O pool was shut down before the call ran
            self._unwind(batch, state)
            raise TransientError(
                "a PutRecords call was cancelled (the service is stopping); its records stay "
                "spooled.",
                AwsErrorInfo("ShuttingDown", service="kinesis", operation="PutRecords"),
            ) from exc
        except Exception as exc:
            # Nothing is known to be written: the records wait for the next pump, in order;
            # the worker's backoff (it gets the error) is the wait.
            self._unwind(batch, state)
            self.stats.retried_records += len(batch.items)
            error = self._transient_or_raise(exc, "PutRecords")
            self.stats.failed_calls += 1
            raise error from exc
        results = response.get("Records", [])
        if len(results) != len(batch.items):
            # Never seen from AWS; without a 1:1 answer nothing is known to be written.
            error = TransientError(
                f"Kinesis PutRecords answered {len(results)} results for "
                f"{len(batch.items)} records.",
                AwsErrorInfo("MismatchedResponse", service="kinesis", operation="PutRecords"),
            )
            self._note_transient(error)
            self._retry_later([r for r, _, _ in batch.items], state, backoff=True)
            return
        self._settle(batch, results, state)

    def _settle(self, batch: Batch, results: list[dict[str, Any]], state: Progress) -> None:
        """Count accepted records; queue only the failed ones for a re-send."""
        throttled = accepted = misrouted = 0
        failed: list[Record] = []
        setup: SetupError | None = None
        for (record, shard, _), result in zip(batch.items, results, strict=True):
            code = result.get("ErrorCode")
            if code:
                if code == THROTTLED:
                    self.stats.throttled += 1
                    throttled += 1
                elif code == INTERNAL:
                    self.stats.internal_failures += 1
                else:
                    self.stats.other_record_errors += 1
                    error = self._classify_record_error(code, result.get("ErrorMessage", ""))
                    if isinstance(error, SetupError):
                        setup = error
                self._last_record_error = f"{code}: {result.get('ErrorMessage', '')}".rstrip(": ")
                failed.append(record)
                continue
            accepted += 1
            if result.get("ShardId") != shard.shard_id:
                misrouted += 1
            self._accept(record, state)
        self._retry_later(failed, state, backoff=True)
        if misrouted:
            self.stats.misrouted_records += misrouted
            self._stale = True
        elif accepted:
            self._stale_refreshed = False  # the map is confirmed by Kinesis's answers
        self._monitor.note(len(batch.items), batch.size, throttled)
        if accepted:
            self.stats.last_success = time.time()
            self._error = None
        self._retrying = accepted < len(batch.items)
        if setup is not None:
            self._set_error(setup)
            raise setup

    def _accept(self, record: Record, state: Progress) -> None:
        state.accepted(record)
        stats = self.stats
        stats.records += 1
        stats.lines += record.lines
        stats.bytes += record.size
        if record.oversize:
            stats.oversize_lines += 1
        if record.split:
            stats.split_records += 1
        stats.truncated_bytes += record.truncated

    def _retry_later(self, records: list[Record], state: Progress, *, backoff: bool) -> None:
        """Queue failed records for a re-send after one shared full-jitter delay (growing with
        their attempts), so they travel together instead of as many one-record calls."""
        if not records:
            return
        delay = 0.0
        if backoff:
            delay = self._record_backoff.delay(max(r.attempts for r in records))
        due = self._clock() + delay
        for record in records:
            record.attempts += 1
            state.later(due, record)
        self.stats.retried_records += len(records)

    def _wait(self, seconds: float, chunks: list[Chunk], counter: str) -> None:
        """Sleep in slices, watching `stop`; raise DeliveryInterrupted when it is set."""
        if seconds <= 0:
            return
        start = self._clock()
        remaining = seconds
        try:
            while remaining > 0:
                step = min(remaining, _WAIT_SLICE)
                if not wait(step, stop=self._stop, sleep=self._sleep):
                    raise self._interrupted(chunks)
                remaining -= step
        finally:
            elapsed = max(0.0, self._clock() - start)
            setattr(self.stats, counter, getattr(self.stats, counter) + elapsed)

    def _interrupted(self, chunks: list[Chunk]) -> DeliveryInterrupted:
        done = self._completed(chunks)
        pending = self._progress.outstanding
        return DeliveryInterrupted(
            f"Delivery to {self.stream_arn} stopped while waiting (retry backoff or shard "
            f"pacing): {pending} records not yet accepted, {done} leading chunks complete.",
            completed_chunks=done,
            pending_records=pending,
        )

    # --- shard map ------------------------------------------------------------------------------

    def _refresh_if_due(self) -> None:
        now = self._clock()
        assert self._map is not None
        if self._stale:
            if self._stale_refreshed and now - self._last_refresh < self.min_refresh_gap:
                return
            self._stale_refreshed = True
            self._refresh()
        elif now - self._map.loaded_at >= self.refresh_interval:
            self._stale_refreshed = False
            self._refresh()

    def _refresh(self) -> None:
        """ListShards now; a transient failure keeps the old map, or raises when there is none
        (the worker backs off and pumps again)."""
        self._last_refresh = self._clock()
        try:
            found = load_shard_map(
                self.client,
                self.stream_arn,
                now=self._clock(),
                page_size=self.list_shards_page_size,
            )
            if found is None:
                raise self._no_open_shards()
        except Exception as exc:
            error = self._transient_or_raise(exc, "ListShards")
            if self._map is None:
                raise error from exc
            return
        self._map = found
        self._stale = False
        self._pacer.retain(found.ids())
        self.stats.shard_map_refreshes += 1
        if self._describe != "denied":
            self._describe_stream()

    def _describe_stream(self) -> None:
        """Learn MaxRecordSizeInKiB if DescribeStreamSummary is allowed (it is not in the guide's
        policy: a denial is remembered and never asked again, so CloudTrail is not flooded)."""
        try:
            summary = self.client.describe_stream_summary(StreamARN=self.stream_arn)[
                "StreamDescriptionSummary"
            ]
        except Exception as exc:
            if not is_aws_exception(exc):
                raise
            error = self._classify(exc, "DescribeStreamSummary")
            denied = isinstance(error, SetupError) and error.code.startswith("AccessDenied")
            self._describe = "denied" if denied else "failed"  # failed: asked again next time
            return
        self._describe = "allowed"
        kib = summary.get("MaxRecordSizeInKiB")
        self._max_record_bytes = int(kib) * 1024 if kib else DEFAULT_MAX_RECORD_BYTES
        self._stream_summary = {
            k: summary.get(k)
            for k in ("StreamStatus", "StreamModeDetails", "EncryptionType", "OpenShardCount")
        }

    def _no_open_shards(self) -> TransientError:
        return TransientError(
            f"Kinesis stream {self.stream_arn} has no open shard (it is being created or "
            "resharded).",
            AwsErrorInfo(
                "NoOpenShards",
                service="kinesis",
                operation="ListShards",
                region=self.endpoint.region,
            ),
            fix="None needed if it passes: logferry lists the shards again.",
        )

    # --- errors ---------------------------------------------------------------------------------

    def _classify(self, exc: BaseException, operation: str) -> AwsError:
        """An AWS exception (see `is_aws_exception`) as SetupError / TransientError."""
        error = classify(
            exc,
            service="kinesis",
            operation=operation,
            region=self.endpoint.region,
            resource=self.stream_arn,
            target=self.stream_arn,
        )
        if isinstance(error, SetupError) and error.code in _KINESIS_TRANSIENT:
            return TransientError(error.message, error.info, fix=_KINESIS_TRANSIENT[error.code])
        return error

    def _classify_record_error(self, code: str, message: str) -> AwsError:
        return classify(
            ClientError({"Error": {"Code": code, "Message": message}}, "PutRecords"),
            service="kinesis",
            operation="PutRecords",
            region=self.endpoint.region,
            resource=self.stream_arn,
            target=self.stream_arn,
        )

    def _note_transient(self, error: AwsError) -> None:
        self._retrying = True
        self.stats.last_error = str(error)
        self.stats.last_error_at = time.time()

    def _set_error(self, error: AwsError) -> None:
        self._error = error
        self.stats.last_error = str(error)
        self.stats.last_error_at = time.time()


_KINESIS_TRANSIENT: dict[str, str] = {
    "ResourceInUseException": "None needed: the stream is being created or updated; logferry "
    "retries.",
    "ExpiredNextTokenException": "None needed: logferry lists the shards again from the start.",
}
"""Kinesis codes the shared classifier treats as setup errors but that pass by themselves."""
