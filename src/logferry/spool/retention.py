"""Retention: committing positions and giving disk space back.

`commit` persists the committed position (one slot of the committed file, fdatasynced) before
it deletes whole segments below it; a crash in between leaves segments that the next open
deletes. Space comes back a whole segment at a time, plus: a fully committed active segment is
retired once it holds >= retire_bytes, when the spool is under pressure, or when it goes idle
(`release`), so caught-up endpoints keep no dead data.
"""

from __future__ import annotations

import logging
import os

from logferry.spool.errors import SpoolClosed
from logferry.spool.files import _pread_full, write_atomic
from logferry.spool.format import (
    _CLEAN,
    _CLEAN_MAGIC,
    _COMMIT2,
    _COMMIT2_MAGIC,
    CLEAN_SUFFIX,
    REC_HEADER_BYTES,
    SEG_HEADER_BYTES,
    segment_name,
    with_crc,
)
from logferry.spool.reader import LogReader

log = logging.getLogger(__name__)


class LogRetention(LogReader):
    """Commits, segment deletion, retiring the active segment, idling (`release`)."""

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
            self._commit_file.save(with_crc(data))
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
                with_crc(body),
                durable=False,
            )
            self._note_size = last.size
        except OSError as e:
            log.warning("spool %s: could not write clean note: %s", self.name, e)
