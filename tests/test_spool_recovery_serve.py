"""Damage in the newest spool segment after a kill -9 costs only the damaged record (issue 27).

Through a real `logferry serve`: lines are acknowledged (202), serve is killed with SIGKILL, a
record in the middle of the endpoint's newest (active) segment gets a flipped byte, and serve is
started again. Every line of every other request must reach the bucket exactly once (checked by
content), and the damaged record must be quarantined and reported like the read path reports it:
status `quarantine`, the `logferry_spool_quarantined_bytes` metric, and an error in the log.

Delivery is held in the first run (`period = 3600`, no idle flush), so everything is pending in
the spool when it is killed; the restart turns on a 1 s idle flush.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_helpers import (
    assert_exactly_once,
    body_of,
    bucket_content,
    endpoint_uid,
    ingest,
    make_lines,
    put_customer,
    put_endpoint,
    rewrite_config,
    segment_files,
    status,
    wait_pending_zero,
)
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config, reap_all, wait_for

SEG_HEADER_BYTES = 40  # spool segment header (src/logferry/spool/format.py)
REC_HEADER_BYTES = 40  # record header `<4sIQQIId`


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


def test_damaged_record_in_the_newest_segment_is_quarantined_after_kill9(
    emulator: Emulator, unique: Any, tmp_path: Path
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    spool_dir = tmp_path / "spool"
    config = base_config(
        emulator,
        spool_dir,
        server={"idle_flush_seconds": 0},
        spool={"dir": str(spool_dir), "max_bytes": "1GiB"},  # 64 MiB segments: one segment
    )
    serve = ServeProcess(emulator, config, tmp_path).start()
    # Five requests of 300 lines (~30 KB): each is one record of the one (active) segment.
    requests = [make_lines(f"r{i}", 300, size=99) for i in range(5)]
    endpoint = {
        "type": "s3",
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "path": "logs/",
        "period": 3600,
    }
    with serve.admin() as admin:
        put_customer(admin, customer)
        assert put_endpoint(admin, customer, "s3", endpoint).status_code == 201
        for lines in requests:
            assert ingest(admin, customer, "s3", body_of(lines)) == len(lines)
        # Kill once the write probe is done (a kill during its CreateMultipartUpload leaves an
        # upload the guide's policy cannot list).
        wait_for(lambda: status(admin, customer, "s3")["state"] == "active", timeout=60)
    serve.kill9()

    uid = endpoint_uid(spool_dir, customer, "s3")
    [newest] = segment_files(spool_dir, uid)
    record = REC_HEADER_BYTES + len(body_of(requests[0]))
    assert newest.stat().st_size == SEG_HEADER_BYTES + 5 * record  # nothing delivered yet
    at = SEG_HEADER_BYTES + 2 * record + REC_HEADER_BYTES + 10_000  # inside r2's payload
    with newest.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x20]))

    rewrite_config(serve, server={"idle_flush_seconds": 1})
    serve.start()
    try:
        wait_pending_zero(serve, customer, "s3", timeout=90)
        with serve.admin() as admin:
            shown = status(admin, customer, "s3")
            metrics = admin.get("/metrics").text
    finally:
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket, "logs/")
    kept = [line for i, lines in enumerate(requests) if i != 2 for line in lines]
    assert_exactly_once(found.lines, kept)
    assert pending_uploads(emulator, role.bucket) == []

    quarantine = shown.get("quarantine")
    assert quarantine, f"status does not name a quarantine: {json.dumps(shown)[:800]}"
    assert quarantine["records"] == 1, quarantine
    assert quarantine["lines"] == 300, quarantine
    assert quarantine["bytes"] == record, quarantine
    qfile = Path(quarantine["path"])
    assert qfile.is_file() and qfile.stat().st_size == record
    assert body_of(requests[2])[1000:1100] in qfile.read_bytes()  # the damaged record, as stored
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("logferry_spool_quarantined_bytes") and customer in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == record, counted
    logs = serve.logs()
    assert "damaged bytes" in logs and "newest segment" in logs  # recovery said what it found
    assert "spool damage quarantined" in logs
