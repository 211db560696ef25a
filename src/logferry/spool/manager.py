"""All endpoint spools under one directory: lazy open, idle close, a shared byte budget.

Scale target: 10,000 configured endpoints on one machine. An endpoint costs nothing until it
is used: its directory appears on the first append, its spool object is built on first use, and
after `idle_close_seconds` without use the spool's file handles are closed and the manager
drops its reference (an idle spool nobody else holds is garbage-collected; one a delivery
worker still holds stays valid and reopens what it needs on its next call). No thread per
endpoint: every spool's group commits run on one shared flush pool, and one janitor thread
closes idle spools.

Directory layout: `<root>/.lock` (one process per root), `<root>/<encoded key>/` per endpoint.
Keys are percent-encoded into directory names, so any string (e.g. "customer/endpoint") is
safe and `keys_on_disk()` gives the original keys back.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, unquote

from logferry.errors import InputError
from logferry.spool.group_sync import GroupSync
from logferry.spool.log import (
    DEFAULT_SEGMENT_BYTES,
    LocalSpool,
    SpoolBudget,
    SpoolError,
    fsync_dir,
    segment_files_bytes,
)
from logferry.spool.size import parse_size

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def encode_key(key: str) -> str:
    """Endpoint key -> one safe directory name (reversible with `decode_key`)."""
    if not key:
        raise InputError("endpoint key", "is empty.", fix="Give every endpoint a non-empty key.")
    name = quote(key, safe="-_~")
    name = name.replace(".", "%2E")  # no ".", "..", or hidden names that clash with ".lock"
    if len(name.encode()) > 255:
        raise InputError(
            "endpoint key",
            f"{key[:40]!r}... is too long to be a directory name ({len(name)} bytes encoded).",
            fix="Use keys under ~80 characters.",
        )
    return name


def decode_key(name: str) -> str:
    return unquote(name)


class SpoolManager:
    """Opens, bounds and idles the spools of every endpoint under `directory`."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int | str | None = None,
        endpoint_max_bytes: int | str | None = None,
        segment_bytes: int | str = DEFAULT_SEGMENT_BYTES,
        idle_close_seconds: float = 60.0,
        flush_threads: int = 8,
        max_open_spools: int | None = None,
        janitor: bool = True,
        quarantine_dir: str | os.PathLike[str] | None = None,
        budget_for: Callable[[str], SpoolBudget | None] | None = None,
        group_sync: str | None = "syncfs",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._budget_for = budget_for
        self._clock = clock
        """Wall clock for the spools' accept times (injectable for tests)."""
        """Per-key budget (e.g. a tenant's quota layered over the shared one); None: shared."""
        self._root = os.path.abspath(os.fspath(directory))
        self._quarantine_root = (
            os.path.abspath(os.fspath(quarantine_dir))
            if quarantine_dir is not None
            else os.path.join(self._root, ".quarantine")
        )
        self._segment_bytes = parse_size(segment_bytes, where="spool.segment_bytes")
        self._endpoint_max = (
            parse_size(endpoint_max_bytes, where="spool.endpoint_max_bytes")
            if endpoint_max_bytes is not None
            else None
        )
        self._limits: dict[str, int | None] = {}
        self.idle_close_seconds = idle_close_seconds
        if max_open_spools is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            soft = 1024 if soft == resource.RLIM_INFINITY else soft
            max_open_spools = min(4096, max(64, soft // 4))  # each holds <= 3 fds
        self.max_open_spools = max_open_spools
        if not os.path.isdir(self._root):
            os.makedirs(self._root, exist_ok=True)
            fsync_dir(os.path.dirname(self._root))
        self._lock_fd = os.open(
            os.path.join(self._root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(
                f"spool directory {self._root} is in use by another process",
                fix="Give each logferry process its own spool directory.",
            ) from None
        for name in os.listdir(self._root):  # a crash interrupted drop(): finish it
            if name.startswith(".drop-"):
                shutil.rmtree(os.path.join(self._root, name), ignore_errors=True)
        used = sum(segment_files_bytes(os.path.join(self._root, n)) for n in self._dir_names())
        limit = parse_size(max_bytes, where="spool.max_bytes") if max_bytes is not None else None
        self._budget = SpoolBudget(limit, used)
        self._executor = ThreadPoolExecutor(
            max_workers=flush_threads, thread_name_prefix="spool-flush"
        )
        # One sync thread for every spool's batches (see spool.group_sync); None: each spool
        # fdatasyncs its own file on its flush thread.
        self._group_sync = GroupSync(group_sync, roots=[self._root]) if group_sync else None
        self._mu = threading.Lock()
        self._all: weakref.WeakValueDictionary[str, LocalSpool] = weakref.WeakValueDictionary()
        self._active: dict[str, LocalSpool] = {}
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._janitor: threading.Thread | None = None
        if janitor and idle_close_seconds > 0:
            self._janitor = threading.Thread(
                target=self._janitor_loop, name="spool-janitor", daemon=True
            )
            self._janitor.start()

    # -- lookup ------------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._root

    @property
    def budget(self) -> SpoolBudget:
        return self._budget

    @property
    def total_bytes(self) -> int:
        """Disk bytes of every endpoint's segments (reserved in-flight appends included)."""
        return self._budget.used

    @property
    def max_bytes(self) -> int | None:
        return self._budget.max_bytes

    def _key_budget(self, key: str) -> SpoolBudget:
        return (self._budget_for(key) if self._budget_for else None) or self._budget

    def key_disk_bytes(self, key: str) -> int:
        """Segment bytes on disk for `key` (to seed a per-key budget at start)."""
        return segment_files_bytes(os.path.join(self._root, encode_key(key)))

    def _dir_names(self) -> list[str]:
        try:
            return [
                e.name
                for e in os.scandir(self._root)
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            ]
        except FileNotFoundError:
            return []

    def keys_on_disk(self) -> list[str]:
        """Endpoint keys that have a spool directory (to resume delivery after a restart)."""
        return sorted(decode_key(n) for n in self._dir_names())

    def open_keys(self) -> list[str]:
        """Keys whose spools currently hold file handles or are in use."""
        with self._mu:
            return sorted(self._active)

    def open(self, key: str, *, max_bytes: int | str | None = None) -> LocalSpool:
        """The spool of `key`, built on first use (reads disk, writes nothing until append).

        `max_bytes` sets this endpoint's own limit (else the manager's endpoint_max_bytes).
        """
        if max_bytes is not None:
            self.set_limit(key, max_bytes)
        with self._mu:
            if self._closed:
                raise SpoolError("the spool manager is closed")
            spool = self._all.get(key)
            if spool is None:
                spool = LocalSpool(
                    os.path.join(self._root, encode_key(key)),
                    segment_bytes=self._segment_bytes,
                    max_bytes=self._limits.get(key, self._endpoint_max),
                    budget=self._key_budget(key),
                    executor=self._executor,
                    group_sync=self._group_sync,
                    name=key,
                    on_activate=self._activate,
                    quarantine_dir=os.path.join(self._quarantine_root, encode_key(key)),
                    clock=self._clock,
                )
                self._all[key] = spool
            self._active[key] = spool
            spool.last_used = time.monotonic()
            crowded = len(self._active) > self.max_open_spools
        if crowded:
            self._crowded(spool)
        return spool

    def peek(self, key: str) -> LocalSpool | None:
        """The spool of `key` if it is in memory (no file-system call), else None."""
        with self._mu:
            return self._all.get(key)

    def get(self, key: str) -> LocalSpool | None:
        """The spool of `key` if it is in memory or has data on disk, else None."""
        with self._mu:
            spool = self._all.get(key)
        if spool is not None:
            return spool
        if os.path.isdir(os.path.join(self._root, encode_key(key))):
            return self.open(key)
        return None

    def set_limit(self, key: str, max_bytes: int | str | None) -> None:
        """Per-endpoint byte limit (None: only the manager-wide limits apply)."""
        limit = (
            parse_size(max_bytes, where=f"spool limit of {key}") if max_bytes is not None else None
        )
        with self._mu:
            self._limits[key] = limit
            spool = self._all.get(key)
        if spool is not None:
            spool.max_bytes = limit if limit is not None else self._endpoint_max

    def _activate(self, spool: LocalSpool) -> None:
        with self._mu:
            if not self._closed and self._all.get(spool.name) is spool:
                self._active[spool.name] = spool
            crowded = len(self._active) > self.max_open_spools
        if crowded:
            self._crowded(spool)

    def _crowded(self, keep: LocalSpool) -> None:
        # Releasing hundreds of spools is file I/O: keep it off the caller (maybe the event
        # loop) when the janitor can do it; the cap is far below the fd limit, so a short
        # overshoot is harmless.
        if self._janitor is not None:
            self._wake.set()
        else:
            self._shed(keep)

    def _shed(self, keep: LocalSpool | None = None) -> None:
        """Too many spools hold handles: release the least recently used (down to 90%)."""
        with self._mu:
            excess = len(self._active) - (self.max_open_spools * 9) // 10
            oldest = sorted(self._active.values(), key=lambda s: s.last_used)
        for spool in oldest:
            if excess <= 0:
                break
            if spool is not keep and spool.release():
                excess -= 1
                with self._mu:
                    if spool.is_dormant and self._active.get(spool.name) is spool:
                        del self._active[spool.name]

    # -- deletion ----------------------------------------------------------------------------

    def drop(self, key: str) -> None:
        """Delete the endpoint's spool and all its data (the endpoint was deleted)."""
        path = os.path.join(self._root, encode_key(key))
        with self._mu:
            spool = self._all.pop(key, None)
            self._active.pop(key, None)
            self._limits.pop(key, None)
        if spool is not None:
            spool.close()
        freed = segment_files_bytes(path)
        if os.path.isdir(path):
            # Rename first so a crash mid-delete never leaves a half-deleted spool under the key.
            grave = os.path.join(self._root, f".drop-{encode_key(key)}-{time.time_ns()}")
            os.rename(path, grave)
            fsync_dir(self._root)
            shutil.rmtree(grave, ignore_errors=True)
        self._key_budget(key).adjust(-freed)
        log.info("spool %s dropped (%d bytes freed)", key, freed)

    # -- idling ------------------------------------------------------------------------------

    def close_idle(self, idle_seconds: float | None = None) -> int:
        """Release spools unused for `idle_seconds` (default idle_close_seconds); returns count."""
        limit = self.idle_close_seconds if idle_seconds is None else idle_seconds
        now = time.monotonic()
        with self._mu:
            candidates = [s for s in self._active.values() if now - s.last_used >= limit]
        released = 0
        for spool in candidates:
            if spool.release():
                released += 1
                with self._mu:
                    if spool.is_dormant and self._active.get(spool.name) is spool:
                        del self._active[spool.name]
        return released

    def _janitor_loop(self) -> None:
        interval = max(0.05, min(self.idle_close_seconds / 2, 10.0))
        next_sweep = time.monotonic() + interval
        while True:
            self._wake.wait(max(0.0, next_sweep - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._mu:
                    crowded = len(self._active) > self.max_open_spools
                if crowded:
                    self._shed()
                if time.monotonic() >= next_sweep:
                    self.close_idle()
                    next_sweep = time.monotonic() + interval
            except Exception:  # keep janitoring; one bad spool must not stop the sweep
                log.exception("spool janitor failed")

    def close(self) -> None:
        """Flush and close every spool, stop the janitor and the flush pool."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
            spools = list(self._all.values())
            self._active.clear()
        self._stop.set()
        self._wake.set()
        if self._janitor is not None:
            self._janitor.join()
        for spool in spools:
            spool.close()
        self._executor.shutdown(wait=True)
        if self._group_sync is not None:
            self._group_sync.close()
        os.close(self._lock_fd)

    def __enter__(self) -> SpoolManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
