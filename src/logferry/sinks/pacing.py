"""Per-shard write pacing and the "under-provisioned" estimate for Kinesis.

A shard accepts 1,000 records and 1 MB per second. We keep what we send to each shard in a
sliding one-second window and hold a PutRecords call until every shard it touches has room. A
classic token bucket with a one-second burst lets up to *twice* the rate through in some
one-second window (a full bucket plus a second of refill), which is exactly what Kinesis throttles;
the window still allows a whole second's quota in one call (the burst) but never more than the
limit in any second. A single record larger than the byte limit (up to 10 MiB on large-record
streams) is let through alone on an idle shard and then holds the shard for as many seconds as
it is worth, so the average stays within the limit.

Several calls are kept in flight, and several endpoints (and every sink object an endpoint gets
across rebuilds) may write to one stream, so the pacer is shared: `shared_pacer` returns the one
`ShardPacer` of a stream (keyed by the Kinesis endpoint URL and the stream ARN, which names the
account and region), and `reserve` checks and books a call's demand atomically under its lock.

Kinesis meters a shard when a call *arrives*, and arrival is the moment the call left plus a
network delay that varies (and on a loaded sender, thread scheduling): a window that hands out
a whole second's quota at once repeats that burst every second, and a burst that arrives a few
ms early finds the shard's bucket not yet refilled (issue 31: 152 of 6,000 records throttled at
load 10). So a shard also takes at most half a second's quota (`BURST_QUOTA_SHARE`) in any
quarter second (`BURST_SPAN_SHARE`): the one-second window still allows the full rate, and the
shard's bucket keeps half a second of slack, which absorbs arrival jitter of up to ~250 ms.

A call counts from the moment it *leaves*, not from the moment it is booked: a call handed to a
busy I/O pool may wait there, and had its second started at booking it would end early and let
the next second's calls reach the shard less than a second after it. So `hold` books a call
whose second has not started yet (it counts against the window, with no end, until `started`
or for at most `PENDING_LIMIT`), and the I/O thread calls `started` just before sending: the
window then holds it for one second from there. Counting until the *answer* instead (the other
safe choice) would keep each record's room busy for a round trip plus a second, a ceiling of
1/(1 + RTT) of the quota (91 % at 100 ms, 59 % at 700 ms); counting from the start keeps the
ceiling at the quota whatever the round trip.

`ThrottleMonitor` turns persistent `ProvisionedThroughputExceededException` answers into the
status line "stream under-provisioned: N open shards, ≈M needed for the observed rate".
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

SHARD_RECORDS_PER_SECOND = 1_000
SHARD_BYTES_PER_SECOND = 1_000_000
PENDING_LIMIT = 60.0
"""Seconds a held call counts with no end before `started` (a call that never runs, e.g.
cancelled by a pool shutdown, must not hold its shards for ever)."""
PENDING_POLL = 0.05
"""When only calls not yet left stand in the way, ask again this soon (they leave as soon as
an I/O thread is free, and nothing wakes a sink when another sink's call leaves)."""
BURST_SPAN_SHARE = 0.25
BURST_QUOTA_SHARE = 0.5
"""At most half a second's quota in any quarter second (see the module docstring)."""


class _Entry:
    """One call's share of one shard's window; `expires` is when it stops counting, `left`
    when its call left (None while it waits for an I/O thread)."""

    __slots__ = ("bytes", "expires", "left", "records")

    def __init__(self, expires: float, records: int, size: int, left: float | None) -> None:
        self.expires = expires
        self.records = records
        self.bytes = size
        self.left = left

    def __lt__(self, other: _Entry) -> bool:
        return self.expires < other.expires


class Booking:
    """A call held in the pacer (`ShardPacer.hold`) until `ShardPacer.started`."""

    __slots__ = ("entries", "holds", "started")

    def __init__(self) -> None:
        self.entries: list[tuple[_Window, _Entry]] = []
        self.holds: list[float] = []
        """Per entry: seconds it counts once started (one second, more for oversize records)."""
        self.started = False


class _Window:
    """What was sent to one shard and still counts against its quota, in expiry order.

    An entry normally counts for `span` (one second) from the moment its call left. A single
    call larger than a whole second's quota (one record of up to 10 MiB) counts for
    proportionally longer, so that the average never exceeds the limit: 4 MB on a 1 MB/s shard
    blocks it for 4 s. An entry of a call not yet left counts until it is started.
    """

    __slots__ = ("bytes", "entries", "records")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.records = 0
        self.bytes = 0

    def expire(self, now: float) -> None:
        drop = 0
        for entry in self.entries:
            if entry.expires > now:
                break
            self.records -= entry.records
            self.bytes -= entry.bytes
            drop += 1
        if drop:
            del self.entries[:drop]

    def delay(
        self,
        now: float,
        records: int,
        size: int,
        limits: tuple[int, int],
        burst: tuple[float, int, int],
    ) -> float:
        """Seconds until `records`/`size` more fit both the one-second window and the burst
        window (0 when they fit now)."""
        return max(
            self._window_delay(now, records, size, limits),
            self._burst_delay(now, records, size, burst),
        )

    def _window_delay(self, now: float, records: int, size: int, limits: tuple[int, int]) -> float:
        max_records, max_bytes = limits
        # Anything larger than a whole window's quota goes alone on an empty window.
        need_records = min(records, max_records)
        need_bytes = min(size, max_bytes)
        have_records, have_bytes = self.records, self.bytes
        if have_records + need_records <= max_records and have_bytes + need_bytes <= max_bytes:
            return 0.0
        for entry in self.entries:
            have_records -= entry.records
            have_bytes -= entry.bytes
            if have_records + need_records <= max_records and have_bytes + need_bytes <= max_bytes:
                if entry.left is None:
                    return PENDING_POLL
                return max(0.0, entry.expires - now)
        return 0.0  # unreachable: an empty window always fits the capped demand

    def burst_use(self, now: float, span: float) -> list[_Entry]:
        """Entries that left within the last `span` seconds (or have not left yet), oldest
        first."""
        recent = [e for e in self.entries if e.left is None or e.left + span > now]
        recent.sort(key=lambda e: float("inf") if e.left is None else e.left)
        return recent

    def burst_sums(self, now: float, span: float) -> tuple[int, int]:
        """(records, bytes) of `burst_use`, without building and sorting the list: the pacer
        asks this for every shard of every call (at 64 shards the list and its sort took about
        15 % of the sink's own GIL samples, `bench/kinesis_pacer_model.py`)."""
        records = size = 0
        for e in self.entries:
            if e.left is None or e.left + span > now:
                records += e.records
                size += e.bytes
        return records, size

    def _burst_delay(
        self, now: float, records: int, size: int, burst: tuple[float, int, int]
    ) -> float:
        span, max_records, max_bytes = burst
        need_records = min(records, max_records)
        need_bytes = min(size, max_bytes)
        have_records, have_bytes = self.burst_sums(now, span)
        if have_records + need_records <= max_records and have_bytes + need_bytes <= max_bytes:
            return 0.0
        recent = self.burst_use(now, span)
        for entry in recent:
            have_records -= entry.records
            have_bytes -= entry.bytes
            if have_records + need_records <= max_records and have_bytes + need_bytes <= max_bytes:
                if entry.left is None:
                    return PENDING_POLL
                return max(0.0, entry.left + span - now)
        return 0.0  # unreachable: an empty burst window always fits the capped demand

    @staticmethod
    def hold(span: float, records: int, size: int, limits: tuple[int, int]) -> float:
        """Seconds an entry of `records`/`size` counts once its call has left."""
        return span * max(1.0, records / limits[0], size / limits[1])

    def add(self, entry: _Entry) -> None:
        bisect.insort(self.entries, entry)
        self.records += entry.records
        self.bytes += entry.bytes

    def move(self, entry: _Entry, expires: float) -> None:
        """Give `entry` a new end (its call has left), keeping expiry order."""
        for i, found in enumerate(self.entries):
            if found is entry:
                del self.entries[i]
                break
        else:
            # Held past PENDING_LIMIT and expired: it counts again, from now on.
            entry.expires = expires
            self.add(entry)
            return
        entry.expires = expires
        bisect.insort(self.entries, entry)

    def remove(self, entry: _Entry) -> None:
        for i, found in enumerate(self.entries):
            if found is entry:
                del self.entries[i]
                self.records -= entry.records
                self.bytes -= entry.bytes
                return


class ShardPacer:
    """Keeps every shard within `records_per_second` and `bytes_per_second` in any window.

    Thread-safe: every method takes the pacer's lock, so sinks on several delivery threads can
    share one pacer per stream (`shared_pacer`).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        records_per_second: int = SHARD_RECORDS_PER_SECOND,
        bytes_per_second: int = SHARD_BYTES_PER_SECOND,
        span: float = 1.0,
    ) -> None:
        self._clock = clock
        self._limits = (records_per_second, bytes_per_second)
        self._span = span
        self._burst = (
            span * BURST_SPAN_SHARE,
            int(records_per_second * BURST_QUOTA_SHARE),
            int(bytes_per_second * BURST_QUOTA_SHARE),
        )
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    @property
    def records_per_second(self) -> int:
        return self._limits[0]

    @property
    def bytes_per_second(self) -> int:
        return self._limits[1]

    @property
    def burst_records(self) -> int:
        """The most records one shard takes in any `BURST_SPAN_SHARE` of the span."""
        return self._burst[1]

    @property
    def burst_bytes(self) -> int:
        return self._burst[2]

    def delay(self, demand: Mapping[str, tuple[int, int]]) -> float:
        """Seconds to wait before sending `demand` (shard id → (records, bytes))."""
        with self._lock:
            return self._delay(self._clock(), demand)

    def _delay(self, now: float, demand: Mapping[str, tuple[int, int]]) -> float:
        worst = 0.0
        for shard_id, (records, size) in demand.items():
            window = self._windows.get(shard_id)
            if window is None:
                continue
            window.expire(now)
            worst = max(worst, window.delay(now, records, size, self._limits, self._burst))
        return worst

    def room(self, shard_id: str) -> tuple[int, int]:
        """(records, bytes) the shard can take right now without exceeding its one-second
        window or its burst window."""
        span, burst_records, burst_bytes = self._burst
        with self._lock:
            window = self._windows.get(shard_id)
            if window is None:
                return burst_records, burst_bytes
            now = self._clock()
            window.expire(now)
            used_records, used_bytes = window.burst_sums(now, span)
            return (
                max(0, min(self._limits[0] - window.records, burst_records - used_records)),
                max(0, min(self._limits[1] - window.bytes, burst_bytes - used_bytes)),
            )

    def commit(self, demand: Mapping[str, tuple[int, int]]) -> None:
        """Account for a call that is being sent now."""
        with self._lock:
            self._book(self._clock(), demand, started=True)

    def _book(self, now: float, demand: Mapping[str, tuple[int, int]], *, started: bool) -> Booking:
        booking = Booking()
        booking.started = started
        for shard_id, (records, size) in demand.items():
            window = self._windows.get(shard_id)
            if window is None:
                window = self._windows[shard_id] = _Window()
            window.expire(now)
            hold = window.hold(self._span, records, size, self._limits)
            entry = _Entry(
                now + (hold if started else hold + PENDING_LIMIT),
                records,
                size,
                now if started else None,
            )
            window.add(entry)
            booking.entries.append((window, entry))
            booking.holds.append(hold)
        return booking

    def reserve(self, demand: Mapping[str, tuple[int, int]]) -> float:
        """Book `demand` as leaving now if every shard has room now and return 0.0; else book
        nothing and return the seconds to wait. Atomic, so two sinks sharing the pacer never
        both take the last room of a shard (`room` alone is only a hint)."""
        with self._lock:
            now = self._clock()
            delay = self._delay(now, demand)
            if delay <= 0:
                self._book(now, demand, started=True)
            return delay

    def hold(self, demand: Mapping[str, tuple[int, int]]) -> Booking | float:
        """Like `reserve`, for a call that leaves later (on an I/O pool): book `demand` with no
        end yet and return the booking, or book nothing and return the seconds to wait. Call
        `started` when the call leaves: only then does its second begin."""
        with self._lock:
            now = self._clock()
            delay = self._delay(now, demand)
            if delay > 0:
                return delay
            return self._book(now, demand, started=False)

    def started(self, booking: Booking) -> None:
        """The booked call leaves now: it counts for one second (its hold) from now.
        Idempotent; safe from any thread."""
        with self._lock:
            if booking.started:
                return
            booking.started = True
            now = self._clock()
            for (window, entry), hold in zip(booking.entries, booking.holds, strict=True):
                entry.left = now
                window.move(entry, now + hold)

    def release(self, booking: Booking) -> None:
        """The booked call never left (unwound, or cancelled in the pool): give its room back."""
        with self._lock:
            if booking.started:
                return
            booking.started = True
            for window, entry in booking.entries:
                window.remove(entry)

    def retain(self, shard_ids: Iterable[str]) -> None:
        """Forget shards that are no longer open (after a reshard)."""
        keep = set(shard_ids)
        with self._lock:
            for shard_id in list(self._windows):
                if shard_id not in keep:
                    del self._windows[shard_id]


PacerKey = tuple[str, str]
"""(Kinesis endpoint URL, stream ARN): one stream as seen through one API endpoint."""

_PACERS: dict[tuple[PacerKey, Callable[[], float]], ShardPacer] = {}
_PACERS_LOCK = threading.Lock()


def shared_pacer(key: PacerKey, *, clock: Callable[[], float]) -> ShardPacer:
    """The process-wide pacer of one stream: every endpoint writing to it, and every sink object
    an endpoint gets across rebuilds, books its calls in the same windows.

    Keyed by the endpoint URL and the stream ARN (account, region, name) — and by `clock`, so
    that tests driving a fake clock never share windows with real time. A pacer is a few
    bytes per open shard; entries are kept for the life of the process (a rebuilt sink must
    find the windows its predecessor filled).
    """
    with _PACERS_LOCK:
        pacer = _PACERS.get((key, clock))
        if pacer is None:
            pacer = _PACERS[(key, clock)] = ShardPacer(clock=clock)
        return pacer


@dataclass(frozen=True)
class ProvisioningEstimate:
    open_shards: int
    needed_shards: int
    records_per_second: float
    bytes_per_second: float
    throttled_fraction: float

    def message(self) -> str:
        return (
            f"stream under-provisioned: {self.open_shards} open shards, "
            f"≈{self.needed_shards} needed for the observed rate "
            f"({self.records_per_second:,.0f} records/s, "
            f"{self.bytes_per_second / 1e6:,.2f} MB/s offered, "
            f"{self.throttled_fraction:.0%} of records throttled)"
        )


class ThrottleMonitor:
    """Estimates the shard count the offered load needs once throttling has lasted a while.

    Every PutRecords call is noted (records/bytes sent and how many were throttled). Throttling is
    *persistent* when throttled calls span at least `persist` seconds of the last `window`
    seconds and the latest one is recent. The estimate is the larger of (a) today's shard count
    scaled by the share of records Kinesis actually accepted and (b) the offered rate divided by
    one shard's limits, and always at least one more than today.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        window: float = 60.0,
        persist: float = 30.0,
        recent: float = 15.0,
        records_per_shard: int = SHARD_RECORDS_PER_SECOND,
        bytes_per_shard: int = SHARD_BYTES_PER_SECOND,
    ) -> None:
        self._clock = clock
        self._window = window
        self._persist = persist
        self._recent = recent
        self._per_shard = (records_per_shard, bytes_per_shard)
        self._calls: deque[tuple[float, int, int, int]] = deque()
        self._lock = threading.Lock()  # noted by the delivery thread, read by status pages

    def note(self, records: int, size: int, throttled: int) -> None:
        now = self._clock()
        with self._lock:
            self._calls.append((now, records, size, throttled))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._calls and self._calls[0][0] < now - self._window:
            self._calls.popleft()

    def estimate(self, open_shards: int) -> ProvisioningEstimate | None:
        """The estimate while throttling is persistent, else None."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            calls = list(self._calls)
        throttled_at = [t for t, _, _, throttled in calls if throttled]
        if not throttled_at:
            return None
        if throttled_at[-1] - throttled_at[0] < self._persist:
            return None
        if now - throttled_at[-1] > self._recent:
            return None
        sent = sum(c[1] for c in calls)
        size = sum(c[2] for c in calls)
        throttled = sum(c[3] for c in calls)
        span = max(1.0, min(self._window, now - calls[0][0]))
        rps, bps = sent / span, size / span
        accepted_share = max(0.01, (sent - throttled) / sent) if sent else 1.0
        by_share = math.ceil(open_shards / accepted_share)
        by_rate = math.ceil(max(rps / self._per_shard[0], bps / self._per_shard[1]))
        needed = max(by_share, by_rate, open_shards + 1)
        return ProvisioningEstimate(
            open_shards=open_shards,
            needed_shards=needed,
            records_per_second=rps,
            bytes_per_second=bps,
            throttled_fraction=throttled / sent if sent else 0.0,
        )
