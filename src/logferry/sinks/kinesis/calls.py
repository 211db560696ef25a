"""One PutRecords call: pick records per shard within pacing, send, settle each record's answer.

The request methods of `KinesisSink` (functions taking the sink as `self`, bound in its class
body so that mypy checks them against its attributes). A record Kinesis refuses is re-sent alone
after its own backoff (`sinks.backoff`); a whole call that fails transiently is repeated; a
response that names another shard than the one aimed at marks the shard map stale.
"""

from __future__ import annotations

import heapq
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logferry.errors import AwsErrorInfo, SetupError, TransientError
from logferry.sinks.aws_errors import is_aws_exception
from logferry.sinks.base import check_holds
from logferry.sinks.kinesis_batch import MAX_BYTES_PER_CALL, Batch, Progress
from logferry.sinks.kinesis_records import Record
from logferry.sinks.shard_map import ShardMap
from logferry.spool.errors import SpoolFenced

if TYPE_CHECKING:
    from logferry.sinks.kinesis.sink import KinesisSink

THROTTLED = "ProvisionedThroughputExceededException"
INTERNAL = "InternalFailure"


@dataclass(eq=False)
class InFlight:
    """A PutRecords call running on the I/O pool."""

    batch: Batch
    future: Future[dict[str, Any]]


def _next_batch(self: KinesisSink, state: Progress) -> Batch:
    shards = self._map
    assert shards is not None
    batch = Batch(
        max(MAX_BYTES_PER_CALL, self._max_record_bytes),
        self._pacer.burst_records,
        self._pacer.burst_bytes,
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


def _room(self: KinesisSink, shard_id: str) -> tuple[int, int]:
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


def _unwind(self: KinesisSink, batch: Batch, state: Progress) -> None:
    """Put a batch that must wait back where its records came from (order kept)."""
    state.fresh.extendleft(reversed(batch.taken_fresh))
    for item in batch.taken_retry:
        heapq.heappush(state.retry, item)


def _place(self: KinesisSink, batch: Batch, shards: ShardMap, record: Record) -> bool:
    shard = shards.peek() if record.sticky is None else shards.sticky(record.sticky)
    if not batch.fits(record, shard):
        return False
    batch.add(record, shard, shard.random_key(self._rng))
    if record.sticky is None:
        shards.advance()
    return True


def _transient_or_raise(self: KinesisSink, exc: Exception, operation: str) -> TransientError:
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


def _send(self: KinesisSink, batch: Batch, state: Progress) -> None:
    """Send one call: inline (settled before returning) or on the I/O pool (settled by the
    `_harvest` of a later pump)."""
    entries = [
        {"Data": record.data, "PartitionKey": record.key, "ExplicitHashKey": hash_key}
        for record, _, hash_key in batch.items
    ]
    holds, target = self._holds, self.stream_arn
    try:
        check_holds(holds, "PutRecords", target)
    except SpoolFenced:
        if batch.booking is not None:
            self._pacer.release(batch.booking)
        self._unwind(batch, state)  # back in order; the spool keeps them for the new owner
        raise
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
    pacer, booking = self._pacer, batch.booking

    def put_records() -> dict[str, Any]:
        """On the I/O thread: the call's second starts now, as it leaves (not when booked:
        it may have waited for a free thread)."""
        check_holds(holds, "PutRecords", target)  # it may have waited for a free thread
        if booking is not None:
            pacer.started(booking)
        result: dict[str, Any] = client.put_records(StreamARN=self.stream_arn, Records=entries)
        return result

    try:
        future = self._executor.submit(put_records)
    except RuntimeError as exc:  # the pool was shut down: the service is stopping
        self.stats.calls -= 1
        if booking is not None:
            pacer.release(booking)
        self._unwind(batch, state)
        raise TransientError(
            "the AWS I/O pool is shut down (the service is stopping); the records stay spooled.",
            AwsErrorInfo("ShuttingDown", service="kinesis", operation="PutRecords"),
        ) from exc
    self._in_flight.append(InFlight(batch, future))
    self._count_in_flight(batch, 1)
    self.stats.in_flight_calls = len(self._in_flight)
    self.stats.max_in_flight_seen = max(self.stats.max_in_flight_seen, len(self._in_flight))
    future.add_done_callback(self._call_done)


def _finish(
    self: KinesisSink, batch: Batch, future: Future[dict[str, Any]], state: Progress
) -> None:
    """Settle one finished call: count what was accepted, queue what failed."""
    try:
        response = future.result()
    except CancelledError as exc:  # the I/O pool was shut down before the call ran
        if batch.booking is not None:
            self._pacer.release(batch.booking)
        self._unwind(batch, state)
        raise TransientError(
            "a PutRecords call was cancelled (the service is stopping); its records stay spooled.",
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
            f"Kinesis PutRecords answered {len(results)} results for {len(batch.items)} records.",
            AwsErrorInfo("MismatchedResponse", service="kinesis", operation="PutRecords"),
        )
        self._note_transient(error)
        self._retry_later([r for r, _, _ in batch.items], state, backoff=True)
        return
    self._settle(batch, results, state)


def _settle(
    self: KinesisSink, batch: Batch, results: list[dict[str, Any]], state: Progress
) -> None:
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


def _accept(self: KinesisSink, record: Record, state: Progress) -> None:
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


def _retry_later(
    self: KinesisSink, records: list[Record], state: Progress, *, backoff: bool
) -> None:
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
