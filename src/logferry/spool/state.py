"""The local log's shared state: what one endpoint's spool knows about its segment files.

Every role module of the local spool (recovery, reader, retention, quarantine, waiters,
writer; docs/architecture.md, "The spool") is a layer over `LogState`, each using only the
layers below it, so the state, the locks that guard it and a few small file helpers live here once.

Lock order (outer to inner): `_commit_lock`, `_io`, `_rd`, `_mu`, budget. `_io` serialises file
mutation (the flush batch, retiring the active segment, release/close), `_rd` the read-side
file handles (segment deletion takes it so no reader pread()s a closed, reused fd), `_mu` the
in-memory state.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, cast

from logferry.spool.budget import SpoolBudget, _Rate
from logferry.spool.format import COMMITTED_NAME, REC_HEADER_BYTES, SEG_HEADER_BYTES, segment_name
from logferry.spool.group_sync import GroupSync
from logferry.spool.slot_file import SlotFile

if TYPE_CHECKING:
    from logferry.spool.batch import _Pending
    from logferry.spool.log import LocalSpool

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
INDEX_INTERVAL = 256 * 1024
"""A sparse (offset -> file position) entry every this many bytes, to find an offset quickly."""

AsyncWaiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[bool]", int]
"""(loop, future, offset): a `wait_for_data_async` call waiting for data past `offset`."""


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


class LogState:
    """State, locks and file helpers shared by the local log's role layers. Not used alone:
    `LocalSpool` (log.py) is the complete spool."""

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
        on_activate: Callable[[LocalSpool], None] | None = None,
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
        self._async_waiters: list[AsyncWaiter] = []
        self._note_size = -1
        self._rate = _Rate()
        self.last_used = time.monotonic()
        self.truncated_bytes = 0
        """Torn-tail bytes cut off when this spool was opened (never-acknowledged data)."""
        self.damaged_at_open = 0
        """Damaged byte ranges found inside the newest segment when it was opened (kept in
        place with the records after them; delivery quarantines them when it reaches them)."""
        self._load()

    def _load(self) -> None:
        """Read the spool's files back (recovery.py provides it)."""
        raise NotImplementedError

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

    def _touch(self) -> None:
        self.last_used = time.monotonic()
        if self._dormant:
            self._dormant = False
            if self._on_activate is not None:
                self._on_activate(cast("LocalSpool", self))

    def _effective_segment_bytes(self) -> int:
        # With a small per-endpoint limit, smaller segments let space come back before the
        # spool has to drain completely.
        if self._max_bytes:
            return max(SEG_HEADER_BYTES + 4096, min(self._segment_bytes, self._max_bytes // 4))
        return self._segment_bytes

    def _close_wfd(self) -> None:
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
