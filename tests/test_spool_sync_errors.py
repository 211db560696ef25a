"""The shared syncfs never acknowledges a file whose writeback failed (issue 27).

Linux reports writeback errors per open file (errseq, `man 2 syncfs`, `man 2 fsync`): `syncfs`
reports an error of any file of the filesystem, but only one newer than the descriptor it is
called through (sampled when that descriptor was opened, advanced by each syncfs through it);
`fdatasync` reports the file's own errors newer than its descriptor. A real writeback error needs
a failing device, which a test on a shared machine cannot have, so the two calls are replaced at
group_sync's os-call seam (`_syncfs`, `_fdatasync`) by a model of exactly those rules; the files,
descriptors and the sync thread are real.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from logferry.spool import group_sync
from logferry.spool.group_sync import GroupSync, syncfs_reports_errors


class KernelErrors:
    """Writeback-error reporting of one filesystem, as Linux >= 5.8 does it.

    A descriptor counts as opened when this model first sees it (tests show each descriptor
    to it in the order the real program opened them)."""

    def __init__(self) -> None:
        self.sb_err = 0  # superblock errseq (sb->s_wb_err)
        self.inode_err: dict[int, int] = {}  # per-file errseq (mapping->wb_err)
        self.fd_sb: dict[int, int] = {}  # file->f_sb_err
        self.fd_wb: dict[int, int] = {}  # file->f_wb_err
        self.syncfs_through: list[int] = []

    def open(self, fd: int) -> None:
        self.fd_sb.setdefault(fd, self.sb_err)
        self.fd_wb.setdefault(fd, self.inode_err.get(os.fstat(fd).st_ino, 0))

    def fail_writeback(self, fd: int) -> None:
        """The kernel could not write some of this file's dirty pages back."""
        ino = os.fstat(fd).st_ino
        self.inode_err[ino] = self.inode_err.get(ino, 0) + 1
        self.sb_err += 1

    def syncfs(self, fd: int) -> None:
        self.open(fd)
        self.syncfs_through.append(fd)
        if self.fd_sb[fd] != self.sb_err:
            self.fd_sb[fd] = self.sb_err
            raise OSError(errno.EIO, "syncfs: Input/output error")

    def fdatasync(self, fd: int) -> None:
        self.open(fd)
        now = self.inode_err.get(os.fstat(fd).st_ino, 0)
        if self.fd_wb[fd] != now:
            self.fd_wb[fd] = now
            raise OSError(errno.EIO, "fdatasync: Input/output error")


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> KernelErrors:
    model = KernelErrors()
    monkeypatch.setattr(group_sync, "_syncfs", model.syncfs)
    monkeypatch.setattr(group_sync, "_fdatasync", model.fdatasync)
    monkeypatch.setattr(group_sync, "_kernel_release", lambda: "6.8.0")
    return model


@pytest.fixture
def fds(tmp_path: Path) -> Iterator[dict[str, int]]:
    opened: dict[str, int] = {}
    yield opened
    for fd in opened.values():
        os.close(fd)


def _round(group: GroupSync, fds: list[int]) -> list[OSError | None]:
    """Submit `fds` so they are synced in one round; returns each one's completion error."""
    gate = threading.Event()
    group.submit_flush(lambda: gate.wait() and None)  # hold the thread in a round of its own
    while group.waiting():
        threading.Event().wait(0.001)
    results: dict[int, OSError | None] = {}
    done = threading.Event()

    def completion(i: int) -> group_sync.Done:
        def finish(err: OSError | None) -> None:
            results[i] = err
            if len(results) == len(fds):
                done.set()

        return finish

    for i, fd in enumerate(fds):
        group.submit(fd, completion(i))
    rounds = group.syncs
    gate.set()
    assert done.wait(10)
    assert group.syncs == rounds + 1  # all of them in the same round
    return [results[i] for i in range(len(fds))]


def test_an_error_on_another_file_fails_only_that_files_acknowledgement(
    tmp_path: Path, kernel: KernelErrors, fds: dict[str, int]
) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    group = GroupSync("syncfs", roots=[root])
    try:
        assert group.mode == "syncfs"
        fds["b"] = os.open(root / "b.seg", os.O_WRONLY | os.O_CREAT, 0o600)
        kernel.open(fds["b"])
        os.write(fds["b"], b"acknowledged earlier\n")
        assert _round(group, [fds["b"]]) == [None]  # b was opened and synced before the error
        os.write(fds["b"], b"written, not yet synced\n")
        kernel.fail_writeback(fds["b"])  # background writeback of b fails
        # Another spool starts a new segment after that: its descriptor is newer than the error.
        fds["a"] = os.open(root / "a.seg", os.O_WRONLY | os.O_CREAT, 0o600)
        kernel.open(fds["a"])
        os.write(fds["a"], b"a's batch\n")
        a_err, b_err = _round(group, [fds["a"], fds["b"]])
        assert a_err is None  # a's data is durable: acknowledged
        assert isinstance(b_err, OSError) and b_err.errno == errno.EIO  # b's is not
        assert fds["a"] not in kernel.syncfs_through and fds["b"] not in kernel.syncfs_through
        # The error was reported once: the next rounds are clean again.
        assert _round(group, [fds["a"]]) == [None]
    finally:
        group.close()


def test_an_error_on_a_file_not_in_the_round_fails_nobody(
    tmp_path: Path, kernel: KernelErrors, fds: dict[str, int]
) -> None:
    """Another program's file on the same filesystem: everyone is checked, nobody is failed."""
    root = tmp_path / "spool"
    root.mkdir()
    group = GroupSync("syncfs", roots=[root])
    try:
        fds["other"] = os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT, 0o600)
        kernel.open(fds["other"])
        fds["a"] = os.open(root / "a.seg", os.O_WRONLY | os.O_CREAT, 0o600)
        kernel.open(fds["a"])
        kernel.fail_writeback(fds["other"])
        assert _round(group, [fds["a"]]) == [None]
    finally:
        group.close()


def test_no_watch_descriptor_means_one_fdatasync_per_file(
    tmp_path: Path, kernel: KernelErrors, fds: dict[str, int]
) -> None:
    """Without a root opened before the files were written, syncfs could miss an error."""
    group = GroupSync("syncfs")
    try:
        fds["a"] = os.open(tmp_path / "a", os.O_WRONLY | os.O_CREAT, 0o600)
        kernel.open(fds["a"])
        kernel.fail_writeback(fds["a"])
        fds["late"] = os.open(tmp_path / "late", os.O_WRONLY | os.O_CREAT, 0o600)
        kernel.open(fds["late"])
        late_err, a_err = _round(group, [fds["late"], fds["a"]])
        assert late_err is None and isinstance(a_err, OSError)
        assert kernel.syncfs_through == []
    finally:
        group.close()


def test_kernels_before_5_8_use_fdatasync(
    tmp_path: Path, kernel: KernelErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_sync, "_kernel_release", lambda: "5.4.0-150-generic")
    group = GroupSync("syncfs", roots=[tmp_path])
    try:
        assert group.mode == "fdatasync"
    finally:
        group.close()


@pytest.mark.parametrize(
    ("release", "reports"),
    [
        ("5.4.0-150-generic", False),
        ("5.7.19", False),
        ("5.8.0", True),
        ("5.15.0-1051-azure", True),
        ("6.18.44-fc-v1300", True),
        ("4.19.0", False),
        ("unknown", False),
    ],
)
def test_syncfs_reports_errors_from_linux_5_8(release: str, reports: bool) -> None:
    assert syncfs_reports_errors(release) is reports
