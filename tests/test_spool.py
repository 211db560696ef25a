"""Spool behaviour: append/read/commit/restart, segments, backpressure, concurrency, idle."""

from __future__ import annotations

import asyncio
import errno
import gc
import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest

from logferry.errors import InputError
from logferry.spool import (
    Chunk,
    Spool,
    SpoolBroken,
    SpoolClosed,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    SpoolManager,
    decode_key,
    encode_key,
    parse_size,
)
from logferry.spool import log as spool_log
from logferry.spool import writer as spool_writer


def lines_of(tag: str, n: int) -> tuple[bytes, int]:
    return b"".join(f"{tag}-{i} some log text\n".encode() for i in range(n)), n


def read_all(spool: Spool, start: int | None = None, max_bytes: int = 4096) -> list[Chunk]:
    off = spool.committed_offset if start is None else start
    out: list[Chunk] = []
    while True:
        got = spool.read(off, max_bytes)
        if not got:
            return out
        out.extend(got)
        off = got[-1].end


def seg_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".seg"))


def assert_contiguous(chunks: list[Chunk]) -> None:
    for a, b in itertools.pairwise(chunks):
        assert a.end == b.start
        assert a.accepted_at <= b.accepted_at
    for c in chunks:
        assert c.end - c.start == len(c.data)
        assert c.data.count(b"\n") == c.lines


# -- parse_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10GiB", 10 * 1024**3),
        ("512MB", 512 * 1000**2),
        ("64k", 65536),
        ("1.5 GiB", int(1.5 * 1024**3)),
        (" 100 ", 100),
        ("7b", 7),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "10XB", "-5", "1e9", True, -1])
def test_parse_size_rejects(bad: Any) -> None:
    with pytest.raises(InputError) as err:
        parse_size(bad, where="spool.max_bytes")
    assert "spool.max_bytes" in str(err.value)


# -- basic log ----------------------------------------------------------------------------------


def test_oldest_pending_acceptance_follows_commits(tmp_path: Path) -> None:
    """The lag gauge's source: the acceptance time of the oldest uncommitted record, also in
    the middle of a record, and again right after each commit (it is remembered per position)."""
    s = Spool(tmp_path / "ep")
    assert s.first_pending_accepted_at() is None
    acked = []
    for i in range(3):
        acked.append(s.append_sync(*lines_of(f"c{i}", 3)))
        time.sleep(0.01)  # three distinct acceptance times
    assert len({c.accepted_at for c in acked}) == 3
    assert s.first_pending_accepted_at() == acked[0].accepted_at
    assert s.first_pending_accepted_at() == acked[0].accepted_at  # from memory
    s.commit(acked[0].start + len(acked[0].data) // 3)  # one line into the first record
    assert s.first_pending_accepted_at() == acked[0].accepted_at
    s.commit(acked[0].end)
    assert s.first_pending_accepted_at() == acked[1].accepted_at
    s.commit(acked[2].end)
    assert s.first_pending_accepted_at() is None
    later = s.append_sync(*lines_of("d", 1))
    assert s.first_pending_accepted_at() == later.accepted_at
    s.close()


def test_append_read_commit_restart(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    s = Spool(d)
    acked = [s.append_sync(*lines_of(f"c{i}", i % 5 + 1)) for i in range(50)]
    assert acked[0].start == 0
    assert_contiguous(acked)
    assert s.end_offset == acked[-1].end
    assert s.pending_lines == sum(c.lines for c in acked)
    assert s.pending_bytes == acked[-1].end

    got = read_all(s)
    assert got == acked

    s.commit(acked[19].end)
    assert s.committed_offset == acked[19].end
    assert s.pending_lines == sum(c.lines for c in acked[20:])
    s.close()
    with pytest.raises(SpoolClosed):
        s.append_sync(b"late\n", 1)

    s2 = Spool(d)
    assert s2.committed_offset == acked[19].end
    assert s2.end_offset == acked[-1].end
    assert s2.pending_lines == sum(c.lines for c in acked[20:])
    assert read_all(s2) == acked[20:]
    nxt = s2.append_sync(b"after restart\n", 1)
    assert nxt.start == acked[-1].end
    assert nxt.accepted_at >= acked[-1].accepted_at
    s2.close()


def test_offsets_never_reused_after_everything_is_deleted(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    s = Spool(d, segment_bytes=4096, retire_bytes=0)
    chunks = [s.append_sync(*lines_of("a", 3)) for _ in range(20)]
    s.commit(s.end_offset)
    assert seg_files(d) == []  # fully delivered: nothing left on disk
    assert s.disk_bytes == 0
    s.close()
    s2 = Spool(d)
    assert s2.end_offset == chunks[-1].end
    again = s2.append_sync(b"x\n", 1)
    assert again.start == chunks[-1].end
    assert read_all(s2) == [again]
    s2.close()


def test_read_limits_and_bad_offsets(tmp_path: Path) -> None:
    s = Spool(tmp_path / "ep")
    big = s.append_sync(*lines_of("big", 100))
    small = s.append_sync(b"tiny\n", 1)
    got = s.read(0, 10)  # smaller than one chunk: still makes progress
    assert got == [big]
    assert s.read(big.end, 10**6) == [small]
    assert s.read(small.end, 10) == []
    with pytest.raises(ValueError, match="past the end"):
        s.read(small.end + 1)
    with pytest.raises(ValueError, match="not a line boundary"):
        s.read(big.start + 3)
    with pytest.raises(ValueError, match="not a line boundary"):
        s.commit(big.start + 3)
    with pytest.raises(ValueError, match="past the end"):
        s.commit(small.end + 1)
    s.commit(big.end)
    s.commit(0)  # going backwards is a no-op
    assert s.committed_offset == big.end
    s.close()


@pytest.mark.parametrize(
    ("data", "lines"),
    [(b"", 0), (b"no newline", 1), (b"a\n\nb\n", 3), (b"a\nb\n", 1), (b"\n", 1)],
)
def test_append_rejects_malformed_chunks(tmp_path: Path, data: bytes, lines: int) -> None:
    s = Spool(tmp_path / "ep")
    with pytest.raises(ValueError):
        s.append_sync(data, lines)
    assert s.end_offset == 0
    s.close()


@pytest.mark.parametrize(
    ("data", "lines"),
    [(b"", 0), (b"no newline", 1), (b"\n", 1), (b"a\n", 0), ("a\n", 1)],
)
def test_normalized_append_keeps_the_constant_time_checks(
    tmp_path: Path, data: Any, lines: int
) -> None:
    """`normalized=True` skips only the two scans (normalize already did them): a chunk that is
    empty, unterminated, starts with an empty line, claims no line or is not bytes still fails."""
    s = Spool(tmp_path / "ep")

    async def append() -> None:
        await s.append(data, lines, normalized=True)

    with pytest.raises((ValueError, TypeError)):
        asyncio.run(append())
    assert s.end_offset == 0
    chunk = asyncio.run(_append_normalized(s, b"a\nb\n", 2))
    assert (chunk.start, chunk.lines) == (0, 2)
    s.close()


async def _append_normalized(s: Spool, data: bytes, lines: int) -> Chunk:
    return await s.append(data, lines, normalized=True)


def test_segments_rotate_and_are_deleted_only_after_commit(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    s = Spool(d, segment_bytes=1024, retire_bytes=10**9)
    acked = [s.append_sync(*lines_of(f"r{i}", 4)) for i in range(60)]
    names = seg_files(d)
    assert len(names) > 5
    assert names[0] == "0" * 20 + ".seg"
    assert read_all(s) == acked  # nothing deleted without a commit

    cut = acked[30].end
    s.commit(cut)
    remaining = seg_files(d)
    bases = [int(n[:20]) for n in remaining]
    assert bases[0] <= cut  # the segment holding `cut` is kept
    assert len(remaining) < len(names)
    assert read_all(s) == acked[31:]
    assert s.disk_bytes == sum((d / n).stat().st_size for n in remaining)
    s.close()
    s2 = Spool(d)
    assert read_all(s2) == acked[31:]
    s2.close()


def test_crash_between_commit_and_delete_is_cleaned_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "ep"
    s = Spool(d, segment_bytes=1024, retire_bytes=10**9)
    acked = [s.append_sync(*lines_of(f"x{i}", 3)) for i in range(30)]
    before = seg_files(d)
    monkeypatch.setattr(Spool, "_delete_sealed_below", lambda self, offset: None)
    s.commit(acked[20].end)
    assert seg_files(d) == before  # the "crash" left them
    s.close()
    monkeypatch.undo()
    s2 = Spool(d)
    assert len(seg_files(d)) < len(before)
    assert read_all(s2) == acked[21:]
    s2.close()


def test_read_sees_only_acknowledged_data_and_wait_for_data(tmp_path: Path) -> None:
    s = Spool(tmp_path / "ep")
    assert s.wait_for_data(0, timeout=0.01) is False
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(s.wait_for_data(0, timeout=30)))
    t.start()
    c = s.append_sync(b"hello\n", 1)
    t.join()
    assert got == [True]
    assert s.wait_for_data(c.end, timeout=0.01) is False

    async def waiter() -> bool:
        task = asyncio.create_task(s.wait_for_data_async(c.end, timeout=30))
        await asyncio.sleep(0)
        await s.append(b"again\n", 1)
        return await task

    assert asyncio.run(waiter()) is True
    s.close()
    assert s.wait_for_data(s.end_offset, timeout=5) is False  # close wakes waiters


# -- group commit and concurrency -------------------------------------------------------------


class ManualExecutor(Executor):
    """Runs submitted flushes only when told: makes group commit deterministic to test."""

    def __init__(self) -> None:
        self.tasks: list[Callable[[], Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.tasks.append(lambda: fn(*args, **kwargs))
        return Future()

    def run_all(self) -> None:
        while self.tasks:
            self.tasks.pop(0)()


def test_one_fsync_covers_all_waiting_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real = spool_writer._fdatasync
    monkeypatch.setattr(spool_writer, "_fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    ex = ManualExecutor()
    s = Spool(tmp_path / "ep", executor=ex)

    async def main() -> list[Chunk]:
        tasks = [asyncio.create_task(s.append(b"line %d\n" % i, 1)) for i in range(300)]
        await asyncio.sleep(0)  # every task has enqueued and is waiting for its fsync
        assert not any(t.done() for t in tasks)
        await asyncio.to_thread(ex.run_all)
        return await asyncio.gather(*tasks)

    chunks = asyncio.run(main())
    # the new segment's header, then exactly one data fsync for all 300 appends
    assert len(syncs) == 2
    assert [c.data for c in chunks] == [b"line %d\n" % i for i in range(300)]
    assert_contiguous(chunks)
    assert len({c.accepted_at for c in chunks}) == 1


def test_acknowledged_only_after_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"written": 0, "synced": 0}
    real_pwrite, real_sync = os.pwrite, spool_writer._fdatasync

    def pwrite(fd: int, data: Any, pos: int) -> int:
        n = real_pwrite(fd, data, pos)
        state["written"] += n
        return n

    def sync(fd: int) -> None:
        seen = state["written"]
        real_sync(fd)
        state["synced"] = seen

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(spool_writer, "_fdatasync", sync)
    s = Spool(tmp_path / "ep", segment_bytes=1024)
    for i in range(40):
        s.append_sync(*lines_of(f"s{i}", 3))
        assert state["synced"] == state["written"] > 0

    async def main() -> None:
        for i in range(20):
            await s.append(*lines_of(f"a{i}", 2))
            assert state["synced"] == state["written"]

    asyncio.run(main())
    s.close()


def test_many_async_and_thread_appenders_exactly_once(tmp_path: Path) -> None:
    s = Spool(tmp_path / "ep", segment_bytes=64 * 1024)
    n_tasks, n_threads, per = 40, 6, 60
    acked: list[Chunk] = []
    lock = threading.Lock()

    def thread_producer(t: int) -> None:
        for i in range(per):
            c = s.append_sync(f"T{t}-{i}\n".encode() * 1, 1)
            with lock:
                acked.append(c)

    async def task_producer(k: int) -> None:
        for i in range(per):
            c = await s.append(f"A{k}-{i}a\nA{k}-{i}b\n".encode(), 2)
            with lock:
                acked.append(c)

    async def main() -> None:
        threads = [threading.Thread(target=thread_producer, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        await asyncio.gather(*(task_producer(k) for k in range(n_tasks)))
        for th in threads:
            await asyncio.to_thread(th.join)

    asyncio.run(main())
    stored = read_all(s, 0)
    assert_contiguous(stored)
    assert sorted(stored, key=lambda c: c.start) == sorted(acked, key=lambda c: c.start)
    all_lines = [ln for c in stored for ln in c.split_lines()]
    assert len(all_lines) == len(set(all_lines)) == n_threads * per + 2 * n_tasks * per
    # each producer's lines are in its own order
    for prefix in [f"T{t}-" for t in range(n_threads)] + [f"A{k}-" for k in range(n_tasks)]:
        seq = [ln for ln in all_lines if ln.decode().startswith(prefix)]
        nums = [int(ln.decode()[len(prefix) :].rstrip("ab")) for ln in seq]
        assert nums == sorted(nums)
    assert s.pending_lines == len(all_lines)
    s.close()


# -- failures -----------------------------------------------------------------------------------


def test_disk_full_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "ep"
    s = Spool(d)
    ok = s.append_sync(b"kept\n", 1)
    real = os.pwrite

    def half_then_enospc(fd: int, data: Any, pos: int) -> int:
        monkeypatch.setattr(os, "pwrite", real)
        real(fd, bytes(data[:10]), pos)  # a torn partial write lands first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    with pytest.raises(SpoolFull) as err:
        s.append_sync(b"lost\n", 1)
    assert err.value.retry_after > 0
    after = s.append_sync(b"next\n", 1)
    assert after.start == ok.end
    assert [c.data for c in read_all(s, 0)] == [b"kept\n", b"next\n"]
    s.close()
    assert [c.data for c in read_all(Spool(d), 0)] == [b"kept\n", b"next\n"]


def test_failed_fsync_stops_the_spool_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "ep"
    s = Spool(d)
    ok = s.append_sync(b"kept\n", 1)

    def boom(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_writer, "_fdatasync", boom)
    with pytest.raises(SpoolBroken):
        s.append_sync(b"maybe\n", 1)
    monkeypatch.undo()
    with pytest.raises(SpoolBroken):
        s.append_sync(b"refused\n", 1)
    s.close()
    s2 = Spool(d)
    data = [c.data for c in read_all(s2, 0)]
    assert data[0] == b"kept\n"
    assert data in ([b"kept\n"], [b"kept\n", b"maybe\n"])  # unacked: may or may not be there
    assert s2.append_sync(b"works\n", 1).start == s2.end_offset - 6
    assert ok.end <= s2.end_offset
    s2.close()


def test_corrupt_sealed_segment_is_reported_with_a_way_past(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    s = Spool(d, segment_bytes=1024, retire_bytes=10**9)
    acked = [s.append_sync(*lines_of(f"z{i}", 3)) for i in range(20)]
    s.close()
    first = d / seg_files(d)[0]
    raw = bytearray(first.read_bytes())
    raw[spool_log.SEG_HEADER_BYTES + spool_log.REC_HEADER_BYTES + 2] ^= 0xFF
    first.write_bytes(bytes(raw))
    s2 = Spool(d)
    with pytest.raises(SpoolCorrupt) as err:
        s2.read(0)
    assert err.value.offset == 0
    nxt = err.value.next_offset
    assert nxt is not None and nxt == int(seg_files(d)[1][:20])
    s2.commit(nxt)
    assert read_all(s2) == [c for c in acked if c.start >= nxt]
    s2.close()


def test_positions_inside_a_chunk_read_and_commit_at_line_granularity(tmp_path: Path) -> None:
    """A sink may cut anywhere between two lines: read and commit accept any line boundary,
    the committed line count stays exact, and a reopened spool resumes at that line."""
    d = tmp_path / "ep"
    s = Spool(d, segment_bytes=64 * 1024, retire_bytes=10**9)
    chunks = [s.append_sync(*lines_of(f"c{i}", 500)) for i in range(6)]
    expected = b"".join(c.data for c in chunks)
    all_lines = expected.split(b"\n")[:-1]
    # Every 37th line boundary, including ones in sealed segments and across chunks.
    boundaries = [i + 1 for i, b in enumerate(expected) if b == 10][36::37]
    for pos in boundaries[:5]:
        tail = b"".join(c.data for c in read_all(s, pos, max_bytes=10**9))
        assert tail == expected[pos:]
    first = s.read(boundaries[3], 10**9)[0]
    assert first.start == boundaries[3]
    assert first.lines == first.data.count(b"\n")
    cut = boundaries[20]
    s.commit(cut)
    assert s.committed_offset == cut
    assert s.committed_line == expected[:cut].count(b"\n")
    assert s.pending_lines == len(all_lines) - s.committed_line
    s.close()
    s2 = Spool(d)
    assert (s2.committed_offset, s2.committed_line) == (cut, expected[:cut].count(b"\n"))
    assert b"".join(c.data for c in read_all(s2, max_bytes=10**9)) == expected[cut:]
    s2.commit(boundaries[21])
    assert s2.committed_line == expected[: boundaries[21]].count(b"\n")
    s2.close()


def test_records_larger_than_a_read_block_read_whole_from_any_line(tmp_path: Path) -> None:
    """Records past the reader's block (a large request) are read on their own: every size
    around the block, any line boundary inside them, any `max_bytes`, and their checksum is
    still checked."""
    from logferry.spool.reader import BLOCK_BYTES

    d = tmp_path / "ep"
    s = Spool(d, segment_bytes=8 * BLOCK_BYTES, retire_bytes=10**9)
    sizes = [1, BLOCK_BYTES - 300, BLOCK_BYTES + 1000, 3, 2 * BLOCK_BYTES, 5 * BLOCK_BYTES, 2]
    chunks = []
    for n, size in enumerate(sizes):
        line = f"r{n}-".encode() + b"x" * 97 + b"\n"
        data = line * max(1, size // len(line))
        chunks.append(s.append_sync(data, data.count(b"\n")))
    expected = b"".join(c.data for c in chunks)
    assert read_all(s, max_bytes=10**9) == chunks
    assert read_all(s, max_bytes=1) == chunks  # one record per read, even past the block
    ends = [i + 1 for i, b in enumerate(expected) if b == 10]
    for pos in [0, *ends[::997], ends[-2]]:
        got = read_all(s, pos, max_bytes=BLOCK_BYTES // 3)
        assert b"".join(c.data for c in got) == expected[pos:]
        assert got[0].start == pos
        assert sum(c.lines for c in got) == expected[pos:].count(b"\n")
    s.close()
    # A flipped byte deep inside the largest record (far past its first block) is caught.
    big = chunks[5]
    seg = next(d / n for n in seg_files(d) if big.data[:200] in (d / n).read_bytes())
    raw = bytearray(seg.read_bytes())
    at = raw.find(big.data[:200])
    raw[at + 4 * BLOCK_BYTES] ^= 0x01
    seg.write_bytes(bytes(raw))
    s2 = Spool(d)
    with pytest.raises(SpoolCorrupt, match="checksum"):
        read_all(s2, big.start, max_bytes=10**9)
    s2.close()


def test_corrupt_record_is_quarantined_and_delivery_goes_on(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    s = Spool(d, segment_bytes=1 << 20, retire_bytes=10**9, quarantine_dir=tmp_path / "q")
    acked = [s.append_sync(*lines_of(f"z{i}", 3)) for i in range(10)]
    s.close()
    seg = d / seg_files(d)[0]
    raw = bytearray(seg.read_bytes())
    # Damage the payload of the 4th record (all records are the same size here).
    rec = spool_log.REC_HEADER_BYTES + len(acked[0].data)
    raw[spool_log.SEG_HEADER_BYTES + 3 * rec + spool_log.REC_HEADER_BYTES + 5] ^= 0xFF
    seg.write_bytes(bytes(raw))
    s2 = Spool(d, quarantine_dir=tmp_path / "q")
    got = s2.read(0, 10**9)  # the good chunks before the damage come first
    assert got == acked[:3]
    with pytest.raises(SpoolCorrupt) as err:
        s2.read(acked[3].start)
    with pytest.raises(ValueError, match="commit up to"):
        s2.quarantine(err.value)  # what precedes the damage is not delivered yet
    s2.commit(acked[3].start)
    q = s2.quarantine(err.value)
    assert (q.start, q.end, q.lines) == (acked[3].start, acked[4].start, 3)
    assert Path(q.path).read_bytes() == bytes(
        raw[spool_log.SEG_HEADER_BYTES + 3 * rec : spool_log.SEG_HEADER_BYTES + 4 * rec]
    )
    assert read_all(s2, max_bytes=10**9) == acked[4:]
    assert s2.pending_lines == 6 * 3
    s2.close()
    s3 = Spool(d)  # the skip survives a restart
    assert s3.committed_offset == acked[4].start
    assert read_all(s3, max_bytes=10**9) == acked[4:]
    s3.close()


# -- limits -------------------------------------------------------------------------------------


def test_spool_full_is_backpressure_never_a_drop(tmp_path: Path) -> None:
    s = Spool(tmp_path / "ep", segment_bytes=4096, max_bytes=16 * 1024, retire_bytes=10**9)
    acked: list[Chunk] = []
    with pytest.raises(SpoolFull) as err:
        for i in range(10_000):
            acked.append(s.append_sync(*lines_of(f"f{i}", 4)))
    assert 0 < err.value.retry_after <= 60
    assert len(acked) > 10
    assert s.disk_bytes <= 16 * 1024
    assert read_all(s, 0) == acked  # everything acknowledged is there
    end_before = s.end_offset
    with pytest.raises(SpoolFull):
        s.append_sync(*lines_of("still-full", 4))
    assert s.end_offset == end_before

    s.commit(acked[len(acked) // 2].end)  # delivery frees whole segments
    more = s.append_sync(*lines_of("after", 4))
    assert more.start == end_before
    with pytest.raises(ValueError, match="never fit"):
        s.append_sync(b"x" * 20_000 + b"\n", 1)
    s.close()


def test_manager_global_limit_across_endpoints(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, max_bytes="24KiB", segment_bytes="4KiB", janitor=False) as m:
        a, b = m.open("cust/a"), m.open("cust/b")
        acked: dict[str, list[Chunk]] = {"a": [], "b": []}
        with pytest.raises(SpoolFull, match="directory is full"):
            for i in range(10_000):
                for name, sp in (("a", a), ("b", b)):
                    acked[name].append(sp.append_sync(*lines_of(f"{name}{i}", 4)))
        assert m.total_bytes <= 24 * 1024
        assert m.total_bytes == a.disk_bytes + b.disk_bytes
        assert read_all(a, 0) == acked["a"]
        assert read_all(b, 0) == acked["b"]
        a.commit(a.end_offset)  # frees a's segments for everyone
        b.append_sync(b"fits again\n", 1)
        assert m.total_bytes == a.disk_bytes + b.disk_bytes


def test_manager_per_endpoint_limit(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, endpoint_max_bytes="8KiB", janitor=False) as m:
        small = m.open("small")
        big = m.open("big", max_bytes="1MiB")
        with pytest.raises(SpoolFull, match="spool small is full"):
            for i in range(1000):
                small.append_sync(*lines_of(f"s{i}", 4))
        for i in range(200):
            big.append_sync(*lines_of(f"b{i}", 4))
        assert big.disk_bytes > 8 * 1024


def test_budget_survives_restart(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, janitor=False) as m:
        sp = m.open("k")
        for i in range(10):
            sp.append_sync(*lines_of(f"k{i}", 4))
        total = m.total_bytes
        assert total == sp.disk_bytes > 0
    with SpoolManager(tmp_path, janitor=False) as m2:
        assert m2.total_bytes == total
        assert m2.keys_on_disk() == ["k"]
        sp2 = m2.get("k")
        assert sp2 is not None and sp2.pending_lines == 40
        assert m2.get("absent") is None


# -- manager: keys, idle, drop ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["cust/ep", ".", "..", ".lock", "a b%c", "ünï", "x" * 80])
def test_key_encoding_round_trips(key: str) -> None:
    name = encode_key(key)
    assert "/" not in name and not name.startswith(".")
    assert decode_key(name) == key


def test_second_manager_on_same_directory_is_refused(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, janitor=False), pytest.raises(SpoolError, match="in use"):
        SpoolManager(tmp_path, janitor=False)


def test_drop_deletes_data_and_frees_budget(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, janitor=False) as m:
        sp = m.open("gone")
        sp.append_sync(b"bye\n", 1)
        keep = m.open("kept")
        keep.append_sync(b"stay\n", 1)
        m.drop("gone")
        assert m.keys_on_disk() == ["kept"]
        assert m.total_bytes == keep.disk_bytes
        with pytest.raises(SpoolClosed):
            sp.append_sync(b"again\n", 1)
        with pytest.raises(SpoolClosed):
            sp.read(0)
        with pytest.raises(SpoolClosed):
            sp.commit(sp.end_offset)
        fresh = m.open("gone")
        assert fresh.end_offset == 0 and fresh.pending_lines == 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_thousands_of_idle_endpoints_hold_no_file_handles(tmp_path: Path) -> None:
    n = 2000
    with SpoolManager(tmp_path, janitor=False, flush_threads=4) as m:
        base = open_fds()

        async def fill() -> None:
            sem = asyncio.Semaphore(64)

            async def one(i: int) -> None:
                async with sem:
                    await m.open(f"customer{i % 97}/ep{i}").append(f"hello {i}\n".encode(), 1)

            await asyncio.gather(*(one(i) for i in range(n)))

        asyncio.run(fill())
        active = len(m.open_keys())  # all of them, or the handle cap (low `ulimit -n`)
        assert active == n or 0 < active <= m.max_open_spools
        assert open_fds() > base  # active spools keep their append handles
        assert m.close_idle(0) == active
        assert m.open_keys() == []
        assert open_fds() == base
        gc.collect()
        assert len(m._all) == 0  # nobody holds them: no memory either
        assert len(m.keys_on_disk()) == n
        again = m.open("customer5/ep5")
        assert [c.data for c in read_all(again)] == [b"hello 5\n"]
        again.commit(again.end_offset)
        assert again.pending_lines == 0


def test_open_handles_are_capped(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, janitor=False, max_open_spools=20) as m:
        base = open_fds()
        spools = []
        for i in range(100):
            sp = m.open(f"ep{i}")
            sp.append_sync(b"x\n", 1)
            spools.append(sp)
            assert len(m.open_keys()) <= 21
        assert open_fds() - base <= 21
        for sp in spools:  # shed spools still work
            assert [c.data for c in read_all(sp)] == [b"x\n"]


def test_janitor_sheds_handles_off_the_callers_thread(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, idle_close_seconds=3600, max_open_spools=10) as m:
        spools = [m.open(f"ep{i}") for i in range(30)]
        for sp in spools:
            sp.append_sync(b"x\n", 1)
        done = threading.Event()
        for _ in range(200):
            if len(m.open_keys()) <= 10:
                done.set()
                break
            done.wait(0.05)
        assert done.is_set()
        assert sum(sp.open_fds for sp in spools) <= 10


def test_released_spool_held_by_a_worker_stays_usable(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, janitor=False) as m:
        sp = m.open("held")
        first = sp.append_sync(b"one\n", 1)
        assert m.close_idle(0) == 1
        assert sp.is_dormant and sp.open_fds == 0
        assert m.open_keys() == []
        assert m.open("held") is sp  # no second Spool on the same files
        second = sp.append_sync(b"two\n", 1)  # reopens its handles and re-registers
        assert m.open_keys() == ["held"]
        assert read_all(sp) == [first, second]


def test_janitor_closes_idle_spools(tmp_path: Path) -> None:
    with SpoolManager(tmp_path, idle_close_seconds=0.05) as m:
        sp = m.open("idle")
        sp.append_sync(b"x\n", 1)
        done = threading.Event()
        for _ in range(200):
            if sp.is_dormant:
                done.set()
                break
            done.wait(0.05)
        assert done.is_set()
        assert sp.open_fds == 0


def test_idle_close_writes_clean_note_and_reopen_trusts_it(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    s = Spool(d, retire_bytes=10**9)
    acked = [s.append_sync(*lines_of(f"n{i}", 3)) for i in range(10)]
    assert s.release()
    notes = [p.name for p in d.iterdir() if p.name.endswith(".clean")]
    assert notes == ["0.clean"]
    s.close()
    s2 = Spool(d)
    assert s2.end_offset == acked[-1].end and s2.pending_lines == 30
    more = s2.append_sync(b"more\n", 1)  # file grows past the note: still valid next time
    s2.close()
    s3 = Spool(d)
    assert read_all(s3) == [*acked, more]
    s3.close()


def test_closing_manager_flushes_pending(tmp_path: Path) -> None:
    m = SpoolManager(tmp_path, janitor=False)
    sp = m.open("k")

    async def main() -> list[Chunk]:
        return await asyncio.gather(*(sp.append(b"l%d\n" % i, 1) for i in range(100)))

    acked = asyncio.run(main())
    m.close()
    with pytest.raises(SpoolError):
        m.open("k")
    with SpoolManager(tmp_path, janitor=False) as m2:
        sp2 = m2.open("k")
        assert read_all(sp2) == acked
