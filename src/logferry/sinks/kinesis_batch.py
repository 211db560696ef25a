"""One PutRecords call being assembled, and the records not yet accepted.

`Batch` packs records into one call within the API limits (500 records, 5 MiB) and what each
shard's pacing window still takes; `Progress` keeps every record fed and not yet accepted, in
log order, so `durable` (the first line not accepted) is what the worker may commit.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from logferry.sinks.kinesis_records import Record, Unit
from logferry.sinks.pacing import Booking
from logferry.sinks.shard_map import Shard

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
"""PutRecords request limit (data + partition keys of all records)."""


class Progress:
    """Records fed and not yet accepted, in log order; `durable` is the first unaccepted line.

    Committing the spool there after every PutRecords call bounds what a crash replays to the
    records sent since (the calls in flight and the records still waiting for a retry).
    """

    def __init__(self) -> None:
        self.fresh: deque[Record] = deque()
        self.retry: list[tuple[float, int, Record]] = []
        self.units: deque[Unit] = deque()
        self.fed_end: int | None = None
        self.outstanding = 0
        self.held_bytes = 0
        """Bytes of the records not yet accepted (the sink's memory bound)."""
        self._seq = 0

    def add(self, records: list[Record]) -> None:
        last: Unit | None = None
        for record in records:
            if record.unit is not last:
                self.units.append(record.unit)
                last = record.unit
        self.fresh.extend(records)
        self.outstanding += len(records)
        self.held_bytes += sum(r.size for r in records)

    def later(self, due: float, record: Record) -> None:
        self._seq += 1
        heapq.heappush(self.retry, (due, self._seq, record))

    def accepted(self, record: Record) -> None:
        self.outstanding -= 1
        self.held_bytes -= record.size
        record.unit.remaining -= 1
        units = self.units
        while units and units[0].remaining <= 0:
            units.popleft()

    def durable(self, default: int) -> int:
        if self.units:
            return self.units[0].start
        return self.fed_end if self.fed_end is not None else default


class Batch:
    """One PutRecords request being assembled within the call and per-shard limits."""

    def __init__(
        self,
        call_bytes: int,
        shard_records: int,
        shard_bytes: int,
        room: Callable[[str], tuple[int, int]] | None = None,
    ) -> None:
        self.items: list[tuple[Record, Shard, str]] = []
        self.size = 0
        self.demand: dict[str, tuple[int, int]] = {}
        self.paced: tuple[str, tuple[int, int]] | None = None
        """Set when the next record waits for its shard's window: (shard, its demand)."""
        self._call_bytes = call_bytes
        self._shard_records = shard_records
        self._shard_bytes = shard_bytes
        self._room = room
        self._rooms: dict[str, tuple[int, int]] = {}
        self.taken_fresh: list[Record] = []
        self.taken_retry: list[tuple[float, int, Record]] = []
        self.booking: Booking | None = None
        """Its demand held in the stream's pacer until the call leaves (`ShardPacer.hold`)."""

    def fits(self, record: Record, shard: Shard) -> bool:
        if len(self.items) >= MAX_RECORDS_PER_CALL:
            return False
        if self.items and self.size + record.size > self._call_bytes:
            return False
        records, size = self.demand.get(shard.shard_id, (0, 0))
        if records >= self._shard_records:
            return False
        # A shard takes at most one burst's worth per call (one oversized record alone).
        if records and size + record.size > self._shard_bytes:
            return False
        if self._room is None:
            return True
        # Take only what the shard's window has room for now, so calls stream at the quota
        # instead of a second's worth per shard followed by a second of waiting.
        room = self._rooms.get(shard.shard_id)
        if room is None:
            room = self._rooms[shard.shard_id] = self._room(shard.shard_id)
        room_records, room_bytes = room
        whole = room_records >= self._shard_records and room_bytes >= self._shard_bytes
        if records + 1 <= room_records and (
            size + record.size <= room_bytes or (records == 0 and whole)
        ):
            return True
        if not self.items:
            self.paced = (shard.shard_id, (records + 1, size + record.size))
        return False

    def add(self, record: Record, shard: Shard, hash_key: str) -> None:
        self.items.append((record, shard, hash_key))
        self.size += record.size
        records, size = self.demand.get(shard.shard_id, (0, 0))
        self.demand[shard.shard_id] = (records + 1, size + record.size)
