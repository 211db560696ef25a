"""The spool's on-disk format under damage: a torn tail or a flipped bit is detected (the record
is cut off on open or reading it raises SpoolCorrupt), and no record is ever read back altered."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.spool.chunk import Chunk
from logferry.spool.format import _REC_HDR, REC_HEADER_BYTES, SEG_HEADER_BYTES, SEG_SUFFIX
from logferry.spool.log import Spool, SpoolCorrupt, SpoolError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEGMENT = 2048

line = st.binary(min_size=1, max_size=120).map(lambda b: b.replace(b"\n", b"."))
batches = st.lists(st.lists(line, min_size=1, max_size=8), min_size=1, max_size=40)


def write(directory: Path, records: list[list[bytes]]) -> list[Chunk]:
    spool = Spool(directory, segment_bytes=SEGMENT)
    try:
        return [spool.append_sync(b"".join(x + b"\n" for x in r), len(r)) for r in records]
    finally:
        spool.close()


def read_all(directory: Path) -> tuple[list[Chunk], bool]:
    """Every chunk readable from the start, and whether reading stopped at detected damage."""
    spool = Spool(directory, segment_bytes=SEGMENT)
    out: list[Chunk] = []
    try:
        offset = spool.committed_offset
        while offset < spool.end_offset:
            try:
                chunks = spool.read(offset)
            except SpoolCorrupt:
                return out, True
            if not chunks:
                break
            out += chunks
            offset = chunks[-1].end
        return out, False
    finally:
        spool.close()


def assert_unaltered(read: list[Chunk], written: list[Chunk]) -> None:
    """What was read is the written records, in order, byte for byte (reads may merge
    neighbouring records: compare the bytes over the offsets)."""
    if not read:
        return
    assert read[0].start == written[0].start
    got = b"".join(c.data for c in read)
    want = b"".join(c.data for c in written)
    assert want.startswith(got), "a record was read back altered"
    ends = {c.end for c in written}
    assert read[-1].end in ends, "a read stopped inside a record"
    assert sum(c.lines for c in read) == got.count(b"\n")


@FUZZ
@given(records=batches, cut=st.integers(0, 10**6))
def test_a_torn_newest_segment_loses_only_its_tail(records: list[list[bytes]], cut: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        written = write(directory, records)
        newest = sorted(directory.glob(f"*{SEG_SUFFIX}"))[-1]
        size = newest.stat().st_size
        keep = SEG_HEADER_BYTES + cut % (size - SEG_HEADER_BYTES + 1)
        # Records lying wholly in front of the cut: (end position in the file, end offset).
        blob, pos, expected_end = newest.read_bytes(), SEG_HEADER_BYTES, int(newest.stem)
        while pos < size:
            _magic, _crc, start, _line, length, _lines, _at = _REC_HDR.unpack_from(blob, pos)
            pos += REC_HEADER_BYTES + length
            if pos <= keep:
                expected_end = start + length
        with newest.open("r+b") as f:
            f.truncate(keep)
        try:
            read, damaged = read_all(directory)
        except SpoolError:
            return  # detected on open
        assert not damaged
        assert_unaltered(read, written)
        # Exactly the records that lay wholly in front of the cut are still there.
        assert (read[-1].end if read else written[0].start) == expected_end


@FUZZ
@given(records=batches, where=st.integers(0, 10**9), flip=st.integers(1, 255))
def test_a_flipped_byte_is_detected_never_misread(
    records: list[list[bytes]], where: int, flip: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        written = write(directory, records)
        segments = sorted(directory.glob(f"*{SEG_SUFFIX}"))
        total = sum(s.stat().st_size for s in segments)
        at = where % total
        for segment in segments:
            size = segment.stat().st_size
            if at < size:
                break
            at -= size
        with segment.open("r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ flip]))
        try:
            read, _damaged = read_all(directory)
        except SpoolError:
            return  # detected on open
        assert_unaltered(read, written)
