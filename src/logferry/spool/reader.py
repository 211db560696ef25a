"""Reading: durable chunks from any position (a line boundary), every checksum verified.

A position inside a chunk returns that chunk's tail first (the contract in `logferry.spool`).
Records are found through a sparse per-segment index, the places a recent read or commit
stopped (`_boundaries`) and the skips past quarantined damage; only fsynced data is visible.
Damage raises `SpoolCorrupt` after the good chunks before it were handed over.
"""

from __future__ import annotations

import bisect
import logging
import os
import zlib
from typing import NoReturn

from logferry.spool.chunk import Chunk
from logferry.spool.errors import SpoolClosed, SpoolCorrupt
from logferry.spool.files import _O_CLOEXEC, _pread_full
from logferry.spool.format import _REC_HDR, _REC_MAGIC, REC_HEADER_BYTES, SEG_HEADER_BYTES
from logferry.spool.recovery import LogRecovery
from logferry.spool.state import _Segment

log = logging.getLogger(__name__)

MAX_BOUNDARIES = 64
BLOCK_BYTES = 256 * 1024
"""Records are read in blocks of up to this much; a record running past its block has its
payload read on its own (a large request: no copy out of a block)."""
"""Remembered record starts (where reads and commits stopped): enough for one reader and
one committer per spool, each a few steps apart."""


class LogReader(LogRecovery):
    """Reading chunks from a position; finding the record that holds a position."""

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
                    want = min(limit - pos, max(max_bytes - total, 0) + 64 * 1024, BLOCK_BYTES)
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
                            # Past the block: its payload is read on its own, straight into
                            # the chunk's bytes (slicing it out of a block copied every large
                            # request once more, with the GIL held).
                            at = pos + i
                            if at + REC_HEADER_BYTES + length > limit:
                                self._corrupt(seg, off, at, "record runs past the segment end")
                            body = _pread_full(fd, length, at + REC_HEADER_BYTES)
                            if len(body) < length:
                                self._corrupt(seg, off, at, "segment file is short")
                            if crc32(body, crc32(view[i + 8 : i + REC_HEADER_BYTES])) != crc:
                                self._corrupt(seg, off, at, "checksum mismatch")
                            total += self._take(out, body, 0, off, length, lines, acc, skip)
                            skip = 0
                            off += length
                            line += lines
                            i = j
                            break
                        if crc32(view[i + 8 : j]) != crc:
                            self._corrupt(seg, off, pos + i, "checksum mismatch")
                        total += self._take(
                            out, blk, i + REC_HEADER_BYTES, off, length, lines, acc, skip
                        )
                        skip = 0
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

    def _take(
        self,
        out: list[Chunk],
        buf: bytes,
        at: int,
        off: int,
        length: int,
        lines: int,
        acc: float,
        skip: int,
    ) -> int:
        """Append the record whose payload is `buf[at : at + length]` (the whole of `buf`, not
        copied, when it is exactly that), less its first `skip` bytes; bytes taken."""
        if skip:
            head = buf[at : at + skip]
            self._check_line_boundary(head, off + skip, off)
            payload = buf[at + skip : at + length]
            out.append(Chunk(off + skip, off + length, acc, payload, lines - head.count(10)))
            return length - skip
        payload = buf if at == 0 and len(buf) == length else buf[at : at + length]
        out.append(Chunk(off, off + length, acc, payload, lines))
        return length

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
        while len(self._boundaries) > MAX_BOUNDARIES:
            self._boundaries.popitem(last=False)
