"""Real filesystems for the spool in the chaos cases (root only; the fixtures in conftest skip
naming why elsewhere): an ext4 image that a disk error turns read-only, and a neighbour that
fills whatever filesystem the spool is on."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path


class Ext4Disk:
    """A 64 MiB ext4 image on a loop device, mounted `errors=remount-ro` at `path`.

    A tmpfs cannot be remounted read-only while serve holds a segment open for writing (EBUSY),
    so a failed disk is what Linux itself does after an I/O error: ext4's `trigger_fs_error`
    makes it read-only at once, and it refuses `remount,rw` until unmounted and checked."""

    def __init__(self, image: Path, path: Path) -> None:
        self.image, self.path = image, path

    def mount(self) -> None:
        run(["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path)])

    def fail(self) -> None:
        """An ext4 error: the kernel makes the filesystem read-only at once."""
        device = run(["findmnt", "-n", "-o", "SOURCE", str(self.path)]).strip()
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("1")

    def repair(self) -> None:
        """The operator's recovery: unmount, `e2fsck -fy`, mount again (serve must be stopped)."""
        run(["umount", str(self.path)])
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True, check=False)
        self.mount()


def run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def fill(disk: Path, leave: int = 0) -> Path:
    """Another writer takes all but about `leave` bytes of the filesystem (stopping at ENOSPC),
    which the spool's own budget cannot know about. Delete the returned file to free it."""
    filler = disk / "neighbour.bin"
    want = max(0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave)
    with filler.open("wb", buffering=0) as f:
        for size in (1024 * 1024, 4096):
            try:
                while want >= size:
                    f.write(b"\0" * size)
                    want -= size
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler
