"""The owner's view of one endpoint's subject: positions, reads and commits.

Positions are computed from the subject's messages only (so every reader derives the same ones,
and S3 keys / Kinesis partition keys stay byte-identical whichever node delivers), starting at the
KV cursor `{seq, skip, pos, line, accepted_at}`: message `seq` starts at `pos - skip`, holds line
`line` at `pos`, and accept times are floored at `accepted_at` so they never go backwards.

An ephemeral ordered consumer with headers only follows the subject from the cursor and indexes
each message (`Lf-Size`, `Lf-Lines`, `Lf-Acc`, fragments) without moving payloads; `read` then
fetches payloads by sequence with direct gets. Messages get positions in sequence order; a
fragmented line takes its place at its first fragment, once every fragment is stored. A group
still incomplete `duplicate_window` after its accept time belongs to an append that was never
acknowledged (the appender gives up after append_timeout <= window / 2): it is skipped, the same
way by every reader.

An endpoint with nothing pending for `idle_follow_seconds` stops following (parks): its
consumer ends, its index stays (everything in it is committed). nats-server refuses a stream's
1,001st consumer, so a node that owns thousands of endpoints follows only the active ones; the
owner's own append wakes a parked log at once, another node's within `wakeup.WAKE_POLL_SECONDS`.

Everything here runs on the backend's loop; `NatsSpool` hands calls over from threads.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from logferry.spool.chunk import Chunk
from logferry.spool.errors import SpoolCorrupt
from logferry.spool.nats.errors import NatsUnavailable
from logferry.spool.nats.wire import H_ACC, H_LINES, H_REQ, H_SIZE, Entry, parse_frag

if TYPE_CHECKING:
    from logferry.spool.nats.spool import NatsSpool

log = logging.getLogger(__name__)

FETCH_CONCURRENCY = 16
MAX_BATCH = 1000
BATCH_SLACK = 64
"""Extra messages a batched get may return between the wanted ones (other groups' pieces)."""
BATCH_TIMEOUT = 5.0
BATCH_BELOW = 16 * 1024
"""Batched gets only for small messages: measured on loopback (2-core VM, nats-py 2.16),
a batch doubled the rate for 1 KB messages (~5,400 vs ~2,600/s) but 16 concurrent single
gets were 3x faster for 64 KB ones (~90 vs ~28 MB/s): one reply stream vs sixteen."""
EXPIRY_CHECK_SECONDS = 1.0
CATCH_UP_SECONDS = 60.0
"""How long `start` waits for the consumer to index what the subject held when following
began; past it `start` fails and `NatsSpool.follow` retries."""


class SubjectLog:
    """Index of one subject from the cursor on; reads and commits against it."""

    def __init__(self, spool: NatsSpool, cursor: dict[str, Any]) -> None:
        self.spool = spool
        self.backend = spool.backend
        self.committed = int(cursor["pos"])
        self.committed_line = int(cursor["line"])
        self._head_seq = int(cursor["seq"])
        self._head_skip = int(cursor["skip"])
        self._floor = float(cursor["accepted_at"])
        self._base_floor = self._floor
        self.end = self.committed - self._head_skip
        self.end_line = self.committed_line
        self.entries: list[Entry] = []
        self._starts: list[int] = []
        self._staged: deque[Entry] = deque()
        self._groups: dict[str, dict[int, int]] = {}
        self.last_seq = self._head_seq - 1
        self._sub: Any = None
        self._expiry: asyncio.Task[None] | None = None
        self._cache: dict[int, bytes] = {}
        self.ready = asyncio.Event()
        """Set once the index covers every message the subject held when `start` began."""
        self._tail = 0
        self._caught_up = asyncio.Event()
        self.commit_lock = asyncio.Lock()
        self.closed = False
        self._follow_lock = asyncio.Lock()
        self._last_activity = time.monotonic()
        """When a message was indexed, read or committed last (parking waits for quiet)."""

    # -- following ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._head_skip:
            # The cursor is inside message `seq`: index it here, from the leader, so the end
            # is never below the committed position once `ready` is set.
            try:
                head = await self.backend.js.get_msg(self.spool.stream, seq=self._head_seq)
            except nats.js.errors.NotFoundError:
                raise SpoolCorrupt(
                    f"endpoint {self.spool.name}: message {self._head_seq} under the cursor "
                    "is gone",
                    offset=self.committed,
                    next_offset=None,
                ) from None
            data = head.data or b""
            self.end_line = self.committed_line - data[: self._head_skip].count(b"\n")
            self._cache[self._head_seq] = data
            self._index_msg(self._head_seq, dict(head.headers or {}))
        # Why wait for the tail: until the consumer has delivered what a previous owner (a
        # killed incarnation of this node included) left on the subject, `end` understates
        # the backlog, and status would report 0 pending for lines never delivered.
        self._tail = await self._subject_tail()
        if self.last_seq >= self._tail:
            self._caught_up.set()
        else:
            self._caught_up.clear()  # the head message alone does not cover the tail
        if not self._head_skip and self._tail <= self.last_seq:
            # Nothing at or after the cursor: start parked (no consumer) until data comes.
            self.ready.set()
            return
        async with self._follow_lock:
            await self._subscribe()
        if self.closed:
            return
        try:
            await asyncio.wait_for(self._caught_up.wait(), CATCH_UP_SECONDS)
        except TimeoutError:
            raise NatsUnavailable(
                f"endpoint {self.spool.name}: indexing its subject up to message {self._tail} "
                f"took over {CATCH_UP_SECONDS:g}s"
            ) from None
        if self.closed:
            return
        self.ready.set()

    async def _subscribe(self) -> None:
        """Follow the subject from the message after the last one indexed (_follow_lock)."""
        sub = await self.backend.js.subscribe(
            self.spool.subject,
            stream=self.spool.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            headers_only=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=max(1, self.last_seq + 1)),
            idle_heartbeat=2.0,
        )
        if self.closed:  # stopped while subscribing (ownership lost at once)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            return
        self._sub = sub
        self._last_activity = time.monotonic()
        self._expiry = asyncio.get_running_loop().create_task(self._expire_loop())

    @property
    def parked(self) -> bool:
        """Ready, not closed, and not following: nothing was pending when it parked."""
        return self._sub is None and self.ready.is_set() and not self.closed

    async def resume(self) -> bool:
        """Follow again after parking (new messages may have come); False if not parked."""
        async with self._follow_lock:
            if not self.parked:
                return False
            await self._subscribe()
            return self._sub is not None

    def _may_park(self) -> bool:
        idle = self.backend.settings.idle_follow_seconds
        return (
            self._sub is not None
            and not self._staged
            and not self._groups
            and self.committed >= self.end
            and not self.commit_lock.locked()
            and not self.spool.has_unindexed()
            and time.monotonic() - self._last_activity >= idle
        )

    async def _park(self) -> bool:
        """Stop following: end the consumer, keep the index (empty: all of it committed).
        The purge below the cursor is repeated, so a parked subject holds no message and
        any message `wakeup` sees on it is new."""
        async with self._follow_lock:
            if not self._may_park():
                return False
            sub, self._sub = self._sub, None
            upto = self.last_seq  # committed: checked above (a late callback may index more)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await self.backend.js.purge_stream(
                self.spool.stream, seq=upto + 1, subject=self.spool.subject
            )
        log.debug("endpoint %s: parked after message %d", self.spool.name, upto)
        return True

    async def _subject_tail(self) -> int:
        """The stream sequence of the subject's last message (0: the subject is empty)."""
        try:
            last = await self.backend.js.get_last_msg(self.spool.stream, self.spool.subject)
        except nats.js.errors.NotFoundError:
            return 0
        return int(last.seq or 0)

    async def stop(self) -> None:
        self.closed = True
        self._caught_up.set()  # a `start` still waiting returns (closed)
        if self._expiry is not None:
            self._expiry.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self.ready.set()

    async def _on_msg(self, msg: Msg) -> None:
        self._index_msg(msg.metadata.sequence.stream, msg.headers or {})

    def _index_msg(self, seq: int, h: dict[str, str]) -> None:
        if seq <= self.last_seq:
            return  # an ordered consumer's reset may repeat what it delivered
        self.last_seq = seq
        self._last_activity = time.monotonic()
        if seq >= self._tail:
            self._caught_up.set()
        if H_SIZE not in h:
            log.warning("endpoint %s: ignoring foreign message %d", self.spool.name, seq)
            return
        size = int(h[H_SIZE])
        frag = parse_frag(h)
        entry = Entry(
            seq=seq,
            start=-1,
            size=size,
            lines=int(h.get(H_LINES, 0)),
            acc=float(h.get(H_ACC, 0.0)),
            req=h.get(H_REQ, ""),
        )
        if frag is not None:
            group, piece, pieces = frag
            if piece > 0:
                if group in self._groups:
                    self._groups[group][piece] = seq
                    self._advance()
                return  # a continuation: its bytes count at the group's first fragment
            self._groups[group] = {0: seq}
            entry.group, entry.pieces = group, pieces
        self._staged.append(entry)
        self._advance()

    async def _expire_loop(self) -> None:
        while not self.closed and self._sub is not None:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            if self._staged:
                self._advance()
            if self._may_park() and await self._park():
                return  # a resume starts a new loop

    def _advance(self) -> None:
        moved = False
        window = self.backend.settings.duplicate_window_seconds
        while self._staged:
            e = self._staged[0]
            if e.group is not None and len(self._groups.get(e.group, {})) < e.pieces:
                if time.time() <= e.acc + window:
                    break
                log.warning(
                    "endpoint %s: skipping an incomplete fragmented line at seq %d (its "
                    "append was never acknowledged)",
                    self.spool.name,
                    e.seq,
                )
                self._staged.popleft()
                self._groups.pop(e.group, None)
                continue
            self._staged.popleft()
            if not self.entries and e.seq == self._head_seq and self._head_skip:
                e.start = self.committed - self._head_skip
            else:
                e.start = self.end
            e.line = self.end_line
            self._floor = max(self._floor, e.acc)
            e.acc = self._floor
            self.end = e.start + e.size
            self.end_line += e.lines
            self.entries.append(e)
            self._starts.append(e.start)
            self.spool.indexed(e.req)
            moved = True
        if moved:
            self.spool.wake(self.end)

    # -- reading -----------------------------------------------------------------------------

    def _index(self, offset: int) -> int:
        """Index of the entry holding `offset` (committed <= offset < end)."""
        return bisect.bisect_right(self._starts, offset) - 1

    async def _fetch_one(self, seq: int, entry: Entry | None) -> bytes:
        cached = self._cache.get(seq)
        if cached is not None:
            return cached
        js = self.backend.js
        try:
            try:
                msg = await js.get_msg(self.spool.stream, seq=seq, direct=True)
            except nats.js.errors.NotFoundError:
                # A direct get may be answered by a replica that has not applied `seq` yet;
                # only the leader's answer means the message is gone.
                msg = await js.get_msg(self.spool.stream, seq=seq)
        except nats.js.errors.NotFoundError:
            off = entry.start if entry else self.committed
            raise SpoolCorrupt(
                f"endpoint {self.spool.name}: message {seq} of stream {self.spool.stream} is gone",
                offset=off,
                next_offset=entry.end if entry else None,
            ) from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise NatsUnavailable(f"endpoint {self.spool.name}: read failed: {exc!r}") from exc
        if msg.subject != self.spool.subject:
            raise SpoolCorrupt(
                f"endpoint {self.spool.name}: message {seq} belongs to {msg.subject}",
                offset=entry.start if entry else self.committed,
                next_offset=entry.end if entry else None,
            )
        return msg.data or b""

    async def _prefetch(self, entries: list[Entry]) -> None:
        """Fetch the payloads `entries` need with one batched direct get (server 2.11+) into
        the cache; whatever it misses (a lagging replica, a batch cut short) is fetched one
        by one afterwards."""
        want: set[int] = set()
        for e in entries:
            if e.group is None:
                want.add(e.seq)
            else:
                want.update((self._groups.get(e.group) or {}).values())
        want -= self._cache.keys()
        if len(want) < 2 or sum(e.size for e in entries) > BATCH_BELOW * len(entries):
            return
        nc = self.backend.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        request = {
            "seq": min(want),
            "next_by_subj": self.spool.subject,
            "batch": min(len(want) + BATCH_SLACK, MAX_BATCH),
        }
        last = max(want)
        try:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{self.spool.stream}",
                json.dumps(request).encode(),
                reply=inbox,
            )
            while True:
                msg = await sub.next_msg(timeout=BATCH_TIMEOUT)
                headers = msg.headers or {}
                if headers.get("Status"):
                    break  # 204 end of batch, 404 nothing (more), 408 refused
                seq = int(headers.get("Nats-Sequence", 0))
                if seq in want and headers.get("Nats-Subject") == self.spool.subject:
                    self._cache[seq] = msg.data
                if seq >= last:
                    break
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("endpoint %s: batched read cut short: %r", self.spool.name, exc)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _payload(self, entry: Entry, sem: asyncio.Semaphore) -> bytes:
        async with sem:
            if entry.group is None:
                data = await self._fetch_one(entry.seq, entry)
            else:
                seqs = self._groups.get(entry.group) or {}
                pieces = [await self._fetch_one(seqs[i], entry) for i in range(entry.pieces)]
                data = b"".join(pieces)
        if len(data) != entry.size or not data.endswith(b"\n"):
            raise SpoolCorrupt(
                f"endpoint {self.spool.name}: message {entry.seq} holds {len(data)} bytes, "
                f"its header says {entry.size}",
                offset=entry.start,
                next_offset=entry.end,
            )
        return data

    async def read(self, from_offset: int, max_bytes: int) -> list[Chunk]:
        if from_offset > self.end:
            raise ValueError(
                f"read({from_offset}) is past the end of spool {self.spool.name} ({self.end})"
            )
        if from_offset < self.committed:
            raise ValueError(
                f"offset {from_offset} of spool {self.spool.name} was committed and purged"
            )
        if from_offset == self.end:
            return []  # a worker's poll at the end: not activity (parking waits for none)
        self._last_activity = time.monotonic()
        i = self._index(from_offset)
        picked: list[Entry] = []
        total = -(from_offset - self.entries[i].start)
        j = i
        while j < len(self.entries):
            e = self.entries[j]
            same = bool(picked) and e.req == picked[-1].req and e.req != ""
            if picked and total >= max_bytes and not same:
                break
            picked.append(e)
            total += e.size
            j += 1
        await self._prefetch(picked)
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)
        results = await asyncio.gather(
            *(self._payload(e, sem) for e in picked), return_exceptions=True
        )
        datas: list[bytes] = []
        for got in results:
            if isinstance(got, BaseException):
                if datas:
                    break  # hand over the good chunks first; the next read raises
                raise got
            datas.append(got)
        self._cache = {e.seq: d for e, d in zip(picked, datas, strict=False) if e.group is None}
        out: list[Chunk] = []
        for k, (e, data) in enumerate(zip(picked, datas, strict=False)):
            start, lines = e.start, e.lines
            if k == 0 and from_offset != e.start:
                skip = from_offset - e.start
                head = data[:skip]
                if head[-1:] != b"\n":
                    raise ValueError(
                        f"position {from_offset} is not a line boundary in spool {self.spool.name}"
                    )
                data, start, lines = data[skip:], from_offset, lines - head.count(b"\n")
            prev = out[-1] if out else None
            if prev is not None and picked[k - 1].req == e.req and e.req and prev.end == start:
                out[-1] = Chunk(
                    prev.start,
                    start + len(data),
                    prev.accepted_at,
                    prev.data + data,
                    prev.lines + lines,
                )
            else:
                out.append(Chunk(start, start + len(data), e.acc, data, lines))
        return out

    # -- committing --------------------------------------------------------------------------

    async def cursor_at(self, offset: int) -> dict[str, Any]:
        """The KV cursor for position `offset` (a line boundary, committed < offset <= end)."""
        if offset > self.end:
            raise ValueError(
                f"commit({offset}) is past the end of spool {self.spool.name} ({self.end})"
            )
        if offset == self.end:
            seq = self._staged[0].seq if self._staged else self.last_seq + 1
            return {
                "seq": seq,
                "skip": 0,
                "pos": offset,
                "line": self.end_line,
                "accepted_at": self._floor,
            }
        i = self._index(offset)
        e = self.entries[i]
        floor = self.entries[i - 1].acc if i > 0 else self._base_floor
        line = e.line
        if offset != e.start:
            data = await self._payload(e, asyncio.Semaphore(1))
            head = data[: offset - e.start]
            if head[-1:] != b"\n":
                raise ValueError(
                    f"position {offset} is not a line boundary in spool {self.spool.name}"
                )
            line += head.count(b"\n")
        return {
            "seq": e.seq,
            "skip": offset - e.start,
            "pos": offset,
            "line": line,
            "accepted_at": floor,
        }

    def committed_to(self, cursor: dict[str, Any]) -> None:
        """Forget what lies below the new cursor."""
        self._last_activity = time.monotonic()
        self.committed = int(cursor["pos"])
        self.committed_line = int(cursor["line"])
        drop = self._index(self.committed) if self.committed < self.end else len(self.entries)
        if drop > 0:
            for e in self.entries[:drop]:
                if e.group is not None:
                    self._groups.pop(e.group, None)
            self._base_floor = self.entries[drop - 1].acc
            del self.entries[:drop]
            del self._starts[:drop]

    def first_pending_accepted_at(self) -> float | None:
        """Any thread: a commit on the loop may shrink `entries` meanwhile (then None)."""
        try:
            if self.committed >= self.end or not self.entries:
                return None
            return self.entries[max(0, self._index(self.committed))].acc
        except IndexError:
            return None
