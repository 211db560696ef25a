"""Quarantine: moving damaged bytes aside so delivery goes on after them.

Nothing is guessed or dropped silently: the damaged record (and any that follow it up to the
next record whose header and checksum verify) is copied byte for byte to a file in the
quarantine directory, then the spool is committed to the first good record. The commit is one
watermark, so every line before the damage must be committed first.
"""

from __future__ import annotations

import logging
import os

from logferry.spool.errors import Quarantined, SpoolCorrupt
from logferry.spool.files import _O_CLOEXEC, _pread_full, write_atomic
from logferry.spool.format import _COMMIT2, _COMMIT2_MAGIC, with_crc
from logferry.spool.recovery import resync
from logferry.spool.retention import LogRetention

log = logging.getLogger(__name__)


class LogQuarantine(LogRetention):
    """`quarantine(error)`: damaged bytes to a file, the commit moved past them."""

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
                good = resync(
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

    def _commit_skipping(self, offset: int, line: int) -> None:
        """Commit to `offset` (a record start past damaged bytes) without reading through them."""
        with self._commit_lock:
            with self._rd:
                hit = self._boundaries.get(offset)
                base, pos = (hit[0], hit[1]) if hit is not None else (0, 0)
            data = _COMMIT2.pack(
                _COMMIT2_MAGIC, offset, line, base, pos, offset, line, self._last_accepted
            )
            self._commit_file.save(with_crc(data))
            with self._mu:
                self._committed = offset
                self._committed_line = line
            self._delete_sealed_below(offset)
            self._try_retire()
