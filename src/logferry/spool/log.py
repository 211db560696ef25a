"""Durable per-endpoint spool: a segmented, append-only log on local disk with group commit.

Storage (measured, bench/spool_bench.py → bench/results/spool.json, 2-core VM): segmented log,
because with delivery running (the steady state) it kept 120-260 MB/s of durable appends vs
84-143 MB/s for SQLite WAL with the same group commit, and frees space by unlinking segments
instead of DELETE + checkpoint; SQLite was 10-30% faster only for 1-line chunks at <= 16 appenders.

Sizing notes from the same bench: per-append CPU is ~6.5 us (asyncio wake-up included), so
one-line appends top out near 90k/s on 2 cores; ingest must batch lines into chunks (>= 4 KiB:
~200 MB/s, ~1M lines/s durable). Pre-zeroed segments would make small fsyncs ~1.5x faster but
write every byte twice (halving peak bandwidth), so segments grow by plain appends.

Why this shape: an ingest call is acknowledged only after its bytes are fsynced, so the cost that
matters is fsyncs per second. One fsync covers every append that arrived while the previous one
ran (group commit), so throughput grows with concurrency instead of collapsing. Deliveries read
sequentially and free space by deleting whole segment files (no compaction, no rewrite).

On disk, per endpoint (`<dir>/`):
  `<base:020d>.seg`  segment: a 40-byte segment header, then records. `base` is the logical offset
                     of the segment's first payload byte.
  `<base>.clean`     optional "valid up to byte N" note written when a spool goes idle, so a reopen
                     does not re-verify the whole active segment (checked against the file size).
  `committed`        the committed offset: two slots overwritten in turn (one pwrite + fdatasync
                     per commit), the newest valid one wins (`slot_file.py`).

Offsets are logical *payload* offsets: headers do not count, so `Chunk.end - Chunk.start ==
len(Chunk.data)`; the next chunk starts where the previous ended; offsets are never reused, even
after segments are deleted or the process restarts (the next offset is max(committed, last end)).
Every record also carries the running line number, which makes `pending_lines` exact and cheap.

Crash safety, write by write:
- a segment file is created, its header written and fdatasync'ed, and the directory fsync'ed
  before any record goes into it; a torn segment header therefore never held acknowledged data;
- records of a batch are written with pwrite at the durable end and fdatasync'ed once; appenders
  are acknowledged only after that. A crash mid-batch leaves a torn tail that recovery cuts off
  (bad magic / offset / length / CRC): it was never acknowledged. A bad record that a valid
  one follows is not a torn tail but damage to acknowledged data: recovery keeps it and every
  record after it, and delivery quarantines just the damaged bytes when it reaches them;
- a failed write is rolled back with ftruncate; a failed fsync marks the spool broken (the kernel
  may have dropped the dirty pages, so retrying fsync would lie) until it is reopened;
- `commit` persists the committed offset before deleting segments below it; segments that
  survive a crash between the two are deleted on the next open.

Limits count disk bytes (segment files, headers included). Space comes back a whole segment at
a time, plus: a fully committed active segment is deleted once it holds >= retire_bytes (1 MiB),
when the spool is under pressure, or when it goes idle, so caught-up endpoints keep no dead data.

Blocking: `Spool(...)` (open/recovery; scans the active segment after a crash), `read`,
`commit`, `append_sync`, `release`, `close` do file I/O: call them from threads (or
asyncio.to_thread), never on the event loop. `append` and `wait_for_data_async` are the async API.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import itertools
import logging
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import NoReturn

from logferry.spool.budget import SpoolBudget as SpoolBudget
from logferry.spool.budget import _Rate
from logferry.spool.chunk import Chunk
from logferry.spool.errors import Quarantined as Quarantined
from logferry.spool.errors import SpoolBroken as SpoolBroken
from logferry.spool.errors import SpoolClosed as SpoolClosed
from logferry.spool.errors import SpoolCorrupt as SpoolCorrupt
from logferry.spool.errors import SpoolError as SpoolError
from logferry.spool.errors import SpoolFull as SpoolFull
from logferry.spool.files import _O_CLOEXEC, _fdatasync, _pread_full, _pwrite_all
from logferry.spool.files import fsync_dir as fsync_dir
from logferry.spool.files import segment_files_bytes as segment_files_bytes
from logferry.spool.files import write_atomic as write_atomic
from logferry.spool.format import (
    _CLEAN,
    _CLEAN_MAGIC,
    _COMMIT,
    _COMMIT2,
    _COMMIT2_MAGIC,
    _COMMIT_MAGIC,
    _REC_FIELDS,
    _REC_HDR,
    _REC_MAGIC,
    _REC_PREFIX,
    _SEG_HDR,
    _SEG_MAGIC,
    CLEAN_SUFFIX,
    COMMITTED_NAME,
    TMP_SUFFIX,
)
from logferry.spool.format import MAX_CHUNK_BYTES as MAX_CHUNK_BYTES
from logferry.spool.format import REC_HEADER_BYTES as REC_HEADER_BYTES
from logferry.spool.format import SEG_HEADER_BYTES as SEG_HEADER_BYTES
from logferry.spool.format import SEG_SUFFIX as SEG_SUFFIX
from logferry.spool.format import check_crc as _check_crc
from logferry.spool.format import parse_segment_name as _parse_segment_name
from logferry.spool.format import segment_name as segment_name
from logferry.spool.format import validate_chunk_data as validate_chunk_data
from logferry.spool.format import with_crc as _with_crc
from logferry.spool.group_sync import GroupSync
from logferry.spool.slot_file import SlotFile

log = logging.getLogger(__name__)

STORAGE_REASON = (
    "segmented log: with delivery running it sustained 120-260 MB/s durable appends vs 84-143 "
    "for SQLite WAL (same group commit) and frees space with one unlink, not DELETE+checkpoint"
)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
MAX_BATCH_BYTES = 16 * 1024 * 1024
"""One group-commit write covers at most this much (bounds the join copy and fsync latency)."""
GROUP_WRITE_BYTES = 256 * 1024
"""Batches up to this size are written by the group-sync thread itself (two thread hand-offs
per append instead of three, group_sync.py); larger ones on the flush pool, so their copy into
the page cache overlaps other spools' syncs."""
INDEX_INTERVAL = 256 * 1024
CLOCK_STEP_BACK_SECONDS = 1.0
"""Accept times never go backwards across a wall-clock step back up to this long (they are
held at the last one). A larger step back means the last accept time came from a clock that was
ahead (a wrong jump forward, then corrected): holding it would stamp every new line, and keep
every S3 file open, until real time caught up. Accept times follow the clock back instead: S3
keys stay unique (the uid is the file's start offset) and replay stays deterministic (the
accept time is stored in each record)."""
"""A sparse (offset -> file position) entry every this many bytes, to find an offset quickly."""

_default_executor: ThreadPoolExecutor | None = None
_default_executor_lock = threading.Lock()


def default_executor() -> ThreadPoolExecutor:
    """Process-wide flush pool for spools created without a manager."""
    global _default_executor
    with _default_executor_lock:
        if _default_executor is None:
            _default_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-flush")
        return _default_executor


# ---------------------------------------------------------------------------------------------
# In-memory structures


class _Segment:
    """What the spool remembers about one segment file (a few ints; index only while active)."""

    __slots__ = ("base", "end", "first_line", "index", "size", "skips")

    def __init__(self, base: int, size: int, end: int, first_line: int | None = None) -> None:
        self.base = base
        self.size = size
        """Bytes of valid, durable data in the file (header included)."""
        self.end = end
        """Logical end offset (for a sealed segment: the next segment's base)."""
        self.first_line = first_line
        self.index: list[tuple[int, int, int]] = []
        """Sparse (offset, position, line) record boundaries, increasing."""
        self.skips: list[tuple[int, int, int]] = []
        """(offset, position, line) of the first good record after damaged bytes, increasing:
        kept when the index is dropped, since a scan from the segment start stops at damage."""


class _Pending:
    """One append waiting for the group commit."""

    __slots__ = ("chunk", "data", "error", "event", "fut", "lines", "loop")

    def __init__(
        self,
        data: bytes,
        lines: int,
        *,
        event: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        fut: asyncio.Future[Chunk] | None = None,
    ) -> None:
        self.data = data
        self.lines = lines
        self.event = event
        self.loop = loop
        self.fut = fut
        self.chunk: Chunk | None = None
        self.error: BaseException | None = None


class _Written:
    """A batch written to its segment, waiting for its sync before it is published."""

    __slots__ = (
        "end",
        "end_line",
        "fd",
        "first_line",
        "first_off",
        "nbytes",
        "pos",
        "seg",
        "size",
        "ts",
    )

    def __init__(
        self,
        seg: _Segment,
        fd: int,
        pos: int,
        size: int,
        first_off: int,
        first_line: int,
        end: int,
        end_line: int,
        ts: float,
        nbytes: int,
    ) -> None:
        self.seg, self.fd, self.pos, self.size = seg, fd, pos, size
        self.first_off, self.first_line, self.end, self.end_line = (
            first_off,
            first_line,
            end,
            end_line,
        )
        self.ts, self.nbytes = ts, nbytes


_Outcome = tuple["asyncio.Future[Chunk]", Chunk | None, BaseException | None]


def _resolve_many(items: list[_Outcome]) -> None:
    """Runs on the appenders' event loop: one wake-up per batch, not per chunk."""
    for fut, chunk, err in items:
        if fut.done():  # the awaiting task was cancelled
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(chunk)  # type: ignore[arg-type]


def _wake(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(True)


def _wake_many(futs: list[asyncio.Future[bool]]) -> None:
    for fut in futs:
        _wake(fut)


# ---------------------------------------------------------------------------------------------
# The spool


class Spool:
    """Durable queue of one endpoint's chunks. Thread-safe; async and sync appenders may mix.

    Lock order (outer to inner): _commit_lock, _io, _rd, _mu, budget. `_io` serialises file
    mutation (the flush batch, retiring the active segment, release/close), `_rd` the read-side
    file handles (segment deletion takes it so no reader pread()s a closed, reused fd), `_mu`
    the in-memory state.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_bytes: int | None = None,
        budget: SpoolBudget | None = None,
        executor: Executor | None = None,
        retire_bytes: int | None = None,
        name: str | None = None,
        on_activate: Callable[[Spool], None] | None = None,
        quarantine_dir: str | os.PathLike[str] | None = None,
        group_sync: GroupSync | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if segment_bytes < SEG_HEADER_BYTES + REC_HEADER_BYTES + 2:
            raise ValueError(f"segment_bytes={segment_bytes} is too small")
        self._dir = os.fspath(directory)
        self.name = name or self._dir
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._budget = budget
        self._executor = executor
        self._retire_bytes = (
            retire_bytes if retire_bytes is not None else min(segment_bytes, 1024 * 1024)
        )
        self._on_activate = on_activate
        self._group_sync = group_sync
        """Shared sync thread (one syncfs for many spools' batches); None: own fdatasync."""
        self._clock = clock
        """Wall clock for accept times (injectable: tests step it without touching the system)."""
        self._clock_behind = False
        """The clock was last seen stepped back past the last accept time (logged once)."""
        self._quarantine_dir = (
            os.fspath(quarantine_dir) if quarantine_dir is not None else self._dir + ".quarantine"
        )

        self._commit_lock = threading.Lock()
        self._commit_file = SlotFile(os.path.join(self._dir, COMMITTED_NAME))
        self._io = threading.Lock()
        self._rd = threading.Lock()
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)

        self._segments: list[_Segment] = []
        self._end = 0
        self._end_line = 0
        self._last_accepted = 0.0
        self._committed = 0
        self._committed_line = 0
        self._first_pending: tuple[int, float] | None = None
        """(committed offset, acceptance time of the record there): one header read per commit,
        however often the lag is asked for (every /metrics scrape asks for every endpoint)."""
        self._disk_bytes = 0
        self._reserved = 0
        self._queue: list[_Pending] = []
        self._queued_bytes = 0
        self._flushing = False
        self._closed = False
        self._broken: str | None = None
        self._dormant = False
        self._wfd: int | None = None
        self._rfds: OrderedDict[int, int] = OrderedDict()
        self._boundaries: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool], int]] = []
        self._note_size = -1
        self._rate = _Rate()
        self.last_used = time.monotonic()
        self.truncated_bytes = 0
        """Torn-tail bytes cut off when this spool was opened (never-acknowledged data)."""
        self.damaged_at_open = 0
        """Damaged byte ranges found inside the newest segment when it was opened (kept in
        place with the records after them; delivery quarantines them when it reaches them)."""
        self._load()

    # -- public state ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def end_offset(self) -> int:
        """Offset just past the last durable (acknowledged) chunk; the next chunk starts here."""
        return self._end

    @property
    def committed_offset(self) -> int:
        """Everything below this offset was confirmed by the sink; reading resumes here."""
        return self._committed

    @property
    def pending_bytes(self) -> int:
        """Payload bytes durable but not yet committed (exact)."""
        return self._end - self._committed

    @property
    def committed_line(self) -> int:
        """Number of lines below `committed_offset` since the spool was created."""
        return self._committed_line

    @property
    def end_line(self) -> int:
        return self._end_line

    def first_pending_accepted_at(self) -> float | None:
        """When the oldest uncommitted line was accepted (None if none): one header read per
        committed position, remembered until the next commit."""
        with self._rd:
            with self._mu:
                committed = self._committed
                if self._closed or committed >= self._end:
                    return None
                cached = self._first_pending
            if cached is not None and cached[0] == committed:
                return cached[1]
            try:
                seg, pos, _, _ = self._locate(committed)
            except ValueError:
                return None
            if seg is None:
                return None
            hdr = _pread_full(self._rfd(seg.base), REC_HEADER_BYTES, pos)
        if len(hdr) < REC_HEADER_BYTES:
            return None
        accepted = float(_REC_HDR.unpack(hdr)[6])
        self._first_pending = (committed, accepted)
        return accepted

    @property
    def pending_lines(self) -> int:
        """Lines durable but not yet committed (exact: records carry running line numbers)."""
        return self._end_line - self._committed_line

    @property
    def disk_bytes(self) -> int:
        """Bytes of segment files (headers and not-yet-deleted committed data included)."""
        return self._disk_bytes

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int | None) -> None:
        self._max_bytes = value

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def is_dormant(self) -> bool:
        """True after `release()` until the next use: no file handles, no caches (and not
        while `release()` is still closing them)."""
        return self._dormant and self._wfd is None and not self._rfds

    @property
    def open_fds(self) -> int:
        return len(self._rfds) + (self._wfd is not None)

    # -- open / recovery ---------------------------------------------------------------------

    def _load(self) -> None:
        names: list[str] = []
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            names = []
        for n in names:
            if n.endswith(TMP_SUFFIX):  # half-written replacement from a crash: the old file wins
                self._unlink(n)
        bases = sorted(b for b in (_parse_segment_name(n) for n in names) if b is not None)
        segs = []
        before = 0
        for b in bases:
            size = os.stat(os.path.join(self._dir, segment_name(b))).st_size
            before += size
            segs.append(_Segment(b, size, b))
        for cur, nxt in itertools.pairwise(segs):
            cur.end = nxt.base
        self._segments = segs
        committed = self._read_committed()
        c_off, c_line, c_base, c_pos, c_rstart, c_rline, c_floor = committed or (
            0,
            0,
            0,
            0,
            0,
            0,
            0.0,
        )
        self._last_accepted = c_floor

        # The last segment is the only one that can have a torn tail (a new segment is created
        # only after the previous batch was fsynced).
        while segs:
            last = segs[-1]
            if self._recover_last(last):
                break
            # Created but its header never became durable: it cannot hold acknowledged data.
            log.warning("spool %s: removing segment %s with a torn header", self.name, last.base)
            self._unlink(segment_name(last.base))
            self._unlink(f"{last.base}{CLEAN_SUFFIX}")
            segs.pop()

        if segs:
            last = segs[-1]
            self._end = max(last.end, c_off)
            self._end_line = self._end_line if last.end >= c_off else c_line
        else:
            self._end = c_off
            self._end_line = c_line
        self._committed = c_off
        self._committed_line = c_line

        # Segments wholly below the committed offset: a crash hit between commit and delete,
        # or the active segment was fully delivered. Delete them now.
        while segs and segs[0].end <= c_off:
            dead = segs.pop(0)
            self._unlink(segment_name(dead.base))
            self._unlink(f"{dead.base}{CLEAN_SUFFIX}")
        if segs and self._committed < segs[0].base:
            first_line = self._read_first_line(segs[0])
            log.error(
                "spool %s: offsets %d..%d are missing on disk; resuming at %d",
                self.name,
                self._committed,
                segs[0].base,
                segs[0].base,
            )
            self._committed, self._committed_line = segs[0].base, first_line
        for n in names:  # notes of segments that are gone
            if n.endswith(CLEAN_SUFFIX):
                stem = n[: -len(CLEAN_SUFFIX)]
                if not stem.isdigit() or all(s.base != int(stem) for s in segs):
                    self._unlink(n)
        self._disk_bytes = sum(s.size for s in segs)
        if committed is not None and segs:
            i = self._seg_index(c_base)
            if i is not None and c_off < self._end:
                seg = segs[i]
                self._boundaries[c_rstart] = (seg.base, c_pos, c_rline)
        if self._budget is not None and self._disk_bytes != before:
            self._budget.adjust(self._disk_bytes - before)

    def _read_committed(self) -> tuple[int, int, int, int, int, int, float] | None:
        """(offset, line, segment base, record position, record start, record line, floor)."""
        blob = self._commit_file.load()
        if blob is None:
            return None
        body = _check_crc(blob, _COMMIT2.size)
        if body is not None and body[:8] == _COMMIT2_MAGIC:
            _, off, line, base, pos, rstart, rline, floor = _COMMIT2.unpack(body)
            return off, line, base, pos, rstart, rline, floor
        body = _check_crc(blob, _COMMIT.size)  # written by earlier versions: a record start
        if body is not None and body[:8] == _COMMIT_MAGIC:
            _, off, line, base, pos, floor = _COMMIT.unpack(body)
            return off, line, base, pos, off, line, floor
        log.error("spool %s: committed file is damaged; redelivering from the start", self.name)
        return None

    def _read_seg_header(self, fd: int, size: int) -> tuple[int, int, float] | None:
        if size < SEG_HEADER_BYTES:
            return None
        blob = _pread_full(fd, SEG_HEADER_BYTES, 0)
        body = _check_crc(blob[: _SEG_HDR.size + 4], _SEG_HDR.size)
        if body is None:
            return None
        magic, base, first_line, floor = _SEG_HDR.unpack(body)
        if magic != _SEG_MAGIC:
            return None
        return base, first_line, floor

    def _recover_last(self, seg: _Segment) -> bool:
        """Scan the last segment, cut a torn tail; False if its header is torn (delete it)."""
        path = self._seg_path(seg.base)
        fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
        try:
            file_size = os.fstat(fd).st_size
            hdr = self._read_seg_header(fd, file_size)
            if hdr is None or hdr[0] != seg.base:
                return False
            _, first_line, floor = hdr
            seg.first_line = first_line
            pos, off, line, acc = SEG_HEADER_BYTES, seg.base, first_line, floor
            note = self._read_note(seg.base)
            if note is not None and SEG_HEADER_BYTES <= note[0] <= file_size:
                pos, off, line, acc = note
            pos, off, line, acc = self._scan(fd, seg, pos, off, line, acc, file_size, verify=True)
            while pos < file_size:
                # Damage, or a torn tail? A torn tail is the last write: nothing valid follows
                # it. A record that verifies further on means the bad bytes were acknowledged
                # once; keep everything after them and let delivery quarantine them (`read`
                # raises SpoolCorrupt there, `quarantine` moves them aside), as for a sealed
                # segment.
                good = self._resync(fd, pos + 1, off, file_size, origin=pos, after_line=line)
                if good is None:
                    break
                npos, noff, nline = good
                log.error(
                    "spool %s: %d damaged bytes at offset %d (segment %d, byte %d) in the newest "
                    "segment; the records after them are kept, delivery quarantines the damage",
                    self.name,
                    npos - pos,
                    off,
                    seg.base,
                    pos,
                )
                self.damaged_at_open += 1
                seg.skips.append((noff, npos, nline))
                pos, off, line, acc = self._scan(
                    fd, seg, npos, noff, nline, acc, file_size, verify=True
                )
            if file_size > pos:
                log.warning(
                    "spool %s: cut a torn tail of %d bytes at offset %d (never acknowledged)",
                    self.name,
                    file_size - pos,
                    off,
                )
                os.ftruncate(fd, pos)
                os.fsync(fd)
                self.truncated_bytes += file_size - pos
            seg.size = pos
            seg.end = off
            self._end_line = line
            self._last_accepted = max(self._last_accepted, acc)
            self._note_size = pos if note is not None and note[0] == pos else -1
            return True
        finally:
            os.close(fd)

    def _read_note(self, base: int) -> tuple[int, int, int, float] | None:
        try:
            with open(os.path.join(self._dir, f"{base}{CLEAN_SUFFIX}"), "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        body = _check_crc(blob, _CLEAN.size)
        if body is None or body[:8] != _CLEAN_MAGIC:
            return None
        _, nbase, size, end, end_line, acc = _CLEAN.unpack(body)
        if nbase != base:
            return None
        return size, end, end_line, acc

    def _scan(
        self,
        fd: int,
        seg: _Segment,
        pos: int,
        off: int,
        line: int,
        acc: float,
        limit: int,
        *,
        verify: bool,
        stop_at: int | None = None,
    ) -> tuple[int, int, int, float]:
        """Walk records from (pos, off, line) until `limit`, the first invalid one, or `stop_at`.

        Returns the position/offset/line/accepted_at just past the last valid record (or of the
        record that contains offset `stop_at`). Adds sparse index entries on the way.
        """
        block = 4 * 1024 * 1024 if verify else 1024 * 1024
        buf = b""
        buf_pos = pos
        idx = seg.index
        last_idx = idx[-1][1] if idx else SEG_HEADER_BYTES
        while pos < limit:
            if stop_at is not None and off >= stop_at:
                break
            rel = pos - buf_pos
            if rel + REC_HEADER_BYTES > len(buf):
                buf = _pread_full(fd, min(block, limit - pos), pos)
                buf_pos, rel = pos, 0
                if len(buf) < REC_HEADER_BYTES:
                    break
            magic, crc, start, first_line, length, lines, t = _REC_HDR.unpack_from(buf, rel)
            if (
                magic != _REC_MAGIC
                or start != off
                or first_line != line
                or length == 0
                or lines == 0
                or length > MAX_CHUNK_BYTES
                or pos + REC_HEADER_BYTES + length > limit
            ):
                break
            if stop_at is not None and off + length > stop_at:
                break
            if verify:
                if rel + REC_HEADER_BYTES + length > len(buf):
                    buf = _pread_full(fd, max(block, REC_HEADER_BYTES + length), pos)
                    buf_pos, rel = pos, 0
                    if len(buf) < REC_HEADER_BYTES + length:
                        break
                covered = memoryview(buf)[rel + 8 : rel + REC_HEADER_BYTES + length]
                if zlib.crc32(covered) != crc:
                    break
            if pos - last_idx >= INDEX_INTERVAL:
                with self._mu:  # the flusher appends too; entries must stay increasing
                    if not idx or idx[-1][1] < pos:
                        idx.append((off, pos, line))
                    last_idx = idx[-1][1]
            pos += REC_HEADER_BYTES + length
            off += length
            line += lines
            acc = t
        return pos, off, line, acc

    # -- helpers -----------------------------------------------------------------------------

    def _seg_path(self, base: int) -> str:
        return os.path.join(self._dir, segment_name(base))

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self._dir, name))
        except FileNotFoundError:
            pass

    def _seg_index(self, base: int) -> int | None:
        i = bisect.bisect_left(self._segments, base, key=lambda s: s.base)
        if i < len(self._segments) and self._segments[i].base == base:
            return i
        return None

    def _read_first_line(self, seg: _Segment) -> int:
        if seg.first_line is None:
            fd = os.open(self._seg_path(seg.base), os.O_RDONLY | _O_CLOEXEC)
            try:
                hdr = self._read_seg_header(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            if hdr is None:
                raise SpoolCorrupt(
                    f"spool {self.name}: segment {seg.base} has a damaged header",
                    offset=seg.base,
                    next_offset=seg.end if seg is not self._segments[-1] else None,
                )
            seg.first_line = hdr[1]
        return seg.first_line

    def _touch(self) -> None:
        self.last_used = time.monotonic()
        if self._dormant:
            self._dormant = False
            if self._on_activate is not None:
                self._on_activate(self)

    def _effective_segment_bytes(self) -> int:
        # With a small per-endpoint limit, smaller segments let space come back before the
        # spool has to drain completely.
        if self._max_bytes:
            return max(SEG_HEADER_BYTES + 4096, min(self._segment_bytes, self._max_bytes // 4))
        return self._segment_bytes

    # -- appending ---------------------------------------------------------------------------

    async def append(self, data: bytes, lines: int, *, normalized: bool = False) -> Chunk:
        """Append one chunk; returns once it is fsynced (acknowledge the client only then).

        Raises SpoolFull at once when over the limit (nothing written). If the awaiting task is
        cancelled, the chunk may still become durable (at-least-once: the client retries).
        `normalized=True`: `data, lines` are `ingest.lines.normalize`'s output, which already
        holds the chunk contract, so only its constant-time checks run here.
        """
        validate_chunk_data(data, lines, scan=not normalized)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Chunk] = loop.create_future()
        self._enqueue(_Pending(data, lines, loop=loop, fut=fut))
        return await fut

    def append_sync(self, data: bytes, lines: int) -> Chunk:
        """Blocking `append` for threads (e.g. syslog listeners). Never call it on the loop."""
        validate_chunk_data(data, lines)
        p = _Pending(data, lines, event=threading.Event())
        self._enqueue(p)
        assert p.event is not None
        p.event.wait()
        if p.error is not None:
            raise p.error
        assert p.chunk is not None
        return p.chunk

    def _enqueue(self, p: _Pending) -> None:
        n = REC_HEADER_BYTES + len(p.data)
        self.last_used = time.monotonic()
        if self._dormant:
            self._touch()
        limit, budget = self._max_bytes, self._budget
        with self._mu:  # fast path: usable, under both limits
            if (
                not self._closed
                and self._broken is None
                and (limit is None or self._disk_bytes + self._reserved + n <= limit)
                and (budget is None or budget.try_reserve(n))
            ):
                self._reserved += n
                self._queue.append(p)
                self._queued_bytes += n
                start = not self._flushing
                self._flushing = True
            else:
                start = None
        if start is None:
            self._enqueue_slow(p, n)
        elif start:
            self._submit()

    def _enqueue_slow(self, p: _Pending, n: int) -> None:
        for attempt in range(2):
            with self._mu:
                self._check_usable()
                full = self._reserve(n)
                if full is None:
                    self._queue.append(p)
                    self._queued_bytes += n
                    start = not self._flushing
                    self._flushing = True
                    break
            if attempt == 0 and self._try_retire():
                continue
            raise full
        if start:
            self._submit()

    def _check_usable(self) -> None:
        if self._closed:
            raise SpoolClosed(f"spool {self.name} is closed", fix="Reopen it via the manager.")
        if self._broken is not None:
            raise SpoolBroken(
                f"spool {self.name} stopped after a storage error: {self._broken}",
                fix="Free or repair the disk, then reopen the spool (recovery re-verifies it).",
            )

    def _reserve(self, n: int) -> SpoolFull | None:
        """Reserve `n` disk bytes (caller holds _mu); returns the error instead of raising."""
        limit = self._max_bytes
        if limit is not None:
            if n > limit:
                raise ValueError(f"a {n}-byte chunk can never fit spool limit {limit}")
            used = self._disk_bytes + self._reserved
            if used + n > limit:
                return SpoolFull(
                    f"spool {self.name} is full ({used} of {limit} bytes)",
                    retry_after=self._rate.eta(used + n - limit),
                    fix="Wait for delivery to catch up, or raise the endpoint's spool limit.",
                )
        if self._budget is not None and not self._budget.try_reserve(n):
            return self._budget.refusal(n)
        self._reserved += n
        return None

    def _unreserve(self, n: int) -> None:
        """Caller holds _mu."""
        self._reserved -= n
        if self._budget is not None:
            self._budget.adjust(-n)

    def _submit(self) -> None:
        group = self._group_sync
        if (
            group is not None
            and self._queued_bytes <= GROUP_WRITE_BYTES
            and not self._write_touches_files()
            and group.submit_flush(self._flush_on_sync_thread)
        ):
            return
        self._submit_to_pool()

    def _write_touches_files(self) -> bool:
        """Whether the next batch may create, seal or retire a segment file (an fsync of the
        file and one of the directory): that goes to the flush pool, not to the sync thread
        every spool waits on. Read without the locks: it only chooses the thread."""
        segments = self._segments
        if not segments:
            return True
        seg = segments[-1]
        if seg.end != self._end or seg.size + self._queued_bytes >= self._effective_segment_bytes():
            return True
        retirable = self._committed >= self._end
        return retirable and seg.size - SEG_HEADER_BYTES >= self._retire_bytes

    def _submit_to_pool(self) -> None:
        executor = self._executor or default_executor()
        try:
            executor.submit(self._flush_task)
        except RuntimeError as e:  # executor shut down: fail what is queued, do not hang
            with self._mu:
                batch, self._queue = self._queue, []
                self._unreserve(self._queued_bytes)
                self._queued_bytes = 0
                self._flushing = False
                self._cond.notify_all()
            self._resolve(batch, SpoolClosed(f"spool {self.name}: flush pool is shut down ({e})"))

    def _flush_task(self) -> None:
        """One group commit: everything queued (up to MAX_BATCH_BYTES), one write, one sync.

        With a GroupSync the sync is shared with other spools' batches: `_io` stays held from
        the write until the sync thread published the batch (`_finish_batch`), so nothing can
        close or rewrite the file in between, and the flush thread is free meanwhile."""
        self._io.acquire()
        pending = self._write_queued()
        if pending is None:
            return
        fd, done = pending
        group = self._group_sync
        if group is None:
            try:
                _fdatasync(fd)
            except OSError as e:
                done(e)
            else:
                done(None)
        else:
            group.submit(fd, done)

    def _flush_on_sync_thread(self) -> tuple[int, Callable[[OSError | None], None]] | None:
        """The group-sync thread's flush (`GroupSync.submit_flush`): write what is queued for
        this round's sync. Never waits for `_io`: one spool retiring a segment or closing must
        not hold back every spool's sync, so a busy spool goes to the flush pool instead."""
        if not self._io.acquire(blocking=False):
            self._submit_to_pool()
            return None
        return self._write_queued()

    def _write_queued(self) -> tuple[int, Callable[[OSError | None], None]] | None:
        """Caller holds _io. Writes the next batch and returns (fd, completion) for its sync;
        None when it finished here (nothing queued, or the write failed). The completion, or
        this method when it returns None, releases _io."""
        try:
            with self._mu:
                total = 0
                i = 0
                for p in self._queue:
                    if i and total + len(p.data) > MAX_BATCH_BYTES:
                        break
                    total += REC_HEADER_BYTES + len(p.data)
                    i += 1
                batch = self._queue[:i]
                del self._queue[:i]
                self._queued_bytes -= total
            if not batch:
                self._finish_batch(None, [], 0, None)
                return None
            try:
                written = self._write_batch(batch, total)
            except BaseException as e:
                self._finish_batch(None, batch, total, e)
                return None
        except BaseException:
            self._io.release()
            raise
        return written.fd, lambda err: self._finish_batch(written, batch, total, err)

    def _finish_batch(
        self,
        written: _Written | None,
        batch: list[_Pending],
        total: int,
        err: BaseException | None,
    ) -> None:
        """Caller holds _io (any thread: the flush or the sync thread); releases it. Publishes a
        synced batch (or fails it), acknowledges its appenders, starts the next batch."""
        try:
            if written is not None and err is None:
                self._publish(written)
            elif written is not None and isinstance(err, OSError):
                self._broken = f"fsync failed: {err}"
                err = SpoolBroken(
                    f"spool {self.name}: fsync failed ({err}); the last batch may or may not "
                    "be on disk",
                    fix="Check the disk, then reopen the spool.",
                )
            if err is not None and batch:
                with self._mu:
                    self._unreserve(total)
            with self._mu:
                again = bool(self._queue)
                if not again:
                    self._flushing = False
                self._cond.notify_all()
        finally:
            self._io.release()
        self._resolve(batch, err)
        if again:
            self._submit()

    def _resolve(self, batch: list[_Pending], err: BaseException | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for p in batch:
            if p.fut is not None and p.loop is not None:
                by_loop.setdefault(p.loop, []).append((p.fut, p.chunk, err))
            else:
                p.error = err
                assert p.event is not None
                p.event.set()
        group = self._group_sync
        merge = group is not None and group.in_round()
        for loop, items in by_loop.items():
            if merge:
                assert group is not None
                group.post(loop, _resolve_many, items)
                continue
            try:
                loop.call_soon_threadsafe(_resolve_many, items)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass

    def _write_batch(self, batch: list[_Pending], nbytes: int) -> _Written:
        """Caller holds _io. Writes the batch at the durable end (not yet synced, not yet
        visible to readers: `_publish` does that after the sync)."""
        if self._broken is not None:
            raise SpoolBroken(f"spool {self.name} stopped after a storage error: {self._broken}")
        self._maybe_retire_locked()
        seg = self._writable_segment()
        fd = self._wfd
        assert fd is not None
        off, line = self._end, self._end_line
        ts = self._accept_time()
        parts: list[bytes] = []
        pack = _REC_FIELDS.pack
        prefix = _REC_PREFIX.pack
        crc32 = zlib.crc32
        first_off, first_line = off, line
        for p in batch:
            d = p.data
            ln = len(d)
            fields = pack(off, line, ln, p.lines, ts)
            parts += (prefix(_REC_MAGIC, crc32(d, crc32(fields))), fields, d)
            p.chunk = Chunk(off, off + ln, ts, d, p.lines)
            off += ln
            line += p.lines
        buf = b"".join(parts)
        pos = seg.size
        try:
            _pwrite_all(fd, buf, pos)
        except OSError as e:
            self._rollback(fd, pos, e)
            raise self._io_error(e) from e
        return _Written(seg, fd, pos, len(buf), first_off, first_line, off, line, ts, nbytes)

    def _accept_time(self) -> float:
        """Caller holds _io. The wall clock, held at the last accept time across a small step
        back; after a larger one it follows the clock (see CLOCK_STEP_BACK_SECONDS)."""
        ts = self._clock()
        last = self._last_accepted
        if ts >= last:
            self._clock_behind = False
            return ts
        if last - ts <= CLOCK_STEP_BACK_SECONDS:
            return last
        if not self._clock_behind:
            self._clock_behind = True
            log.warning(
                "spool %s: the wall clock is %.1f s behind the last accept time; accept times "
                "follow it back (the clock was ahead, or was stepped back)",
                self.name,
                last - ts,
            )
        return ts

    def _publish(self, w: _Written) -> None:
        """Caller holds _io; the batch is durable: readers and waiters may see it now."""
        seg = w.seg
        waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool], int]] = []
        with self._mu:
            if w.pos - (seg.index[-1][1] if seg.index else SEG_HEADER_BYTES) >= INDEX_INTERVAL:
                seg.index.append((w.first_off, w.pos, w.first_line))
            seg.size = w.pos + w.size
            seg.end = w.end
            self._end = w.end
            self._end_line = w.end_line
            self._last_accepted = w.ts
            self._disk_bytes += w.size
            self._reserved -= w.nbytes
            self._cond.notify_all()
            if self._async_waiters:
                off = w.end
                waiters = [x for x in self._async_waiters if x[2] < off]
                self._async_waiters = [x for x in self._async_waiters if x[2] >= off]
        if not waiters:
            return
        group = self._group_sync
        if group is not None and group.in_round():
            for loop, fut, _ in waiters:
                group.post(loop, _wake_many, [fut])
            return
        for loop, fut, _ in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                pass

    def _io_error(self, e: OSError) -> SpoolError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return SpoolFull(
                f"spool {self.name}: the disk is full ({e})",
                retry_after=5.0,
                fix="Free disk space or lower the spool max_bytes below the free space.",
            )
        return SpoolBroken(f"spool {self.name}: write failed ({e})", fix="Check the disk.")

    def _rollback(self, fd: int, pos: int, cause: OSError) -> None:
        """Undo a partly written batch so the next one lands at the durable end."""
        try:
            os.ftruncate(fd, pos)
            _fdatasync(fd)
        except OSError as e:
            self._broken = f"write failed ({cause}) and could not be rolled back ({e})"

    def _writable_segment(self) -> _Segment:
        """The segment the next batch goes into; rotates and creates files as needed."""
        seg = self._segments[-1] if self._segments else None
        if seg is not None and seg.end == self._end and seg.size < self._effective_segment_bytes():
            if self._wfd is None:
                self._wfd = os.open(self._seg_path(seg.base), os.O_WRONLY | _O_CLOEXEC)
            return seg
        # Seal the current segment (its data is already durable) and start a new one.
        self._close_wfd()
        if not os.path.isdir(self._dir):
            parent = os.path.dirname(os.path.abspath(self._dir))
            os.makedirs(self._dir, exist_ok=True)
            fsync_dir(parent)
        base = self._end
        self._unlink(f"{base}{CLEAN_SUFFIX}")
        path = self._seg_path(base)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
        try:
            hdr = _with_crc(_SEG_HDR.pack(_SEG_MAGIC, base, self._end_line, self._last_accepted))
            _pwrite_all(fd, hdr + b"\0" * (SEG_HEADER_BYTES - len(hdr)), 0)
            _fdatasync(fd)
            fsync_dir(self._dir)
        except OSError as e:
            os.close(fd)
            self._unlink(segment_name(base))
            raise self._io_error(e) from e
        new = _Segment(base, SEG_HEADER_BYTES, base, self._end_line)
        with self._mu:
            self._segments.append(new)
            self._disk_bytes += SEG_HEADER_BYTES
        if self._budget is not None:
            self._budget.adjust(SEG_HEADER_BYTES)
        self._wfd = fd
        self._note_size = -1
        return new

    def _close_wfd(self) -> None:
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None

    # -- committing and space ----------------------------------------------------------------

    def commit(self, offset: int) -> None:
        """The sink confirmed every line below position `offset` (any line boundary). Blocking.

        Persists the position (one slot of the committed file, fdatasynced), then deletes
        whole segments below it.
        Raises ValueError when `offset` is not a line boundary of this spool.
        """
        self._touch()
        with self._commit_lock:
            with self._mu:
                if self._closed:
                    raise SpoolClosed(f"spool {self.name} is closed")
                committed, end = self._committed, self._end
            if offset <= committed:
                return
            if offset > end:
                raise ValueError(f"commit({offset}) is past the end of spool {self.name} ({end})")
            with self._rd:
                seg, pos, rstart, rline = self._locate(offset)
                line = rline
                if offset != rstart:
                    assert seg is not None
                    prefix = _pread_full(
                        self._rfd(seg.base), offset - rstart, pos + REC_HEADER_BYTES
                    )
                    self._check_line_boundary(prefix, offset, rstart)
                    line = rline + prefix.count(b"\n")
            data = _COMMIT2.pack(
                _COMMIT2_MAGIC,
                offset,
                line,
                seg.base if seg else 0,
                pos,
                rstart,
                rline,
                self._last_accepted,
            )
            self._commit_file.save(_with_crc(data))
            with self._mu:
                self._committed = offset
                self._committed_line = line
            if seg is not None and rstart < end:
                self._remember(rstart, seg.base, pos, rline)
            self._rate.add(offset - committed)
            if self._budget is not None:
                self._budget.rate.add(offset - committed)
            self._delete_sealed_below(offset)
            self._try_retire()

    def _check_line_boundary(self, prefix: bytes, offset: int, rstart: int) -> None:
        if len(prefix) != offset - rstart:
            raise ValueError(f"spool {self.name}: record at {rstart} is short on disk")
        if prefix[-1:] != b"\n":
            raise ValueError(
                f"position {offset} is not a line boundary in spool {self.name} "
                f"(inside a line of the record at {rstart})"
            )

    def _remember(self, start: int, base: int, pos: int, line: int) -> None:
        """Cache a record start's place on disk (the next read or commit starts there)."""
        self._boundaries[start] = (base, pos, line)
        self._boundaries.move_to_end(start)
        while len(self._boundaries) > 64:
            self._boundaries.popitem(last=False)

    def _delete_sealed_below(self, offset: int) -> None:
        """Delete segments wholly below `offset`, never the active (last) one."""
        with self._rd:
            with self._mu:
                dead = []
                while len(self._segments) > 1 and self._segments[0].end <= offset:
                    dead.append(self._segments.pop(0))
                freed = sum(s.size for s in dead)
                self._disk_bytes -= freed
            for s in dead:
                self._close_rfd(s.base)
                self._unlink(segment_name(s.base))
                self._unlink(f"{s.base}{CLEAN_SUFFIX}")
        if dead and self._budget is not None:
            self._budget.adjust(-freed)

    def _try_retire(self) -> bool:
        """Delete the active segment if everything in it is committed (frees dead bytes)."""
        if not self._io.acquire(blocking=False):
            return False
        try:
            return self._maybe_retire_locked(pressure=True)
        finally:
            self._io.release()

    def _maybe_retire_locked(self, *, pressure: bool = False) -> bool:
        """Caller holds _io. Delete the active segment when everything in it is committed.

        Done when it holds >= retire_bytes, or with `pressure` also when smaller but the spool
        is over half its limit or going idle (then no dead bytes stay behind).
        """
        with self._mu:
            if not self._segments:
                return False
            last = self._segments[-1]
            if self._committed < self._end or last.end != self._end:
                return False
            data_bytes = last.size - SEG_HEADER_BYTES
            if data_bytes <= 0 or (not pressure and data_bytes < self._retire_bytes):
                return False
            if pressure and data_bytes < self._retire_bytes:
                over = self._max_bytes is not None and (
                    self._disk_bytes + self._reserved > self._max_bytes // 2
                )
                budget_tight = (
                    self._budget is not None
                    and self._budget.max_bytes is not None
                    and self._budget.used > self._budget.max_bytes // 2
                )
                if not (over or budget_tight or self._dormant):
                    return False
        self._close_wfd()
        with self._rd, self._mu:
            dead = list(self._segments)
            self._segments.clear()
            freed = sum(s.size for s in dead)
            self._disk_bytes -= freed
            for s in dead:
                self._close_rfd(s.base)
                self._unlink(segment_name(s.base))
                self._unlink(f"{s.base}{CLEAN_SUFFIX}")
            self._boundaries.clear()
            self._note_size = -1
        if self._budget is not None:
            self._budget.adjust(-freed)
        return True

    # -- reading -----------------------------------------------------------------------------

    def _rfd(self, base: int) -> int:
        fd = self._rfds.get(base)
        if fd is None:
            fd = os.open(self._seg_path(base), os.O_RDONLY | _O_CLOEXEC)
            self._rfds[base] = fd
            while len(self._rfds) > 2:
                _, old = self._rfds.popitem(last=False)
                os.close(old)
        else:
            self._rfds.move_to_end(base)
        return fd

    def _close_rfd(self, base: int) -> None:
        fd = self._rfds.pop(base, None)
        if fd is not None:
            os.close(fd)

    def _locate(self, offset: int) -> tuple[_Segment | None, int, int, int]:
        """(segment, file position, start offset, line number) of the record holding `offset`.

        Caller holds _rd. `offset` may fall inside the record (callers check that it is a line
        boundary). Raises ValueError when it was deleted or no record holds it. For the end
        offset returns the position after the last record (start = end).
        """
        with self._mu:
            end, end_line = self._end, self._end_line
            segs = self._segments
            if offset == end:
                if segs and segs[-1].end == end:
                    return segs[-1], segs[-1].size, end, end_line
                return None, 0, end, end_line
            i = bisect.bisect_right(segs, offset, key=lambda s: s.base) - 1
            if i < 0:
                first = segs[0].base if segs else end
                raise ValueError(
                    f"offset {offset} of spool {self.name} is gone (first kept offset {first})"
                )
            seg = segs[i]
            limit = seg.size
        hit = self._boundaries.get(offset)
        if hit is not None and hit[0] == seg.base:
            return seg, hit[1], offset, hit[2]
        if offset == seg.base:
            return seg, SEG_HEADER_BYTES, offset, self._read_first_line(seg)
        # Start from the closest known record start at or before `offset`.
        o, p, ln = seg.base, SEG_HEADER_BYTES, -1
        j = bisect.bisect_right(seg.index, offset, key=lambda e: e[0]) - 1
        if j >= 0:
            o, p, ln = seg.index[j]
        for start, bpos, bline in seg.skips:
            if o < start <= offset:
                o, p, ln = start, bpos, bline
        for start, (base, bpos, bline) in self._boundaries.items():
            if base == seg.base and o < start <= offset:
                o, p, ln = start, bpos, bline
        if ln < 0:
            ln = self._read_first_line(seg)
        fd = self._rfd(seg.base)
        pos, off, line, _ = self._scan(fd, seg, p, o, ln, 0.0, limit, verify=False, stop_at=offset)
        if off == offset:
            return seg, pos, off, line
        hdr = _pread_full(fd, REC_HEADER_BYTES, pos) if pos < limit else b""
        if len(hdr) == REC_HEADER_BYTES:
            magic, _, start, _, length, _, _ = _REC_HDR.unpack(hdr)
            if magic == _REC_MAGIC and start == off and off < offset < off + length:
                return seg, pos, off, line
        raise ValueError(f"offset {offset} is not a record position in spool {self.name}")

    def read(self, from_offset: int, max_bytes: int = 1024 * 1024) -> list[Chunk]:
        """Durable chunks from position `from_offset` (any line boundary), ~`max_bytes` of payload.

        When `from_offset` falls inside a chunk, the first chunk returned is that chunk's tail
        (`start = from_offset`, its lines counted). Returns at least one chunk when any is
        available (even if larger than `max_bytes`), [] at the end. Only acknowledged (fsynced)
        data is visible. Verifies every checksum.
        """
        self._touch()
        with self._rd:
            with self._mu:
                if self._closed:
                    raise SpoolClosed(f"spool {self.name} is closed")
                end = self._end
                if from_offset >= end:
                    if from_offset > end:
                        raise ValueError(
                            f"read({from_offset}) is past the end of spool {self.name} ({end})"
                        )
                    return []
                first = self._segments[0].base if self._segments else end
                if from_offset < first:
                    if from_offset < self._committed:
                        raise ValueError(
                            f"offset {from_offset} of spool {self.name} was committed and deleted"
                        )
                    log.error("spool %s: offsets %d..%d lost", self.name, from_offset, first)
                    from_offset = first
            seg, pos, off, line = self._locate(from_offset)
            assert seg is not None
            skip = from_offset - off
            out: list[Chunk] = []
            total = 0
            unpack = _REC_HDR.unpack_from
            crc32 = zlib.crc32
            try:
                while off < end and (total < max_bytes or not out):
                    with self._mu:
                        limit = seg.size
                        nxt = None
                        if pos >= limit:
                            i = self._seg_index(seg.base)
                            if i is not None and i + 1 < len(self._segments):
                                nxt = self._segments[i + 1]
                    if pos >= limit:
                        if nxt is None:
                            break
                        if nxt.base != off:
                            log.error("spool %s: offsets %d..%d lost", self.name, off, nxt.base)
                        seg, pos, off = nxt, SEG_HEADER_BYTES, nxt.base
                        line = self._read_first_line(nxt)
                        continue
                    fd = self._rfd(seg.base)
                    want = min(limit - pos, max(max_bytes - total, 0) + 64 * 1024)
                    blk = _pread_full(fd, want, pos)
                    view = memoryview(blk)
                    i = 0
                    n = len(blk)
                    while i + REC_HEADER_BYTES <= n:
                        magic, crc, start, fl, length, lines, acc = unpack(blk, i)
                        if magic != _REC_MAGIC or start != off or fl != line:
                            self._corrupt(seg, off, pos + i, "bad record header")
                        j = i + REC_HEADER_BYTES + length
                        if j > n:
                            if i == 0:  # one record larger than the block: read exactly it
                                if pos + REC_HEADER_BYTES + length > limit:
                                    self._corrupt(seg, off, pos, "record runs past the segment end")
                                blk = _pread_full(fd, REC_HEADER_BYTES + length, pos)
                                view = memoryview(blk)
                                n = len(blk)
                                if n < REC_HEADER_BYTES + length:
                                    self._corrupt(seg, off, pos, "segment file is short")
                                continue
                            break
                        if crc32(view[i + 8 : j]) != crc:
                            self._corrupt(seg, off, pos + i, "checksum mismatch")
                        if skip:
                            head = blk[i + REC_HEADER_BYTES : i + REC_HEADER_BYTES + skip]
                            self._check_line_boundary(head, off + skip, off)
                            payload = blk[i + REC_HEADER_BYTES + skip : j]
                            out.append(
                                Chunk(
                                    off + skip, off + length, acc, payload, lines - head.count(10)
                                )
                            )
                            total += length - skip
                            skip = 0
                        else:
                            payload = blk[i + REC_HEADER_BYTES : j]
                            out.append(Chunk(off, off + length, acc, payload, lines))
                            total += length
                        off += length
                        line += lines
                        i = j
                        if total >= max_bytes:
                            break
                    if i == 0:
                        self._corrupt(seg, off, pos, "segment file is short")
                    pos += i
            except SpoolCorrupt:
                if out:  # hand over the good chunks first; the next read raises
                    return out
                raise
            if off < end:
                self._remember(off, seg.base, pos, line)
            return out

    def _corrupt(self, seg: _Segment, off: int, position: int, why: str) -> NoReturn:
        with self._mu:
            i = self._seg_index(seg.base)
            nxt = (
                self._segments[i + 1].base
                if i is not None and i + 1 < len(self._segments)
                else None
            )
        raise SpoolCorrupt(
            f"spool {self.name}: {why} at offset {off} (segment {seg.base}, byte {position})",
            offset=off,
            next_offset=nxt,
            segment=seg.base,
            position=position,
        )

    def quarantine(self, error: SpoolCorrupt) -> Quarantined:
        """Move the damaged bytes `error` names aside and commit past them. Blocking.

        The damaged record (and any that follow it up to the next record whose header and
        checksum verify) is copied to a file in the quarantine directory, then the spool is
        committed to the first good record, so delivery goes on. Nothing is guessed: the
        quarantined bytes are kept exactly as they were on disk for an operator to inspect.
        """
        if error.segment is None or error.position is None:
            raise ValueError("this SpoolCorrupt does not say where the damage is")
        if error.offset != self._committed:
            # The commit is one watermark: what precedes the damage must be delivered first.
            raise ValueError(
                f"spool {self.name}: commit up to {error.offset} before quarantining the damage "
                f"(committed: {self._committed})"
            )
        with self._commit_lock:
            with self._rd, self._mu:
                i = self._seg_index(error.segment)
                if i is None or self._committed > error.offset:
                    raise ValueError(f"spool {self.name}: segment {error.segment} is gone")
                seg = self._segments[i]
                nxt_seg = self._segments[i + 1] if i + 1 < len(self._segments) else None
                limit = seg.size
                end, end_line = self._end, self._end_line
            fd = os.open(self._seg_path(seg.base), os.O_RDONLY | _O_CLOEXEC)
            try:
                good = self._resync(
                    fd,
                    error.position + 1,
                    error.offset,
                    limit,
                    origin=error.position,
                    after_line=self._committed_line,
                )
                if good is not None:
                    stop_pos, nstart, nline = good
                elif nxt_seg is not None:
                    stop_pos, nstart = limit, nxt_seg.base
                    nline = self._read_first_line(nxt_seg)
                else:
                    stop_pos, nstart, nline = limit, end, end_line
                damaged = _pread_full(fd, stop_pos - error.position, error.position)
            finally:
                os.close(fd)
            os.makedirs(self._quarantine_dir, mode=0o700, exist_ok=True)
            path = os.path.join(self._quarantine_dir, f"{error.offset:020d}-{nstart:020d}.bin")
            write_atomic(path, damaged)
            lines = max(0, nline - self._committed_line) if nstart > error.offset else 0
            log.error(
                "spool %s: quarantined %d damaged bytes (offsets %d..%d) to %s",
                self.name,
                len(damaged),
                error.offset,
                nstart,
                path,
            )
            if nstart < end and good is not None:
                self._remember(nstart, seg.base, stop_pos, nline)
                with self._mu:
                    if not seg.skips or seg.skips[-1][0] < nstart:
                        seg.skips.append((nstart, stop_pos, nline))
        self._commit_skipping(nstart, nline)
        return Quarantined(error.offset, nstart, len(damaged), lines, path)

    def _resync(
        self,
        fd: int,
        pos: int,
        after: int,
        limit: int,
        *,
        origin: int | None = None,
        after_line: int | None = None,
    ) -> tuple[int, int, int] | None:
        """The first record at or after file position `pos` whose header and CRC verify and
        whose start offset lies past `after`: (position, start offset, line).

        With `origin` (file position of the damaged record at offset `after`, line
        `after_line`), a candidate must also fit what lies between: its offset can exceed
        `after` by at most the bytes in between less one header, and it starts a later line."""
        block = 1024 * 1024
        while pos < limit:
            buf = _pread_full(fd, min(block + REC_HEADER_BYTES, limit - pos), pos)
            at = buf.find(_REC_MAGIC)
            while at >= 0:
                p = pos + at
                hdr = _pread_full(fd, REC_HEADER_BYTES, p)
                if len(hdr) == REC_HEADER_BYTES:
                    _, crc, start, fl, length, lines, _ = _REC_HDR.unpack(hdr)
                    fits = (origin is None or start - after <= p - origin - REC_HEADER_BYTES) and (
                        after_line is None or fl > after_line
                    )
                    if (
                        fits
                        and start > after
                        and length > 0
                        and lines > 0
                        and p + REC_HEADER_BYTES + length <= limit
                    ):
                        body = _pread_full(fd, REC_HEADER_BYTES + length, p)
                        if zlib.crc32(memoryview(body)[8:]) == crc:
                            return p, start, fl
                at = buf.find(_REC_MAGIC, at + 1)
            if len(buf) <= REC_HEADER_BYTES:
                break
            pos += len(buf) - REC_HEADER_BYTES
        return None

    def _commit_skipping(self, offset: int, line: int) -> None:
        """Commit to `offset` (a record start past damaged bytes) without reading through them."""
        with self._commit_lock:
            with self._rd:
                hit = self._boundaries.get(offset)
                base, pos = (hit[0], hit[1]) if hit is not None else (0, 0)
            data = _COMMIT2.pack(
                _COMMIT2_MAGIC, offset, line, base, pos, offset, line, self._last_accepted
            )
            self._commit_file.save(_with_crc(data))
            with self._mu:
                self._committed = offset
                self._committed_line = line
            self._delete_sealed_below(offset)
            self._try_retire()

    def wait_for_data(self, offset: int, timeout: float | None = None) -> bool:
        """Block until data past `offset` is durable (True) or `timeout` / close (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._end > offset or self._closed, timeout)
            return self._end > offset

    async def wait_for_data_async(self, offset: int, timeout: float | None = None) -> bool:
        """`wait_for_data` for the event loop."""
        loop = asyncio.get_running_loop()
        with self._mu:
            if self._end > offset or self._closed:
                return self._end > offset
            fut: asyncio.Future[bool] = loop.create_future()
            entry = (loop, fut, offset)
            self._async_waiters.append(entry)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            with self._mu:
                if entry in self._async_waiters:
                    self._async_waiters.remove(entry)
        return self._end > offset

    # -- idle / close ------------------------------------------------------------------------

    def release(self) -> bool:
        """Close file handles and drop caches if nothing is in flight; False if busy.

        The spool stays usable: the next call reopens what it needs. Fully committed data in the
        active segment is deleted; otherwise a `.clean` note spares the next open a full scan.
        """
        if not self._io.acquire(blocking=False):
            return False
        try:
            with self._mu:
                if self._queue or self._flushing:
                    return False
                self._dormant = True
            if not self._maybe_retire_locked(pressure=True):
                self._write_note()
            self._close_wfd()
            with self._rd:
                for fd in self._rfds.values():
                    os.close(fd)
                self._rfds.clear()
                self._boundaries.clear()
                for s in self._segments:
                    s.index = []
            return True
        finally:
            self._io.release()

    def _write_note(self) -> None:
        """Caller holds _io. A cache only: written without fsync, validated on read."""
        if not self._segments or self._broken is not None:
            return
        last = self._segments[-1]
        if last.end != self._end or last.size == self._note_size:
            return
        body = _CLEAN.pack(
            _CLEAN_MAGIC, last.base, last.size, last.end, self._end_line, self._last_accepted
        )
        try:
            write_atomic(
                os.path.join(self._dir, f"{last.base}{CLEAN_SUFFIX}"),
                _with_crc(body),
                durable=False,
            )
            self._note_size = last.size
        except OSError as e:
            log.warning("spool %s: could not write clean note: %s", self.name, e)

    def close(self) -> None:
        """Finish queued appends, close handles; further appends raise SpoolClosed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True  # new appends are refused; queued ones still get written
            self._cond.wait_for(lambda: not self._flushing)
        with self._io:
            self._write_note()
            self._close_wfd()
            with self._rd:
                for fd in self._rfds.values():
                    os.close(fd)
                self._rfds.clear()
        with self._cond:
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for loop, fut, _ in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                pass

    def __repr__(self) -> str:
        return (
            f"Spool({self.name!r}, committed={self._committed}, end={self._end}, "
            f"segments={len(self._segments)})"
        )
