"""Delivery correctness through a real `logferry serve` and the emulator (issue 10).

Requests that do not line up with file or part boundaries (one request larger than two files,
one request of the whole 16 MiB body limit, many 600 KB requests into 1 MiB files) must land
line for line exactly once, in files no larger than `file_max_bytes`, with no multipart upload
left open. A Kinesis delivery killed with SIGKILL half-way must, after a restart, deliver every
line at least once and re-send at most what was in flight, byte for byte the same.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from e2e_helpers import (
    StreamTail,
    assert_exactly_once,
    body_of,
    bucket_content,
    ingest,
    line_number,
    lines_for_body,
    make_lines,
    put_customer,
    put_endpoint,
    status,
    wait_pending_zero,
)
from kinesis_helpers import kinesis_role, make_stream
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config, reap_all

MIB = 1024 * 1024
FILE_MAX = MIB
BODY_LIMIT = 16 * MIB  # server.max_body_bytes default
MAX_CALLS_IN_FLIGHT = 2
"""PutRecords calls a Kinesis endpoint may have in flight; a replay re-sends at most these."""
RECORDS_PER_CALL = 500  # PutRecords limit
CODECS: dict[str, dict[str, Any]] = {
    "gzip": {"gzip_level": 3},
    "zstd": {"compression_codec": "zstd"},
    "none": {},
}


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def _serve(emulator: Emulator, tmp_path: Path, spool: dict[str, Any]) -> ServeProcess:
    config = base_config(
        emulator, tmp_path / "spool", server={"idle_flush_seconds": 1}, spool=spool
    )
    return ServeProcess(emulator, config, tmp_path)


def _s3_endpoint(role_bucket: str, role_arn: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket_name": role_bucket,
        "iam_role": role_arn,
        "path": "logs/",
        "period": 3600,  # files close on size or on the 1 s idle flush, never on the clock
        "file_max_bytes": FILE_MAX,
        **fields,
    }


def _strip_classic(line: bytes) -> bytes:
    """`<134>TS host name[pid]: line` → line."""
    assert line.startswith(b"<134>"), line[:60]
    return line.split(b"]: ", 1)[1]


def _deliver_and_check(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    bodies: list[list[bytes]],
    fields: dict[str, Any],
    spool: dict[str, Any],
    *,
    timeout: float,
    framed: bool = False,
) -> None:
    """POST each body to a fresh S3 endpoint, wait until nothing is pending, then check the
    bucket: every line once, no object over FILE_MAX uncompressed, no open upload."""
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    serve = _serve(emulator, tmp_path, spool).start()
    try:
        with serve.admin() as admin:
            put_customer(admin, customer)
            r = put_endpoint(
                admin, customer, "s3", _s3_endpoint(role.bucket, role.role_arn, **fields)
            )
            assert r.status_code == 201, r.text
            sent = 0
            for lines in bodies:
                sent += ingest(admin, customer, "s3", body_of(lines))
            assert sent == sum(len(b) for b in bodies)
        done = wait_pending_zero(serve, customer, "s3", timeout=timeout)
        assert done["lines"]["delivered"] == sent, done["lines"]
    finally:
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket, "logs/")
    lines = found.lines
    if framed:
        lines = type(lines)(_strip_classic(line) for line in lines.elements())
    assert_exactly_once(lines, [line for body in bodies for line in body])
    oversized = {k: n for k, n in found.sizes.items() if n > FILE_MAX}
    assert not oversized, f"objects over file_max_bytes={FILE_MAX}: {oversized}"
    assert len(found.sizes) >= -(-sum(len(b) + 1 for body in bodies for b in body) // FILE_MAX)
    assert pending_uploads(emulator, role.bucket) == []


def test_every_accepted_line_is_pending_or_delivered_until_it_lands(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    """From the 202 until delivery, status counts every accepted line as pending or delivered
    (a client, like wait_pending_zero, that sees 0 pending must be able to trust it), through
    the moment a NATS node takes ownership of the new endpoint and indexes its subject."""
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    serve = _serve(emulator, tmp_path, spool_backend).start()
    try:
        with serve.admin() as admin:
            put_customer(admin, customer)
            endpoint = _s3_endpoint(role.bucket, role.role_arn, **CODECS["gzip"])
            assert put_endpoint(admin, customer, "s3", endpoint).status_code == 201
            sent = ingest(admin, customer, "s3", body_of(make_lines("r", 5_000)))
            seen: list[dict[str, int]] = []
            lines: dict[str, int] = {"delivered": 0}
            deadline = time.monotonic() + 90
            while lines["delivered"] < sent and time.monotonic() < deadline:
                lines = status(admin, customer, "s3")["lines"]
                seen.append(lines)
                assert lines["pending"] + lines["delivered"] == sent, (len(seen), seen[-3:])
            assert lines["delivered"] == sent, lines
    finally:
        assert serve.terminate() == 0
    assert sum(bucket_content(emulator, role.bucket, "logs/").lines.values()) == sent


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_request_larger_than_two_files_lands_exactly_once(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any], codec: str
) -> None:
    lines = lines_for_body(f"big-{codec}", 2_500_000, size=150)  # 2.5 MB > 2 × file_max_bytes
    _deliver_and_check(
        emulator, unique, tmp_path, [lines], CODECS[codec], spool_backend, timeout=90
    )


def test_framed_lines_count_against_file_max_bytes(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    """classic framing adds ~50 bytes a line: files are cut on framed bytes, still ≤ 1 MiB."""
    lines = lines_for_body("classic", 2_500_000, size=150)
    fields = {**CODECS["gzip"], "message_type": "classic"}
    _deliver_and_check(
        emulator, unique, tmp_path, [lines], fields, spool_backend, timeout=90, framed=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_request_of_the_whole_body_limit_lands_exactly_once(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any], codec: str
) -> None:
    lines = lines_for_body(f"limit-{codec}", BODY_LIMIT, size=200)  # exactly 16 MiB
    _deliver_and_check(
        emulator, unique, tmp_path, [lines], CODECS[codec], spool_backend, timeout=180
    )


@pytest.mark.slow
def test_ten_600kb_requests_into_1mib_files_land_exactly_once(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    bodies = [lines_for_body(f"r{i}", 600_000, size=142) for i in range(10)]
    assert 41_000 < sum(len(b) for b in bodies) < 43_000
    _deliver_and_check(
        emulator, unique, tmp_path, bodies, CODECS["gzip"], spool_backend, timeout=150
    )


@pytest.mark.slow
def test_kinesis_kill9_mid_delivery_replays_at_most_what_was_in_flight(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    # One shard: the sink paces it at 1,000 records/s, so delivering `total` takes >= 12 s on any
    # machine and the kill below lands in the middle of it.
    stream = make_stream(emulator, unique("stream"), shards=1)
    role = kinesis_role(emulator, unique("role"), stream, customer)
    serve = _serve(emulator, tmp_path, spool_backend)
    serve.start()
    total = 12_000  # ~2.4 MB in one request; the emulator reads a stream in O(records)
    bound = RECORDS_PER_CALL * MAX_CALLS_IN_FLIGHT
    lines = make_lines("kin", total, size=200)
    tail = StreamTail(emulator, stream)
    with serve.admin() as admin:
        put_customer(admin, customer)
        body = {
            "type": "kinesis",
            "topic": stream.name,
            "region": stream.region,
            "iam_role": role,
            "format": "classic",  # carries the pid: a replay must still be byte-identical
        }
        assert put_endpoint(admin, customer, "kin", body).status_code == 201
        assert ingest(admin, customer, "kin", body_of(lines)) == total
    accepted = time.monotonic()
    delivered = 0
    deadline = time.monotonic() + 60  # kill once some, not all, records are in the stream
    # Progress from serve's status, not the stream: the emulator's GetRecords waits behind the
    # PutRecords calls in flight and can take longer than the whole delivery on a busy box.
    with serve.admin() as admin:
        while delivered < bound + 500 and time.monotonic() < deadline:
            time.sleep(0.2)
            delivered = status(admin, customer, "kin")["lines"]["delivered"]
    serve.kill9()
    killed = time.monotonic()
    seen_at_kill = tail.poll()
    assert 0 < seen_at_kill < total, (
        f"{seen_at_kill} of {total} records were in the stream at the kill: the test needs a "
        "kill in the middle of delivery (make the request larger if delivery got faster)"
    )

    serve.start()
    wait_pending_zero(serve, customer, "kin", timeout=120)
    redelivered = time.monotonic()
    assert serve.terminate() == 0
    tail.poll()

    copies: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in tail.records:
        copies[line_number(record["Data"])].append(record)
    missing = sorted(set(range(total)) - set(copies))
    assert not missing, f"{len(missing)} lines never delivered, first {missing[:5]}"
    for number, found in copies.items():
        assert found[0]["Data"].endswith(lines[number]), found[0]["Data"][:120]
    duplicates = sum(len(c) - 1 for c in copies.values())
    print(
        f"kinesis kill -9: {seen_at_kill}/{total} records in the stream at the kill, "
        f"{len(tail.records)} records in the end, {duplicates} duplicates (bound {bound}); "
        f"killed {killed - accepted:.1f} s after the 202, rest delivered in "
        f"{redelivered - killed:.1f} s"
    )
    assert duplicates <= bound, f"{duplicates} duplicate records after kill -9 (bound {bound})"
    differing = [
        n
        for n, found in copies.items()
        for again in found[1:]
        if (again["Data"], again["PartitionKey"]) != (found[0]["Data"], found[0]["PartitionKey"])
    ]
    assert not differing, (
        f"{len(differing)} replayed records differ from their first copy (data or partition "
        f"key), e.g. line {differing[0]}: {copies[differing[0]][0]['Data'][:90]!r} "
        f"{copies[differing[0]][0]['PartitionKey']!r} vs {copies[differing[0]][1]['Data'][:90]!r}"
        f" {copies[differing[0]][1]['PartitionKey']!r}"
    )
