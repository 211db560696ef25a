"""A wall clock that jumps forward and back does not stall S3 files (issue 27).

Accept times used to be clamped to the highest ever seen, and that floor is persisted: after a
jump forward (then corrected), every new line was stamped with the future time, so the S3 file
it joined stayed open until real time caught up. Accept times now hold only across a small step
back (`CLOCK_STEP_BACK_SECONDS`) and follow a larger one. Both the spool and the sink get the
same injected clock; the system clock is never touched.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from botocore.config import Config

from e2e_helpers import bucket_content
from logferry.aws.clients import AwsClients
from logferry.local.emulator import Emulator
from logferry.sinks.s3 import S3Sink
from logferry.sinks.s3_config import S3Endpoint
from logferry.spool import Spool, SpoolManager
from logferry.spool.log import CLOCK_STEP_BACK_SECONDS
from s3_helpers import make_s3_role, role_credentials

T0 = 1_720_137_600.0  # 2024-07-05T00:00:00Z, a period boundary
DAY = 86_400.0


class Clock:
    """The one wall clock the spool and the sink read."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_accept_times_follow_a_clock_stepped_back(tmp_path: Path) -> None:
    clock = Clock(T0)
    spool = Spool(tmp_path / "ep", clock=clock)
    assert spool.append_sync(b"a\n", 1).accepted_at == T0
    clock.now = T0 + DAY  # a wrong jump forward ...
    assert spool.append_sync(b"b\n", 1).accepted_at == T0 + DAY
    clock.now = T0 + 5  # ... corrected: accept times follow, they are not held a day ahead
    assert spool.append_sync(b"c\n", 1).accepted_at == T0 + 5
    clock.now = T0 + 5 - CLOCK_STEP_BACK_SECONDS / 2  # a small step back is held
    assert spool.append_sync(b"d\n", 1).accepted_at == T0 + 5
    clock.now = T0 + 6
    assert spool.append_sync(b"e\n", 1).accepted_at == T0 + 6
    clock.now = T0 + DAY
    spool.append_sync(b"f\n", 1)
    spool.close()
    # The persisted floor (commit file, segment header) does not hold a restart's times either.
    clock.now = T0 + 10
    with SpoolManager(tmp_path / "m", janitor=False, clock=clock) as manager:
        first = manager.open("x")
        assert first.append_sync(b"g\n", 1).accepted_at == T0 + 10
    again = Spool(tmp_path / "ep", clock=clock)
    assert again.append_sync(b"h\n", 1).accepted_at == T0 + 10
    stamps = [c.accepted_at for c in again.read(0, 1 << 20)]
    assert stamps == [T0, T0 + DAY, T0 + 5, T0 + 5, T0 + 6, T0 + DAY, T0 + 10]
    again.close()


def test_s3_files_keep_closing_after_a_clock_jump_forward_and_back(
    emulator: Emulator, unique: Any, tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique, external_id=unique("ext"))
    clients = AwsClients(
        role_credentials(emulator, role),
        emulator.target,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    endpoint = S3Endpoint(
        name="clock", bucket_name=role.bucket, iam_role=role.role_arn, path="c/", period=60
    )
    clock = Clock(T0 + 1)
    spool = Spool(tmp_path / "spool", clock=clock)
    sink = S3Sink(endpoint, clients, tmp_path / "state", uid_prefix="k-", clock=clock)
    sink.recover()
    sent: list[bytes] = []
    fed = [0]

    def deliver(tag: str) -> None:
        """Ingest lines now, then do what the worker does while caught up."""
        lines = [f"{tag}-{i:04d}".encode() for i in range(50)]
        sent.extend(lines)
        spool.append_sync(b"".join(x + b"\n" for x in lines), len(lines))
        for chunk in spool.read(fed[0], 1 << 20):
            sink.feed(chunk)
            fed[0] = chunk.end
        sink.pump(caught_up=True)
        spool.commit(sink.durable_offset)

    deliver("before")  # 00:00:01
    clock.now = T0 + DAY + 1  # the clock jumps a day ahead
    deliver("ahead")
    clock.now = T0 + 20  # and is set right
    deliver("after")
    clock.now = T0 + 61  # one period later by the (right) clock, nothing new arrives
    sink.pump(caught_up=True)
    spool.commit(sink.durable_offset)
    # Every line is in the bucket now: no file waits a day for real time to catch up.
    assert sink.durable_offset == spool.end_offset, (sink.durable_offset, spool.end_offset)
    assert bucket_content(emulator, role.bucket, "c/").lines == Counter(sent)
    assert spool.pending_lines == 0
    spool.close()
