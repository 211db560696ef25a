"""A kill -9 never loses an acknowledged line; torn tails are cut on open.

The child process appends (asyncio tasks and threads), prints every chunk after `append`
returned, and a delivery thread commits with a lag, printing each commit after it returned. We
SIGKILL it at random moments, over several rounds on the same directory, then reopen the spool
and check every acknowledged, uncommitted chunk is there exactly once, in order, byte-identical.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from logferry.spool import Chunk, Spool
from logferry.spool import log as spool_log

SRC = str(Path(__file__).resolve().parents[1] / "src")

CHILD = textwrap.dedent(
    """
    import asyncio, sys, threading
    sys.path.insert(0, {src!r})
    from logferry.spool import Spool

    directory, tag, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spool = Spool(directory, segment_bytes=16 * 1024, retire_bytes=4096)
    lock = threading.Lock()
    appended = [0]

    def more():
        with lock:
            appended[0] += 1
            return not stop_after or appended[0] <= stop_after

    def emit(text):
        with lock:
            sys.stdout.write(text + "\\n")
            sys.stdout.flush()

    def payload(name, i):
        n = 1 + i % 7
        return b"".join(f"{{name}}-{{i}}-{{j}}\\n".encode() for j in range(n)), n

    def thread_producer(t):
        i = 0
        while more():
            data, n = payload(f"{{tag}}t{{t}}", i)
            c = spool.append_sync(data, n)
            emit(f"A {{c.start}} {{c.end}} {{tag}}t{{t}} {{i}}")
            i += 1

    def committer():
        off = spool.committed_offset
        read_ends = []
        while True:
            spool.wait_for_data(off, 1.0)
            chunks = spool.read(off, 8 * 1024)
            if chunks:
                off = chunks[-1].end
                read_ends.append(off)
            if len(read_ends) > 3:  # commit with a lag, so some data stays uncommitted
                target = read_ends.pop(0)
                spool.commit(target)
                emit(f"C {{target}}")

    async def task_producer(k):
        i = 0
        while more():
            data, n = payload(f"{{tag}}a{{k}}", i)
            c = await spool.append(data, n)
            emit(f"A {{c.start}} {{c.end}} {{tag}}a{{k}} {{i}}")
            i += 1

    async def main():
        threads = [threading.Thread(target=thread_producer, args=(t,)) for t in range(2)]
        for th in threads:
            th.start()
        threading.Thread(target=committer, daemon=True).start()
        await asyncio.gather(*(task_producer(k) for k in range(8)))
        for th in threads:
            await asyncio.to_thread(th.join)
        emit("IDLE")  # every durable chunk has been acknowledged; now wait for the kill
        await asyncio.sleep(3600)

    emit("READY")
    asyncio.run(main())
    """
).format(src=SRC)


def expected_data(name: str, i: int) -> tuple[bytes, int]:
    n = 1 + i % 7
    return b"".join(f"{name}-{i}-{j}\n".encode() for j in range(n)), n


@dataclass
class Ack:
    start: int
    end: int
    name: str
    i: int


def run_and_kill(
    directory: Path, tag: str, acks_before_kill: int, *, quiesce: bool = False
) -> tuple[list[Ack], int]:
    """Run the child until it acknowledged `acks_before_kill` chunks, SIGKILL it.

    With `quiesce` the child stops appending after that many and is killed while idle, so
    every record on disk was acknowledged (a kill -9 keeps the page cache, so otherwise the
    newest records are usually in-flight ones).
    """
    stop_after = acks_before_kill if quiesce else 0
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), tag, str(stop_after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    acks: list[Ack] = []
    commits = [0]
    try:
        while True:
            raw = proc.stdout.readline()
            if not raw:
                raise AssertionError(f"child died: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            if raw == b"IDLE\n" or (not quiesce and len(acks) >= acks_before_kill):
                break
            parse_line(raw, acks, commits)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    for raw in rest.splitlines(keepends=True):
        if raw.endswith(b"\n"):  # a line cut by the kill was never fully reported
            parse_line(raw, acks, commits)
    assert proc.returncode == -signal.SIGKILL
    return acks, max(commits)


def parse_line(raw: bytes, acks: list[Ack], commits: list[int]) -> None:
    parts = raw.decode().split()
    if parts[0] == "A":
        acks.append(Ack(int(parts[1]), int(parts[2]), parts[3], int(parts[4])))
    elif parts[0] == "C":
        commits.append(int(parts[1]))


def read_everything(spool: Spool) -> list[Chunk]:
    out: list[Chunk] = []
    off = spool.committed_offset
    while chunks := spool.read(off, 64 * 1024):
        out.extend(chunks)
        off = chunks[-1].end
    return out


def check(directory: Path, acks: list[Ack], last_commit: int, *, exact: bool = False) -> None:
    spool = Spool(directory)
    try:
        committed = spool.committed_offset
        assert committed >= last_commit, "an acknowledged commit was lost"
        stored = read_everything(spool)
        assert stored == [] or stored[0].start == committed
        by_start = {c.start: c for c in stored}
        for a, b in itertools.pairwise(stored):
            assert a.end == b.start and a.accepted_at <= b.accepted_at
        lines = [ln for c in stored for ln in c.split_lines()]
        assert len(lines) == len(set(lines)), "a line is stored twice"
        missing = 0
        for ack in acks:
            if ack.end <= committed:
                continue  # delivered and committed before the crash
            chunk = by_start.get(ack.start)
            if chunk is None:
                missing += 1
                continue
            data, n = expected_data(ack.name, ack.i)
            assert (chunk.end, chunk.data, chunk.lines) == (ack.end, data, n)
        assert missing == 0, f"{missing} acknowledged chunks lost"
        if exact:  # nothing was in flight: the spool holds exactly the acknowledged chunks
            assert len(stored) == sum(1 for a in acks if a.end > committed)
        assert spool.pending_lines == sum(c.lines for c in stored)
        assert spool.pending_bytes == sum(len(c.data) for c in stored)
    finally:
        spool.close()


def test_kill9_never_loses_an_acknowledged_line(tmp_path: Path) -> None:
    rng = random.Random(1234)
    directory = tmp_path / "ep"
    all_acks: list[Ack] = []
    last_commit = 0
    for round_no in range(6):
        quiesce = round_no % 3 == 2
        acks, commit = run_and_kill(
            directory, f"r{round_no}", rng.randint(50, 1500), quiesce=quiesce
        )
        assert acks, "the child acknowledged nothing"
        all_acks.extend(acks)
        last_commit = max(last_commit, commit)
        check(directory, all_acks, last_commit, exact=quiesce)
    assert last_commit > 0  # commits and segment deletions really happened under the kills
    assert len(all_acks) > 250


# -- torn tails ---------------------------------------------------------------------------------


def fill(directory: Path, n: int = 12) -> list[Chunk]:
    spool = Spool(directory, segment_bytes=1 << 20)
    acked = [spool.append_sync(*expected_data("t", i)) for i in range(n)]
    spool.close()
    for note in directory.glob("*.clean"):  # a kill -9 leaves no note behind
        note.unlink()
    return acked


def last_segment(directory: Path) -> Path:
    return sorted(directory.glob("*.seg"))[-1]


def reopen_and_check(directory: Path, expect: list[Chunk]) -> Spool:
    spool = Spool(directory)
    assert read_everything(spool) == expect
    assert spool.end_offset == (expect[-1].end if expect else 0)
    more = spool.append_sync(b"after repair\n", 1)
    assert more.start == spool.end_offset - len(b"after repair\n")
    spool.close()
    again = Spool(directory)
    assert read_everything(again) == [*expect, more]
    return again


@pytest.mark.parametrize("how", ["partial-record", "cut-payload", "bad-crc", "zeros", "garbage"])
def test_torn_tail_is_cut_on_open(tmp_path: Path, how: str) -> None:
    d = tmp_path / "ep"
    acked = fill(d)
    seg = last_segment(d)
    raw = bytearray(seg.read_bytes())
    if how == "partial-record":  # a batch that was being written: header + part of the payload
        data, n = expected_data("t", 99)
        fields = spool_log._REC_FIELDS.pack(acked[-1].end, 99, len(data), n, 0.0)
        crc = zlib.crc32(data, zlib.crc32(fields))
        raw += spool_log._REC_PREFIX.pack(spool_log._REC_MAGIC, crc) + fields + data[:5]
        expect = acked
    elif how == "cut-payload":
        del raw[-5:]
        expect = acked[:-1]
    elif how == "bad-crc":
        raw[-2] ^= 0x01
        expect = acked[:-1]
    elif how == "zeros":  # ext4 after a crash: size grew, blocks never written
        raw += b"\0" * 4096
        expect = acked
    else:
        raw += os.urandom(333)
        expect = acked
    size_before = len(raw)
    seg.write_bytes(bytes(raw))
    spool = Spool(d)
    assert spool.truncated_bytes > 0
    assert seg.stat().st_size < size_before
    spool.close()
    reopen_and_check(d, expect).close()


def test_torn_segment_header_is_removed(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    acked = fill(d)
    # crash while creating the next segment, before its header became durable
    (d / spool_log.segment_name(acked[-1].end)).write_bytes(b"LFSEG\0\0")
    (d / "committed.tmp").write_bytes(b"half")  # and during a commit
    spool = reopen_and_check(d, acked)
    assert not (d / "committed.tmp").exists()
    spool.close()


def test_clean_note_that_no_longer_matches_is_ignored(tmp_path: Path) -> None:
    d = tmp_path / "ep"
    spool = Spool(d)
    acked = [spool.append_sync(*expected_data("n", i)) for i in range(6)]
    spool.close()  # writes a note for the full size
    seg = last_segment(d)
    raw = seg.read_bytes()
    seg.write_bytes(raw[:-7])  # the file is now shorter than the note says
    reopen_and_check(d, acked[:-1]).close()
