"""Small durable-file helpers the spool (and the S3 journal's style) rely on."""

from __future__ import annotations

import os
from collections.abc import Callable

from logferry.spool.format import TMP_SUFFIX, parse_segment_name

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _pread_full(fd: int, n: int, pos: int) -> bytes:
    data = os.pread(fd, n, pos)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, pos + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def fsync_dir(path: str) -> None:
    """Make creations, renames and deletions in `path` durable."""
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new content."""
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, data, 0)
        if durable:
            _fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


def make_durable(path: str) -> None:
    """Finish a `write_atomic(..., durable=False)`: content and name survive a power loss."""
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        _fdatasync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path) or ".")


def segment_files_bytes(directory: str) -> int:
    """Bytes held by segment files in `directory` (what the spool budget counts)."""
    total = 0
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if parse_segment_name(entry.name) is not None:
                    total += entry.stat().st_size
    except FileNotFoundError:
        return 0
    return total
