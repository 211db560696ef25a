"""Nothing acknowledged is stranded or silently dropped (issue 10), through a real `logferry serve`.

- a corrupt record in a spool segment is quarantined next to the spool, shown in the endpoint's
  status with a fix, and delivery of everything else goes on;
- a stored endpoint that no longer validates keeps its spool (status `invalid`, with the reason)
  and delivers it once its config is fixed;
- changing an endpoint's type while data is pending is refused with 409 (saying why and what to
  do), and allowed once that data is delivered.

Delivery is held in the first run by `period = 3600` without idle flush, so data is
deterministically pending when serve is killed; the restart turns on a 1 s idle flush.
"""

from __future__ import annotations

import json
import sqlite3
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
from kinesis_helpers import kinesis_role, make_stream
from logferry.local.emulator import Emulator
from s3_helpers import S3Role, make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config, reap_all, wait_for

SEG_HEADER_BYTES = 40  # spool segment header (src/logferry/spool/log.py)
REC_HEADER_BYTES = 40  # record header `<4sIQQIId`


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def _held_serve(emulator: Emulator, tmp_path: Path, **spool: Any) -> ServeProcess:
    """A serve whose S3 files stay open for the hour: nothing is delivered until a restart
    with `_release` (or a SIGTERM flush)."""
    spool_dir = tmp_path / "spool"
    config = base_config(
        emulator,
        spool_dir,
        server={"idle_flush_seconds": 0},
        spool={"dir": str(spool_dir), "max_bytes": "1GiB", **spool},
    )
    return ServeProcess(emulator, config, tmp_path)


def _release(serve: ServeProcess) -> None:
    """From the next start on, close files after 1 s without new lines."""
    rewrite_config(serve, server={"idle_flush_seconds": 1})


def _s3(role: S3Role, **fields: Any) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "path": "logs/",
        "period": 3600,
        **fields,
    }


def test_corrupt_record_is_quarantined_and_delivery_goes_on(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    spool_dir = tmp_path / "spool"
    # 64 KiB segments, ~100 KB requests: each request is one record in its own segment, so the
    # corrupt one sits in a sealed segment (read and checksummed by delivery, not by recovery).
    serve = _held_serve(emulator, tmp_path, segment_bytes="64KiB").start()
    requests = [make_lines(f"r{i}", 1000, size=99) for i in range(4)]
    with serve.admin() as admin:
        put_customer(admin, customer)
        assert put_endpoint(admin, customer, "s3", _s3(role)).status_code == 201
        for lines in requests:
            assert ingest(admin, customer, "s3", body_of(lines)) == len(lines)
        # Kill once the write probe is done: a kill while its CreateMultipartUpload is in
        # flight leaves an empty upload the guide's policy cannot abort (README, S3 files).
        wait_for(lambda: status(admin, customer, "s3")["state"] == "active", timeout=60)
    serve.kill9()

    uid = endpoint_uid(spool_dir, customer, "s3")
    segments = segment_files(spool_dir, uid)
    assert len(segments) >= 4, [p.name for p in segments]
    victim = segments[1]  # request r1, neither the first nor the active segment
    with victim.open("r+b") as f:
        at = SEG_HEADER_BYTES + REC_HEADER_BYTES + 50_000  # inside r1's payload
        f.seek(at)
        original = f.read(16)
        f.seek(at)
        f.write(bytes(b ^ 0x5A for b in original))

    _release(serve)
    serve.start()
    try:
        wait_pending_zero(serve, customer, "s3", timeout=90)
        with serve.admin() as admin:
            shown = status(admin, customer, "s3")
    finally:
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket, "logs/")
    assert_exactly_once(found.lines, [*requests[0], *requests[2], *requests[3]])
    assert pending_uploads(emulator, role.bucket) == []

    quarantine = shown.get("quarantine")
    assert quarantine, f"status does not name a quarantine: {json.dumps(shown)[:800]}"
    assert quarantine["records"] == 1, quarantine
    assert quarantine["bytes"] >= 100_000 - 100, quarantine
    assert quarantine["fix"], quarantine
    qdir = spool_dir / "quarantine" / uid
    assert str(qdir) in str(quarantine["path"]) or str(quarantine["path"]).startswith(str(qdir))
    files = [p for p in qdir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files, f"no non-empty quarantine file under {qdir}"


def test_invalid_stored_endpoint_keeps_its_spool_until_fixed(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    spool_dir = tmp_path / "spool"
    serve = _held_serve(emulator, tmp_path).start()
    lines = make_lines("kept", 500)
    with serve.admin() as admin:
        put_customer(admin, customer)
        assert put_endpoint(admin, customer, "s3", _s3(role)).status_code == 201
        assert ingest(admin, customer, "s3", body_of(lines)) == 500
    serve.kill9()

    uid = endpoint_uid(spool_dir, customer, "s3")
    with sqlite3.connect(spool_dir / "logferry.db") as db:  # e.g. a validation rule tightened
        db.execute(
            "UPDATE endpoints SET config = json_set(config, '$.bucket_name', 'Bad_Bucket') "
            "WHERE customer_id=? AND name=?",
            (customer, "s3"),
        )
    _release(serve)
    serve.start()
    try:
        assert segment_files(spool_dir, uid), "the invalid endpoint's spool was deleted"
        with serve.admin() as admin:
            r = admin.get(f"/v1/customers/{customer}/endpoints/s3/status")
            assert r.status_code == 200, (r.status_code, r.text[:400])
            shown = r.json()
            assert shown["state"] == "invalid", shown
            assert "bucket_name" in json.dumps(shown), f"no reason in {shown}"
            assert shown["lines"]["pending"] == 500, shown["lines"]
            fixed = put_endpoint(admin, customer, "s3", _s3(role))
            assert fixed.status_code == 200, fixed.text  # same type: an update, not a new one
        wait_pending_zero(serve, customer, "s3", timeout=60)
    finally:
        assert serve.terminate() == 0
    assert_exactly_once(bucket_content(emulator, role.bucket, "logs/").lines, lines)


def test_type_change_is_refused_while_data_is_pending(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    stream = make_stream(emulator, unique("stream"))
    kinesis = {
        "type": "kinesis",
        "topic": stream.name,
        "region": stream.region,
        "iam_role": kinesis_role(emulator, unique("role"), stream, customer),
    }
    serve = _held_serve(emulator, tmp_path).start()
    lines = make_lines("old", 300)
    try:
        with serve.admin() as admin:
            put_customer(admin, customer)
            assert put_endpoint(admin, customer, "ep", _s3(role)).status_code == 201
            assert ingest(admin, customer, "ep", body_of(lines)) == 300
            refused = put_endpoint(admin, customer, "ep", kinesis)
            assert refused.status_code == 409, (refused.status_code, refused.text[:400])
            problem = refused.json()
            assert "pending" in problem["error"].lower(), problem
            assert problem.get("fix"), problem
            still = admin.get(f"/v1/customers/{customer}/endpoints/ep").json()
            assert still["type"] == "s3", still
            assert status(admin, customer, "ep")["lines"]["pending"] == 300
    finally:
        assert serve.terminate() == 0  # SIGTERM closes the open file: the data is delivered
    assert_exactly_once(bucket_content(emulator, role.bucket, "logs/").lines, lines)

    serve.start()
    try:
        with serve.admin() as admin:
            assert status(admin, customer, "ep")["lines"]["pending"] == 0
            changed = put_endpoint(admin, customer, "ep", kinesis)
            assert changed.status_code in (200, 201), changed.text[:400]
            assert admin.get(f"/v1/customers/{customer}/endpoints/ep").json()["type"] == "kinesis"
            assert ingest(admin, customer, "ep", body_of(make_lines("new", 10))) == 10
        wait_pending_zero(serve, customer, "ep", timeout=60)
    finally:
        assert serve.terminate() == 0
    assert_exactly_once(bucket_content(emulator, role.bucket, "logs/").lines, lines)
