"""One durable sync for the appends of many spools: a dedicated thread and `syncfs(2)`.

Why: with many small tenants every request lands in its own endpoint's spool, so per-spool group
commit never groups anything and serve paid one fdatasync per request. Measured on this VM's
ext4 (50 files, one 2 KB append each, then sync; process CPU, kernel time included):
one fdatasync per file 480-570 µs CPU and 2.5-3.3 ms wall per append; 8 threads of fdatasync
630 µs / 1.25 ms; one `syncfs` for all 50: 55-59 µs CPU and 0.35 ms wall per append (5 files:
225 µs vs 520 µs). A shared write-ahead file would also need one sync per group but rewrites
every byte and needs its own recovery; `syncfs` keeps the spool format unchanged.

How: a spool with a small batch queued asks the sync thread to write it (`submit_flush`); a
large batch is written on the flush pool, whose thread then `submit`s the file descriptor. Each
round the sync thread writes the small batches asked for (pwrite, under each spool's `_io`
lock), calls `syncfs` once per filesystem for everything written, and runs the completions
(each publishes its batch and acknowledges its appenders). Appenders are acknowledged only after
that sync returned, as before; the completions' wake-ups of the event loop are merged into one
per loop per round (`post`).

Why the sync thread writes small batches itself: at many small tenants nothing arrives together,
so every request paid three thread hand-offs (loop → flush pool → sync thread → loop), each a
futex wake and a GIL hand-over; on this VM one such hop cost ≈ 0.5 ms of CPU, more than the
pwrite (≈ 30 µs). Writing on the sync thread makes it two. Large batches keep the flush pool so
their copy into the page cache overlaps other spools' syncs.

Writeback errors (docs/security.md, "Spool durability"). Since Linux 5.8 `syncfs` reports a
writeback error of *any* file of the filesystem, but only one that happened since the file
descriptor it is called through was opened or last passed to `syncfs` (the superblock's errseq
is sampled per open file). Syncing through the first spool file of a round would miss an error
on another spool's file whenever that first file was opened after the error (a new segment, a
spool reopened after idling), and the other spool would be acknowledged without its data. So
every `syncfs` goes through one watch descriptor per filesystem, opened on the spool root before
any spool file is written and used for nothing else: it reports every error since. After an
error the round falls back to one fdatasync per file, which reports each file's own errors, so
each spool learns whether *its* data is durable (a failed fdatasync marks that spool broken,
exactly as without grouping). A file on a filesystem without a watch descriptor (a spool
directory that is a mount point of its own) gets its own fdatasync. Before Linux 5.8 `syncfs`
reports no writeback error at all: there the mode falls back to "fdatasync".

Cost of the choice: `syncfs` also writes back other processes' dirty data on the same
filesystem; put the spool on its own filesystem when something else writes heavily there, or
set `spool.group_sync = "fdatasync"` (one fdatasync per file, still on this one thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from logferry.spool.files import _fdatasync

log = logging.getLogger(__name__)

Done = Callable[[OSError | None], None]
"""Completion: None when the file's written data is durable, else the error of its sync."""

Flush = Callable[[], "tuple[int, Done] | None"]
"""Writes a spool's queued batch on the sync thread; returns (fd, completion) to sync in this
round, or None when there is nothing to sync (finished, or handed to the flush pool)."""

MODES = ("syncfs", "fdatasync")


def _load_syncfs() -> Callable[[int], None] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")

    return syncfs


_syncfs = _load_syncfs()
"""The os-call seam, with `_fdatasync`: tests put a model of the kernel's error reporting here."""

SYNCFS_ERRORS_SINCE = (5, 8)
"""First Linux version whose syncfs(2) reports writeback errors (`man 2 syncfs`)."""


def _kernel_release() -> str:
    return os.uname().release


def syncfs_reports_errors(release: str | None = None) -> bool:
    """Whether this kernel's syncfs(2) reports writeback errors (Linux >= 5.8)."""
    found = re.match(r"(\d+)\.(\d+)", release if release is not None else _kernel_release())
    return found is not None and (int(found[1]), int(found[2])) >= SYNCFS_ERRORS_SINCE


class GroupSync:
    """A sync thread shared by the spools of one manager (thread-safe `submit`)."""

    def __init__(
        self,
        mode: str = "syncfs",
        *,
        name: str = "spool-sync",
        roots: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        """`roots`: directories holding every file this group will sync (the spool root);
        their filesystems get a watch descriptor now, before any of those files is written."""
        if mode not in MODES:
            raise ValueError(f"group sync mode {mode!r}: use one of {', '.join(MODES)}")
        if mode == "syncfs" and _syncfs is None:
            log.warning("syncfs(2) is not available here; spool syncs use fdatasync per file")
            mode = "fdatasync"
        if mode == "syncfs" and not syncfs_reports_errors():
            log.warning(
                "syncfs(2) reports no writeback errors before Linux 5.8 (this is %s); spool "
                "syncs use fdatasync per file",
                _kernel_release(),
            )
            mode = "fdatasync"
        self.mode = mode
        self._watch: dict[int, int] = {}
        """st_dev -> watch descriptor: syncfs goes through it (see the module docstring)."""
        if mode == "syncfs":
            for root in roots:
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                dev = os.fstat(fd).st_dev
                if dev in self._watch:
                    os.close(fd)
                else:
                    self._watch[dev] = fd
        self._cond = threading.Condition()
        self._queue: list[tuple[int, Done]] = []
        self._flushes: list[Flush] = []
        self._outbox: dict[tuple[Any, Callable[[list[Any]], None]], list[Any]] | None = None
        """Wake-ups for event loops, collected during a round (sync thread only)."""
        self._closed = False
        self.syncs = 0
        """Sync rounds done (for benches and tests: appends per round = files / syncs)."""
        self.files = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fd: int, done: Done) -> None:
        """Make what was written to `fd` durable, then call `done` on the sync thread. The
        caller keeps `fd` open until `done` ran."""
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._queue.append((fd, done))
                self._cond.notify()
        if closed:  # after close(): sync inline, never lose an acknowledgement
            done(_sync_one(fd))

    def submit_flush(self, flush: Flush) -> bool:
        """Run `flush` on the sync thread at the start of its next round and sync what it
        wrote in that round. False once closed: the caller writes on its own thread."""
        with self._cond:
            if self._closed:
                return False
            self._flushes.append(flush)
            self._cond.notify()
        return True

    def waiting(self) -> int:
        """Batches waiting for the next round (flushes to write and files to sync)."""
        with self._cond:
            return len(self._queue) + len(self._flushes)

    def in_round(self) -> bool:
        """True on the sync thread while it runs completions (`post` is usable)."""
        return self._outbox is not None and threading.current_thread() is self._thread

    def post(self, loop: Any, fn: Callable[[list[Any]], None], items: list[Any]) -> None:
        """From a completion: call `fn(items)` on `loop` after this round, merged with the
        round's other items for the same loop and `fn` (one wake-up of the loop per round)."""
        assert self._outbox is not None, "post() outside a sync round"
        self._outbox.setdefault((loop, fn), []).extend(items)

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)
            if not self._thread.is_alive():
                watch, self._watch = self._watch, {}
                for fd in watch.values():
                    os.close(fd)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._flushes and not self._closed:
                    self._cond.wait()
                batch, self._queue = self._queue, []
                flushes, self._flushes = self._flushes, []
                if not batch and not flushes and self._closed:
                    return
            self._round(flushes, batch)
            # hold no spool while idle: an unused spool must be collectable
            batch, flushes = [], []

    def _round(self, flushes: list[Flush], batch: list[tuple[int, Done]]) -> None:
        for flush in flushes:
            try:
                written = flush()
            except BaseException:  # one spool's bug must not stop every spool's acks
                log.exception("spool flush on the sync thread failed")
                continue
            if written is not None:
                batch.append(written)
        if not batch:
            return
        errors = self._sync(batch)
        self.syncs += 1
        self.files += len(batch)
        self._outbox = {}
        try:
            for (fd, done), err in zip(batch, errors, strict=True):
                try:
                    done(err)
                except BaseException:  # a callback's bug must not stop every spool's acks
                    log.exception("spool sync completion failed (fd %d)", fd)
        finally:
            outbox, self._outbox = self._outbox, None
            for (loop, fn), items in outbox.items():
                try:
                    loop.call_soon_threadsafe(fn, items)
                except RuntimeError:  # loop closed: nobody is waiting any more
                    pass

    def _sync(self, batch: list[tuple[int, Done]]) -> list[OSError | None]:
        syncfs = _syncfs
        if self.mode != "syncfs" or syncfs is None or not self._watch:
            return [_sync_one(fd) for fd, _ in batch]
        errors: list[OSError | None] = [None] * len(batch)
        alone: list[int] = []  # indexes of files that need their own fdatasync
        by_dev: dict[int, list[int]] = {}
        for i, (fd, _) in enumerate(batch):
            try:
                dev = os.fstat(fd).st_dev
            except OSError as e:
                errors[i] = e
                continue
            if dev in self._watch:
                by_dev.setdefault(dev, []).append(i)
            else:
                alone.append(i)  # no watch descriptor there: syncfs could miss its error
        for dev, members in by_dev.items():
            try:
                syncfs(self._watch[dev])
            except OSError as e:  # which file failed? each one's own fdatasync tells
                log.warning("syncfs failed (%s); syncing %d files one by one", e, len(members))
                alone += members
        for i in alone:
            errors[i] = _sync_one(batch[i][0])
        return errors


def _sync_one(fd: int) -> OSError | None:
    try:
        _fdatasync(fd)
    except OSError as e:
        return e
    return None
