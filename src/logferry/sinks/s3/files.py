"""File planning: which lines go into which file, framed and compressed into members and parts.

The in-memory shape of a file being built (`OpenFile`), its part buffer, and the feeding methods
of `S3Sink` (functions taking the sink as `self`, bound in its class body so that mypy checks
them against its attributes) that cut the spool's lines into files. Every boundary follows from
the data (period of `accepted_at`, `file_max_bytes` on framed bytes) or from the journal, so a
replay rebuilds the same files under the same keys (see docs/architecture.md, "Sinks").
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from logferry.sinks.framing import frame
from logferry.sinks.s3_journal import Part
from logferry.spool.chunk import Chunk

if TYPE_CHECKING:
    from logferry.sinks.s3.sink import S3Sink

MIB: Final = 1024 * 1024
MIN_PART_SIZE: Final = 5 * MIB  # S3: every part but the last
MAX_PARTS: Final = 10_000
DEFAULT_PART_SIZE: Final = 8 * MIB
DEFAULT_MEMBER_SIZE: Final = 2 * MIB
_NEWLINE: Final = 0x0A
SPILL_SUFFIX: Final = ".spill"
"""Compressed members of a PGP file wait on disk under this suffix until the file closes."""
ENCRYPTED_SUFFIX: Final = ".pgp-out"
"""The encrypted PGP file before its upload."""

MAX_PENDING_MEMBERS = 2
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _compress_pool() -> ThreadPoolExecutor:
    """One compression pool for every sink: codecs release the GIL, so members of all open
    files compress on all cores while delivery threads frame and upload."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="compress"
            )
        return _pool


class _PartBuffer:
    """Compressed members of the part being filled, joined once when the part is cut.

    One allocation of the part's exact size, which glibc maps on its own (above the threshold
    `s3_budget.configure_shared_budget` pins) and returns to the system when the upload is done,
    instead of a bytearray grown by reallocation inside a thread's arena, which keeps it.
    """

    __slots__ = ("_members", "_size")

    def __init__(self) -> None:
        self._members: list[bytes] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, member: bytes) -> None:
        if member:
            self._members.append(member)
            self._size += len(member)

    def take(self) -> bytearray:
        """The part's bytes, allocated once at their exact size; the buffer is empty afterwards.

        A bytearray, as before: botocore sends it as it is (a bytes body would be wrapped in a
        file and get `Expect: 100-continue`, a round trip per part)."""
        body = bytearray().join(self._members)
        self._members = []
        self._size = 0
        return body

    def take_bytes(self) -> bytes:
        """`take` for a PutObject body (see `_put_without_expect`), in one allocation too."""
        body = b"".join(self._members)
        self._members = []
        self._size = 0
        return body


@dataclass
class Flight:
    """One UploadPart submitted to the io pool."""

    future: Future[dict[str, Any]]
    end: int
    framed: int
    size: int


@dataclass
class OpenFile:
    """A file being built or uploaded (in memory: one member of framed lines, one part being
    filled, and the parts queued or in flight, bounded by `parts_in_flight`)."""

    key: str
    start: int
    period_start: int
    boundary: int | None = None
    """Journaled end: the file must end exactly here (a replay of a decided file)."""
    data_end: int = 0
    framed: int = 0
    raw: list[bytes] = field(default_factory=list)
    raw_size: int = 0
    buf: _PartBuffer = field(default_factory=_PartBuffer)
    """Compressed members not yet uploaded (non-PGP)."""
    sealed_end: int = 0
    sealed_framed: int = 0
    upload_id: str | None = None
    created: float | None = None
    """When the upload was created (journaled with it; see `ActiveFile.created`)."""
    parts: list[Part] = field(default_factory=list)
    spill: Any = None
    spill_path: Path | None = None
    must_close: bool = False
    pending: deque[tuple[Future[bytes], int, int]] = field(default_factory=deque)
    """Members being compressed on the shared pool: (future, data end, framed bytes)."""
    pgp: bool = False
    next_number: int = 1
    """Part number of the next part cut from `buf`."""
    queued: deque[tuple[int, bytearray, int, int]] = field(default_factory=deque)
    """Full parts waiting for a slot: (number, body, data end, framed bytes)."""
    flights: dict[int, Flight] = field(default_factory=dict)
    done: dict[int, Part] = field(default_factory=dict)
    """Uploaded parts not yet journaled: they wait for every lower part (no gaps)."""
    create: Future[dict[str, Any]] | None = None
    final: Future[dict[str, Any]] | None = None
    """The PutObject or CompleteMultipartUpload that finishes the file."""
    final_size: int = 0
    closed: bool = False
    """The file's end is decided (`end`); it only uploads from here on."""
    end: int = 0
    implied: bool = False
    """The end follows from the data alone (period change, file_max): a replay cuts it at the
    same line without the journal, so it needs no journal write of its own."""
    end_saved: bool = False
    """The journal's active entry holds this file's end."""

    @property
    def multipart(self) -> bool:
        return bool(self.upload_id or self.create or self.queued or self.flights or self.parts)

    def futures(self) -> list[Future[Any]]:
        found: list[Future[Any]] = [fl.future for fl in self.flights.values()]
        found += [x for x in (self.create, self.final) if x is not None]
        return found


def _line_cut(data: bytes, start: int, target: int) -> int:
    """The line boundary at or before `target` (past `start`); a longer line is taken whole."""
    if target >= len(data):
        return len(data)
    nl = data.rfind(b"\n", start, target)
    if nl >= start:
        return nl + 1
    return data.index(b"\n", target) + 1


def _feed(self: S3Sink, chunk: Chunk) -> None:
    data = chunk.data
    pos = self._pos
    if pos is not None and chunk.end <= pos:
        return
    i = 0
    if pos is not None and chunk.start < pos:
        i = pos - chunk.start
        if data[i - 1] != _NEWLINE:
            raise ValueError(
                f"resume offset {pos} is not at a line boundary of chunk "
                f"[{chunk.start}, {chunk.end}): the spool no longer matches the journal"
            )
    self._pos = chunk.end
    period_start = self.endpoint.period_start(chunk.accepted_at)
    file_max = self.endpoint.file_max_bytes
    n = len(data)
    while i < n:
        off = chunk.start + i
        f = self._file
        if f is not None and f.boundary is None and f.period_start != period_start:
            self._close(f, implied=True)
            f = None
        if f is None:
            f = self._open(off, period_start)
        limit = n if f.boundary is None else min(n, f.boundary - chunk.start)
        if limit <= i:
            raise ValueError(
                f"chunk [{chunk.start}, {chunk.end}) passes the journaled end {f.boundary} "
                f"of {f.key}: the spool no longer matches the journal"
            )
        j = _line_cut(data, i, min(limit, i + self.member_size))
        piece = data[i:j]
        framed = self._frame(piece, chunk.accepted_at)
        full = False
        if f.boundary is None and file_max and f.framed + len(framed) > file_max:
            cut = self._fit(piece, file_max - f.framed, chunk.accepted_at)
            if cut == 0 and f.framed > 0:
                self._close(f, implied=self._portable_sizes)
                continue
            cut = cut or piece.index(b"\n") + 1  # one oversized line: a file of its own
            piece = piece[:cut]
            framed = self._frame(piece, chunk.accepted_at)
            full = True
        self._add(f, framed, off + len(piece))
        self.stats.bytes_in += len(piece)
        i += len(piece)
        if full or f.must_close or (f.boundary is not None and f.data_end >= f.boundary):
            self._close(f, implied=not full or self._portable_sizes)


def _frame(self: S3Sink, piece: bytes, accepted_at: float) -> bytes:
    return frame(
        piece,
        self.endpoint.message_type,
        hostname=self._hostname,
        service=self.endpoint.name,
        accepted_at=accepted_at,
        pid=self._pid,
    )


def _fit(self: S3Sink, piece: bytes, room: int, accepted_at: float) -> int:
    """Bytes of `piece` (whole lines) whose framed form fits in `room`."""
    if room <= 0:
        return 0
    if self.endpoint.message_type == "blank":
        return piece.rfind(b"\n", 0, room) + 1
    ends: list[int] = []
    at = piece.find(b"\n")
    while 0 <= at < room:  # framing only adds bytes: lines past `room` cannot fit
        ends.append(at + 1)
        at = piece.find(b"\n", at + 1)
    lo, hi = 0, len(ends)  # invariant: ends[:lo] fit, ends[hi:] do not
    while lo < hi:
        mid = (lo + hi) // 2
        if len(self._frame(piece[: ends[mid]], accepted_at)) <= room:
            lo = mid + 1
        else:
            hi = mid
    return ends[lo - 1] if lo else 0


def _open(self: S3Sink, off: int, period_start: int) -> OpenFile:
    plan = self._plan
    if plan is not None and off > plan.start:
        self._plan = plan = None  # the caller fed past it: nothing to rebuild
    if plan is not None and off == plan.start:
        self._plan = None
        f = OpenFile(key=plan.key, start=off, period_start=plan.period_start)
        f.boundary = plan.end
    else:
        uid = f"{self.uid_prefix}{off:016x}"
        f = OpenFile(
            key=self.endpoint.object_key(period_start, uid),
            start=off,
            period_start=period_start,
        )
    f.data_end = f.sealed_end = off
    if self._pgp_key is not None:
        f.spill_path = self.state_dir / f"{f.start:016x}{SPILL_SUFFIX}"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        f.spill = open(f.spill_path, "w+b")  # noqa: SIM115 - closed in _close/_discard
        f.pgp = True
    self._file = f
    self._files.append(f)
    return f


def _add(self: S3Sink, f: OpenFile, framed: bytes, end: int) -> None:
    f.raw.append(framed)
    f.raw_size += len(framed)
    f.framed += len(framed)
    f.data_end = end
    if f.raw_size >= self.member_size:
        self._seal(f)
        if f.spill is None and len(f.buf) >= self.part_size:
            if f.next_number >= MAX_PARTS:
                f.must_close = True  # the rest becomes the final part
            else:
                self._cut_part(f)


def _seal(self: S3Sink, f: OpenFile) -> None:
    """Compress the pending lines into one member, on the shared compression pool.

    Members are independent, so up to MAX_PENDING_MEMBERS compress in parallel while this
    thread keeps framing; they are appended strictly in order (`_take`), and `sealed_end`
    only ever covers members already in `buf`, which is what the journal records.
    """
    if not f.raw:
        return
    data = f.raw[0] if len(f.raw) == 1 else b"".join(f.raw)
    f.raw.clear()
    f.raw_size = 0
    future: Future[bytes]
    if self._codec.name == "none":
        future = Future()
        future.set_result(data)
    else:
        future = _compress_pool().submit(self._codec.compress, data)
    f.pending.append((future, f.data_end, f.framed))
    # A fixed window (not "whatever is done") keeps part boundaries a function of the data.
    limit = 0 if self._codec.name == "none" else MAX_PENDING_MEMBERS
    while len(f.pending) > limit:
        self._take(f)


def _take(self: S3Sink, f: OpenFile) -> None:
    future, end, framed = f.pending.popleft()
    member = future.result()
    if f.spill is not None:
        f.spill.write(member)
    else:
        f.buf.append(member)
    f.sealed_end = end
    f.sealed_framed = framed


def _drain(self: S3Sink, f: OpenFile) -> None:
    while f.pending:
        self._take(f)
