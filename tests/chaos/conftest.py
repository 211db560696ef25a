"""Chaos fixtures: the spool backend as a parameter, the run's seed (printed on failure), the
disks of the disk-fault cases, and no serve process left behind.

Backends: every case that takes `spool_backend` runs once per entry of `chaos.backends.BACKENDS`
("local" today). The "nats" path is ready: a loopback nats-server (`nats_helpers.nats_server`,
one per module) and `[spool] backend = "nats"` with its URL, a stream prefix of the test's own,
2 shards, 1 replica. Adding "nats" to `BACKENDS` is the one-line switch once issue 29's backend
lands; until then a "nats" row skips with `nats_pending()`'s reason (try it with
LOGFERRY_CHAOS_BACKENDS=local,nats). Cases about the local spool's own files carry
`LOCAL_SPOOL_ONLY`: one "local" row whatever `BACKENDS` holds, never a "nats" skip.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.backends import BACKENDS, nats_pending, nats_spool
from chaos.disks import Ext4Disk, run
from chaos.harness import SEED_ENV, chaos_seed
from nats_helpers import nats_server  # noqa: F401  # the "nats" rows' server (a fixture)
from service_helpers import reap_all


@pytest.fixture(params=BACKENDS)
def spool_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `[spool]` settings that select the backend (merged into the serve config)."""
    if request.param == "local":
        return {}
    if request.param == "nats":
        reason = nats_pending()
        if reason is not None:
            pytest.skip(reason)
        cluster = request.getfixturevalue("nats_server")
        return nats_spool(cluster.urls, f"C{uuid.uuid4().hex[:12].upper()}")
    raise ValueError(f"unknown spool backend {request.param!r}")


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    value = chaos_seed()
    request.node.chaos_seed = value
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of our own (mounting needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the chaos suite as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine")
    target = tmp_path / "small-disk"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[Ext4Disk]:
    """A 64 MiB ext4 image on a loop device that a test can fail (read-only) and repair."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root (CI runs the chaos suite as root)")
    for tool in ("mkfs.ext4", "e2fsck", "mount", "findmnt"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} on this machine (e2fsprogs, util-linux)")
    if not Path("/dev/loop-control").exists() or not Path("/sys/fs/ext4").exists():
        pytest.skip("no loop devices or no ext4 in this kernel")
    image, path = tmp_path / "spool.ext4", tmp_path / "ext4-disk"
    path.mkdir()
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    run(["mkfs.ext4", "-q", str(image)])
    disk = Ext4Disk(image, path)
    disk.mount()
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    seed = getattr(item, "chaos_seed", None)
    if seed is not None and report.failed:
        report.sections.append(
            ("chaos seed", f"reproduce with {SEED_ENV}={seed} pytest {item.nodeid!r}")
        )
