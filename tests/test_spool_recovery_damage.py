"""Recovery after a crash keeps every intact acknowledged record behind damaged bytes (issue 27).

A damaged record in the middle of the newest segment used to be treated as a torn tail: the open
cut it off together with every acknowledged record after it. Now only a tail that nothing valid
follows is cut; damage that valid records follow stays in place, delivery reaches it, and
`quarantine` moves exactly those bytes aside (as for a sealed segment).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.spool import Chunk, Spool, SpoolCorrupt
from logferry.spool import log as spool_log

SEG = spool_log.SEG_HEADER_BYTES
REC = spool_log.REC_HEADER_BYTES


def lines_of(tag: str, n: int, width: int = 1) -> tuple[bytes, int]:
    return b"".join(f"{tag}-{j}-{'w' * width}\n".encode() for j in range(n)), n


def fill(directory: Path, sizes: list[tuple[int, int]], **kw: object) -> list[Chunk]:
    spool = Spool(directory, **kw)  # type: ignore[arg-type]
    acked = [spool.append_sync(*lines_of(f"r{i}", n, w)) for i, (n, w) in enumerate(sizes)]
    spool.close()
    for note in directory.glob("*.clean"):  # a kill -9 leaves no note behind
        note.unlink()
    return acked


def positions(acked: list[Chunk]) -> list[int]:
    """File positions of each record in a single segment."""
    out, pos = [], SEG
    for c in acked:
        out.append(pos)
        pos += REC + len(c.data)
    return out


def deliver_all(spool: Spool, *, release_every: int = 0) -> tuple[list[Chunk], list[object]]:
    """What a delivery worker does: read, commit, quarantine on SpoolCorrupt, go on."""
    got: list[Chunk] = []
    quarantined = []
    pos = spool.committed_offset
    steps = 0
    while True:
        steps += 1
        if release_every and steps % release_every == 0:
            assert spool.release()  # drops caches: positions past damage must still resolve
        try:
            chunks = spool.read(pos, 200)
        except SpoolCorrupt as err:
            spool.commit(err.offset)
            q = spool.quarantine(err)
            quarantined.append(q)
            pos = q.end
            continue
        if not chunks:
            return got, quarantined
        got += chunks
        pos = chunks[-1].end
        spool.commit(pos)


def damage(raw: bytearray, at: int, how: str, length: int) -> None:
    """Damage the record at file position `at` (header or payload)."""
    if how == "payload":
        raw[at + REC + length // 2] ^= 0x41
    elif how == "magic":
        raw[at] ^= 0xFF
    elif how == "length":  # a length that runs far past the file
        raw[at + 8 + 16 : at + 8 + 20] = (10**8).to_bytes(4, "little")
    elif how == "offset":
        raw[at + 8] ^= 0x01
    else:  # "zeros": the whole record reads back as zeros
        raw[at : at + REC + length] = bytes(REC + length)


KINDS = ["payload", "magic", "length", "offset", "zeros"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 90)), min_size=3, max_size=14),
    picks=st.lists(st.tuples(st.integers(0, 13), st.sampled_from(KINDS)), min_size=1, max_size=3),
    torn=st.sampled_from(["none", "partial", "garbage", "zeros"]),
    release_every=st.sampled_from([0, 2]),
)
def test_recovery_keeps_every_intact_record_after_damage(
    sizes: list[tuple[int, int]],
    picks: list[tuple[int, str]],
    torn: str,
    release_every: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "ep"
        acked = fill(d, sizes, segment_bytes=1 << 20, retire_bytes=10**9)
        seg = sorted(d.glob("*.seg"))[-1]
        raw = bytearray(seg.read_bytes())
        where = positions(acked)
        damaged = {index % len(acked): how for index, how in picks}  # each record once
        for i, how in damaged.items():
            damage(raw, where[i], how, len(acked[i].data))
        if torn == "partial":  # a batch being written when the process died
            data, n = lines_of("never-acked", 3)
            fields = spool_log._REC_FIELDS.pack(acked[-1].end, 0, len(data), n, 0.0)
            raw += spool_log._REC_PREFIX.pack(spool_log._REC_MAGIC, 0) + fields + data[:4]
        elif torn == "garbage":
            raw += os.urandom(97)
        elif torn == "zeros":
            raw += bytes(4096)
        seg.write_bytes(bytes(raw))

        spool = Spool(d, quarantine_dir=Path(tmp) / "q")
        # The damaged records at the very end are a torn tail (nothing valid follows): cut.
        tail = len(acked)
        while tail - 1 in damaged:
            tail -= 1
        inner = sorted(i for i in damaged if i < tail)
        runs = sum(1 for i in inner if i - 1 not in inner)
        assert spool.damaged_at_open == runs
        assert (spool.truncated_bytes > 0) == (torn != "none" or tail < len(acked))
        got, quarantined = deliver_all(spool, release_every=release_every)
        assert got == [c for i, c in enumerate(acked) if i not in damaged]
        assert len(quarantined) == runs
        for q in quarantined:
            kept = Path(q.path).read_bytes()  # type: ignore[attr-defined]
            first = next(i for i, c in enumerate(acked) if c.start == q.start)  # type: ignore[attr-defined]
            assert kept == bytes(raw[where[first] : where[first] + len(kept)])
        # Appends go on after the last intact record, and a reopen sees the same spool.
        more = spool.append_sync(b"after recovery\n", 1)
        spool.close()
        again = Spool(d)
        assert again.committed_offset == (got[-1].end if got else again.committed_offset)
        rest, _ = deliver_all(again)
        assert rest == [more]
        again.close()


def test_damage_in_the_middle_of_the_newest_segment_keeps_what_follows(tmp_path: Path) -> None:
    """The issue's case: a bit flip in a record of the newest segment after a kill -9."""
    d = tmp_path / "ep"
    acked = fill(d, [(3, 20)] * 80, segment_bytes=2048, retire_bytes=10**9)
    segs = sorted(d.glob("*.seg"))
    assert len(segs) > 2  # sealed segments before the newest one
    newest = segs[-1]
    base = int(newest.name[:20])
    in_newest = [c for c in acked if c.start >= base]
    assert len(in_newest) >= 3
    victim = in_newest[len(in_newest) // 2]
    raw = bytearray(newest.read_bytes())
    at = SEG + sum(REC + len(c.data) for c in in_newest if c.start < victim.start)
    raw[at + REC + 3] ^= 0x01
    newest.write_bytes(bytes(raw))

    spool = Spool(d, quarantine_dir=tmp_path / "q")
    assert spool.truncated_bytes == 0
    assert spool.end_offset == acked[-1].end  # nothing acknowledged was cut
    assert spool.pending_lines == 80 * 3
    got, quarantined = deliver_all(spool)
    assert got == [c for c in acked if c is not victim]
    [q] = quarantined
    assert (q.start, q.end, q.lines) == (victim.start, victim.end, 3)  # type: ignore[attr-defined]
    spool.close()


def test_a_torn_tail_is_still_cut(tmp_path: Path) -> None:
    """A bad last record with nothing valid after it was the write the crash interrupted."""
    d = tmp_path / "ep"
    acked = fill(d, [(2, 10)] * 8, segment_bytes=1 << 20)
    seg = sorted(d.glob("*.seg"))[-1]
    raw = bytearray(seg.read_bytes())
    raw[-3] ^= 0x10  # the last record's payload
    raw += b"LFR1" + bytes(30)  # and the start of a header that never finished
    seg.write_bytes(bytes(raw))
    spool = Spool(d)
    assert spool.damaged_at_open == 0
    assert spool.truncated_bytes == len(acked[-1].data) + REC + 34
    assert spool.end_offset == acked[-1].start
    got, quarantined = deliver_all(spool)
    assert got == acked[:-1] and quarantined == []
    spool.close()
