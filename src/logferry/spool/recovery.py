"""Recovery: reading a spool's files back when it is opened, and walking its records.

Only the newest segment can have a torn tail (a new segment is created only after the previous
batch was fsynced), so opening scans just that one (or trusts its `.clean` note) and cuts what
was never acknowledged. A bad record that a valid one follows is damage to acknowledged data,
not a torn tail: it is kept in place and `quarantine.py` moves it aside when delivery reaches
it. Segments below the committed offset (a crash between commit and delete) are deleted here.
"""

from __future__ import annotations

import itertools
import logging
import os
import zlib

from logferry.spool.errors import SpoolCorrupt
from logferry.spool.files import _O_CLOEXEC, _pread_full
from logferry.spool.format import (
    _CLEAN,
    _CLEAN_MAGIC,
    _COMMIT,
    _COMMIT2,
    _COMMIT2_MAGIC,
    _COMMIT_MAGIC,
    _REC_HDR,
    _REC_MAGIC,
    _SEG_HDR,
    _SEG_MAGIC,
    CLEAN_SUFFIX,
    MAX_CHUNK_BYTES,
    REC_HEADER_BYTES,
    SEG_HEADER_BYTES,
    TMP_SUFFIX,
    check_crc,
    parse_segment_name,
    segment_name,
)
from logferry.spool.state import INDEX_INTERVAL, _Segment
from logferry.spool.waiters import LogWaiters

log = logging.getLogger(__name__)


def resync(
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


class LogRecovery(LogWaiters):
    """Opening a spool: its segments, the committed position, a torn tail cut, damage noted."""

    def _load(self) -> None:
        names: list[str] = []
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            names = []
        for n in names:
            if n.endswith(TMP_SUFFIX):  # half-written replacement from a crash: the old file wins
                self._unlink(n)
        bases = sorted(b for b in (parse_segment_name(n) for n in names) if b is not None)
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
        body = check_crc(blob, _COMMIT2.size)
        if body is not None and body[:8] == _COMMIT2_MAGIC:
            _, off, line, base, pos, rstart, rline, floor = _COMMIT2.unpack(body)
            return off, line, base, pos, rstart, rline, floor
        body = check_crc(blob, _COMMIT.size)  # written by earlier versions: a record start
        if body is not None and body[:8] == _COMMIT_MAGIC:
            _, off, line, base, pos, floor = _COMMIT.unpack(body)
            return off, line, base, pos, off, line, floor
        log.error("spool %s: committed file is damaged; redelivering from the start", self.name)
        return None

    def _read_seg_header(self, fd: int, size: int) -> tuple[int, int, float] | None:
        if size < SEG_HEADER_BYTES:
            return None
        blob = _pread_full(fd, SEG_HEADER_BYTES, 0)
        body = check_crc(blob[: _SEG_HDR.size + 4], _SEG_HDR.size)
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
                good = resync(fd, pos + 1, off, file_size, origin=pos, after_line=line)
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
        body = check_crc(blob, _CLEAN.size)
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
