"""The writer: appends acknowledged only once durable, many appends per sync (group commit).

An ingest call is acknowledged only after its bytes are fsynced, so the cost that matters is
fsyncs per second. One sync covers every append that arrived while the previous one ran, so
throughput grows with concurrency instead of collapsing. A batch is written with pwrite at the
durable end, synced (its own fdatasync, or one shared `syncfs` through `group_sync.py`), and
only then published to readers and waiters and its appenders acknowledged. A failed write is
rolled back with ftruncate; a failed sync marks the spool broken (the kernel may have dropped
the dirty pages, so retrying the sync would lie) until it is reopened.

Sizing (bench/spool_bench.py → bench/results/spool.json, 2-core VM): per-append CPU is ~6.5 us
(asyncio wake-up included), so one-line appends top out near 90k/s on 2 cores; ingest batches
lines into chunks (>= 4 KiB: ~200 MB/s, ~1M lines/s durable). Pre-zeroed segments would make
small fsyncs ~1.5x faster but write every byte twice, so segments grow by plain appends.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from logferry.spool.batch import _Outcome, _Pending, _resolve_many, _Written
from logferry.spool.chunk import Chunk
from logferry.spool.errors import SpoolBroken, SpoolClosed, SpoolError, SpoolFull
from logferry.spool.files import _O_CLOEXEC, _fdatasync, _pwrite_all, fsync_dir
from logferry.spool.format import (
    _REC_FIELDS,
    _REC_MAGIC,
    _REC_PREFIX,
    _SEG_HDR,
    _SEG_MAGIC,
    CLEAN_SUFFIX,
    REC_HEADER_BYTES,
    SEG_HEADER_BYTES,
    segment_name,
    validate_chunk_data,
    with_crc,
)
from logferry.spool.quarantine import LogQuarantine
from logferry.spool.state import INDEX_INTERVAL, _Segment

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 16 * 1024 * 1024
"""One group-commit write covers at most this much (bounds the join copy and fsync latency)."""
GROUP_WRITE_BYTES = 256 * 1024
"""Batches up to this size are written by the group-sync thread itself (two thread hand-offs
per append instead of three, group_sync.py); larger ones on the flush pool, so their copy into
the page cache overlaps other spools' syncs."""
CLOCK_STEP_BACK_SECONDS = 1.0
"""Accept times never go backwards across a wall-clock step back up to this long (they are
held at the last one). A larger step back means the last accept time came from a clock that was
ahead (a wrong jump forward, then corrected): holding it would stamp every new line, and keep
every S3 file open, until real time caught up. Accept times follow the clock back instead: S3
keys stay unique (the uid is the file's start offset) and replay stays deterministic (the
accept time is stored in each record)."""

_default_executor: ThreadPoolExecutor | None = None
_default_executor_lock = threading.Lock()


def default_executor() -> ThreadPoolExecutor:
    """Process-wide flush pool for spools created without a manager."""
    global _default_executor
    with _default_executor_lock:
        if _default_executor is None:
            _default_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-flush")
        return _default_executor


class LogWriter(LogQuarantine):
    """Appending: validation, limits, the group-commit queue, batches written and published."""

    async def append(self, data: bytes, lines: int, *, normalized: bool = False) -> Chunk:
        """Append one chunk; returns once it is fsynced (acknowledge the client only then).

        Raises SpoolFull at once when over the limit (nothing written). If the awaiting task is
        cancelled, the chunk may still become durable (at-least-once: the client retries).
        `normalized=True`: `data, lines` are `ingest.lines.normalize`'s output, which already
        holds the chunk contract, so only its constant-time checks run here.
        """
        validate_chunk_data(data, lines, scan=not normalized)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Chunk] = loop.create_future()
        self._enqueue(_Pending(data, lines, loop=loop, fut=fut))
        return await fut

    def append_sync(self, data: bytes, lines: int) -> Chunk:
        """Blocking `append` for threads (e.g. syslog listeners). Never call it on the loop."""
        validate_chunk_data(data, lines)
        p = _Pending(data, lines, event=threading.Event())
        self._enqueue(p)
        assert p.event is not None
        p.event.wait()
        if p.error is not None:
            raise p.error
        assert p.chunk is not None
        return p.chunk

    def _enqueue(self, p: _Pending) -> None:
        n = REC_HEADER_BYTES + len(p.data)
        self.last_used = time.monotonic()
        if self._dormant:
            self._touch()
        limit, budget = self._max_bytes, self._budget
        with self._mu:  # fast path: usable, under both limits
            if (
                not self._closed
                and self._broken is None
                and (limit is None or self._disk_bytes + self._reserved + n <= limit)
                and (budget is None or budget.try_reserve(n))
            ):
                self._reserved += n
                self._queue.append(p)
                self._queued_bytes += n
                start = not self._flushing
                self._flushing = True
            else:
                start = None
        if start is None:
            self._enqueue_slow(p, n)
        elif start:
            self._submit()

    def _enqueue_slow(self, p: _Pending, n: int) -> None:
        for attempt in range(2):
            with self._mu:
                self._check_usable()
                full = self._reserve(n)
                if full is None:
                    self._queue.append(p)
                    self._queued_bytes += n
                    start = not self._flushing
                    self._flushing = True
                    break
            if attempt == 0 and self._try_retire():
                continue
            raise full
        if start:
            self._submit()

    def _check_usable(self) -> None:
        if self._closed:
            raise SpoolClosed(f"spool {self.name} is closed", fix="Reopen it via the manager.")
        if self._broken is not None:
            raise SpoolBroken(
                f"spool {self.name} stopped after a storage error: {self._broken}",
                fix="Free or repair the disk, then reopen the spool (recovery re-verifies it).",
            )

    def _reserve(self, n: int) -> SpoolFull | None:
        """Reserve `n` disk bytes (caller holds _mu); returns the error instead of raising."""
        limit = self._max_bytes
        if limit is not None:
            if n > limit:
                raise ValueError(f"a {n}-byte chunk can never fit spool limit {limit}")
            used = self._disk_bytes + self._reserved
            if used + n > limit:
                return SpoolFull(
                    f"spool {self.name} is full ({used} of {limit} bytes)",
                    retry_after=self._rate.eta(used + n - limit),
                    fix="Wait for delivery to catch up, or raise the endpoint's spool limit.",
                )
        if self._budget is not None and not self._budget.try_reserve(n):
            return self._budget.refusal(n)
        self._reserved += n
        return None

    def _unreserve(self, n: int) -> None:
        """Caller holds _mu."""
        self._reserved -= n
        if self._budget is not None:
            self._budget.adjust(-n)

    def _submit(self) -> None:
        group = self._group_sync
        if (
            group is not None
            and self._queued_bytes <= GROUP_WRITE_BYTES
            and not self._write_touches_files()
            and group.submit_flush(self._flush_on_sync_thread)
        ):
            return
        self._submit_to_pool()

    def _write_touches_files(self) -> bool:
        """Whether the next batch may create, seal or retire a segment file (an fsync of the
        file and one of the directory): that goes to the flush pool, not to the sync thread
        every spool waits on. Read without the locks: it only chooses the thread."""
        segments = self._segments
        if not segments:
            return True
        seg = segments[-1]
        if seg.end != self._end or seg.size + self._queued_bytes >= self._effective_segment_bytes():
            return True
        retirable = self._committed >= self._end
        return retirable and seg.size - SEG_HEADER_BYTES >= self._retire_bytes

    def _submit_to_pool(self) -> None:
        executor = self._executor or default_executor()
        try:
            executor.submit(self._flush_task)
        except RuntimeError as e:  # executor shut down: fail what is queued, do not hang
            with self._mu:
                batch, self._queue = self._queue, []
                self._unreserve(self._queued_bytes)
                self._queued_bytes = 0
                self._flushing = False
                self._cond.notify_all()
            self._resolve(batch, SpoolClosed(f"spool {self.name}: flush pool is shut down ({e})"))

    def _flush_task(self) -> None:
        """One group commit: everything queued (up to MAX_BATCH_BYTES), one write, one sync.

        With a GroupSync the sync is shared with other spools' batches: `_io` stays held from
        the write until the sync thread published the batch (`_finish_batch`), so nothing can
        close or rewrite the file in between, and the flush thread is free meanwhile."""
        self._io.acquire()
        pending = self._write_queued()
        if pending is None:
            return
        fd, done = pending
        group = self._group_sync
        if group is None:
            try:
                _fdatasync(fd)
            except OSError as e:
                done(e)
            else:
                done(None)
        else:
            group.submit(fd, done)

    def _flush_on_sync_thread(self) -> tuple[int, Callable[[OSError | None], None]] | None:
        """The group-sync thread's flush (`GroupSync.submit_flush`): write what is queued for
        this round's sync. Never waits for `_io`: one spool retiring a segment or closing must
        not hold back every spool's sync, so a busy spool goes to the flush pool instead."""
        if not self._io.acquire(blocking=False):
            self._submit_to_pool()
            return None
        return self._write_queued()

    def _write_queued(self) -> tuple[int, Callable[[OSError | None], None]] | None:
        """Caller holds _io. Writes the next batch and returns (fd, completion) for its sync;
        None when it finished here (nothing queued, or the write failed). The completion, or
        this method when it returns None, releases _io."""
        try:
            with self._mu:
                total = 0
                i = 0
                for p in self._queue:
                    if i and total + len(p.data) > MAX_BATCH_BYTES:
                        break
                    total += REC_HEADER_BYTES + len(p.data)
                    i += 1
                batch = self._queue[:i]
                del self._queue[:i]
                self._queued_bytes -= total
            if not batch:
                self._finish_batch(None, [], 0, None)
                return None
            try:
                written = self._write_batch(batch, total)
            except BaseException as e:
                self._finish_batch(None, batch, total, e)
                return None
        except BaseException:
            self._io.release()
            raise
        return written.fd, lambda err: self._finish_batch(written, batch, total, err)

    def _finish_batch(
        self,
        written: _Written | None,
        batch: list[_Pending],
        total: int,
        err: BaseException | None,
    ) -> None:
        """Caller holds _io (any thread: the flush or the sync thread); releases it. Publishes a
        synced batch (or fails it), acknowledges its appenders, starts the next batch."""
        try:
            if written is not None and err is None:
                self._publish(written)
            elif written is not None and isinstance(err, OSError):
                self._broken = f"fsync failed: {err}"
                err = SpoolBroken(
                    f"spool {self.name}: fsync failed ({err}); the last batch may or may not "
                    "be on disk",
                    fix="Check the disk, then reopen the spool.",
                )
            if err is not None and batch:
                with self._mu:
                    self._unreserve(total)
            with self._mu:
                again = bool(self._queue)
                if not again:
                    self._flushing = False
                self._cond.notify_all()
        finally:
            self._io.release()
        self._resolve(batch, err)
        if again:
            self._submit()

    def _resolve(self, batch: list[_Pending], err: BaseException | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for p in batch:
            if p.fut is not None and p.loop is not None:
                by_loop.setdefault(p.loop, []).append((p.fut, p.chunk, err))
            else:
                p.error = err
                assert p.event is not None
                p.event.set()
        group = self._group_sync
        merge = group is not None and group.in_round()
        for loop, items in by_loop.items():
            if merge:
                assert group is not None
                group.post(loop, _resolve_many, items)
                continue
            try:
                loop.call_soon_threadsafe(_resolve_many, items)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass

    def _write_batch(self, batch: list[_Pending], nbytes: int) -> _Written:
        """Caller holds _io. Writes the batch at the durable end (not yet synced, not yet
        visible to readers: `_publish` does that after the sync)."""
        if self._broken is not None:
            raise SpoolBroken(f"spool {self.name} stopped after a storage error: {self._broken}")
        self._maybe_retire_locked()
        seg = self._writable_segment()
        fd = self._wfd
        assert fd is not None
        off, line = self._end, self._end_line
        ts = self._accept_time()
        parts: list[bytes] = []
        pack = _REC_FIELDS.pack
        prefix = _REC_PREFIX.pack
        crc32 = zlib.crc32
        first_off, first_line = off, line
        for p in batch:
            d = p.data
            ln = len(d)
            fields = pack(off, line, ln, p.lines, ts)
            parts += (prefix(_REC_MAGIC, crc32(d, crc32(fields))), fields, d)
            p.chunk = Chunk(off, off + ln, ts, d, p.lines)
            off += ln
            line += p.lines
        buf = b"".join(parts)
        pos = seg.size
        try:
            _pwrite_all(fd, buf, pos)
        except OSError as e:
            self._rollback(fd, pos, e)
            raise self._io_error(e) from e
        return _Written(seg, fd, pos, len(buf), first_off, first_line, off, line, ts, nbytes)

    def _accept_time(self) -> float:
        """Caller holds _io. The wall clock, held at the last accept time across a small step
        back; after a larger one it follows the clock (see CLOCK_STEP_BACK_SECONDS)."""
        ts = self._clock()
        last = self._last_accepted
        if ts >= last:
            self._clock_behind = False
            return ts
        if last - ts <= CLOCK_STEP_BACK_SECONDS:
            return last
        if not self._clock_behind:
            self._clock_behind = True
            log.warning(
                "spool %s: the wall clock is %.1f s behind the last accept time; accept times "
                "follow it back (the clock was ahead, or was stepped back)",
                self.name,
                last - ts,
            )
        return ts

    def _publish(self, w: _Written) -> None:
        """Caller holds _io; the batch is durable: readers and waiters may see it now."""
        seg = w.seg
        with self._mu:
            if w.pos - (seg.index[-1][1] if seg.index else SEG_HEADER_BYTES) >= INDEX_INTERVAL:
                seg.index.append((w.first_off, w.pos, w.first_line))
            seg.size = w.pos + w.size
            seg.end = w.end
            self._end = w.end
            self._end_line = w.end_line
            self._last_accepted = w.ts
            self._disk_bytes += w.size
            self._reserved -= w.nbytes
            self._cond.notify_all()
            waiters = self._take_waiters_below(w.end)
        self._wake_waiters(waiters)

    def _io_error(self, e: OSError) -> SpoolError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return SpoolFull(
                f"spool {self.name}: the disk is full ({e})",
                retry_after=5.0,
                fix="Free disk space or lower the spool max_bytes below the free space.",
            )
        return SpoolBroken(f"spool {self.name}: write failed ({e})", fix="Check the disk.")

    def _rollback(self, fd: int, pos: int, cause: OSError) -> None:
        """Undo a partly written batch so the next one lands at the durable end."""
        try:
            os.ftruncate(fd, pos)
            _fdatasync(fd)
        except OSError as e:
            self._broken = f"write failed ({cause}) and could not be rolled back ({e})"

    def _writable_segment(self) -> _Segment:
        """The segment the next batch goes into; rotates and creates files as needed."""
        seg = self._segments[-1] if self._segments else None
        if seg is not None and seg.end == self._end and seg.size < self._effective_segment_bytes():
            if self._wfd is None:
                self._wfd = os.open(self._seg_path(seg.base), os.O_WRONLY | _O_CLOEXEC)
            return seg
        # Seal the current segment (its data is already durable) and start a new one.
        self._close_wfd()
        if not os.path.isdir(self._dir):
            parent = os.path.dirname(os.path.abspath(self._dir))
            os.makedirs(self._dir, exist_ok=True)
            fsync_dir(parent)
        base = self._end
        self._unlink(f"{base}{CLEAN_SUFFIX}")
        path = self._seg_path(base)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
        try:
            hdr = with_crc(_SEG_HDR.pack(_SEG_MAGIC, base, self._end_line, self._last_accepted))
            _pwrite_all(fd, hdr + b"\0" * (SEG_HEADER_BYTES - len(hdr)), 0)
            _fdatasync(fd)
            fsync_dir(self._dir)
        except OSError as e:
            os.close(fd)
            self._unlink(segment_name(base))
            raise self._io_error(e) from e
        new = _Segment(base, SEG_HEADER_BYTES, base, self._end_line)
        with self._mu:
            self._segments.append(new)
            self._disk_bytes += SEG_HEADER_BYTES
        if self._budget is not None:
            self._budget.adjust(SEG_HEADER_BYTES)
        self._wfd = fd
        self._note_size = -1
        return new
