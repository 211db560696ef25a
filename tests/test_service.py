"""`logferry serve` end to end over real sockets against the emulator."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from aws_helpers import free_port
from backends import is_nats
from kinesis_helpers import kinesis_role, make_stream, read_stream
from logferry.ingest.lines import normalize
from logferry.local.emulator import Emulator
from logferry.sinks.codecs import get_codec
from s3_helpers import make_s3_role, pending_uploads, read_objects
from service_helpers import ADMIN_TOKEN, ServeProcess, base_config, reap_all, wait_for

GZIP = get_codec("gzip", 3)


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def bucket_lines(emulator: Emulator, bucket: str) -> tuple[Counter[bytes], dict[str, int]]:
    counts: Counter[bytes] = Counter()
    keys: dict[str, int] = {}
    for key, obj in read_objects(emulator, bucket).items():
        body = GZIP.decompress(obj.body) if key.endswith(".gz") else obj.body
        lines = body.split(b"\n")[:-1]
        keys[key] = len(lines)
        counts.update(lines)
    return counts, keys


def stream_lines(emulator: Emulator, stream) -> Counter[bytes]:
    counts: Counter[bytes] = Counter()
    for records in read_stream(emulator, stream).values():
        counts.update(r["Data"].rstrip(b"\n") for r in records)
    return counts


@pytest.fixture
def setup(emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]):
    """Customer A (S3, syslog TCP) and customer B (Kinesis, syslog UDP), as static config, on
    each spool backend."""
    a_id, b_id = unique("cust-a"), unique("cust-b")
    role_a = make_s3_role(emulator, unique, external_id=a_id)
    stream = make_stream(emulator, unique("stream"), shards=2)
    role_b = kinesis_role(emulator, unique("role"), stream, b_id)
    tcp_port, udp_port = free_port(), free_port()
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool=spool_backend,
        customers=[
            {
                "id": a_id,
                "token_env": "TOKEN_A",
                "endpoints": [
                    {
                        "type": "s3",
                        "name": "s3",
                        "bucket_name": role_a.bucket,
                        "iam_role": role_a.role_arn,
                        "path": "logs/",
                        "period": 2,
                        "gzip_level": 3,
                    }
                ],
            },
            {
                "id": b_id,
                "token_env": "TOKEN_B",
                "endpoints": [
                    {
                        "type": "kinesis",
                        "name": "kin",
                        "topic": stream.name,
                        "region": stream.region,
                        "iam_role": role_b,
                    }
                ],
            },
        ],
        listeners=[
            {
                "protocol": "tcp",
                "listen": f"127.0.0.1:{tcp_port}",
                "customer_id": a_id,
                "endpoint": "s3",
            },
            {
                "protocol": "udp",
                "listen": f"127.0.0.1:{udp_port}",
                "customer_id": b_id,
                "endpoint": "kin",
            },
        ],
    )
    env = {"TOKEN_A": "token-of-customer-a-000000000000", "TOKEN_B": "token-of-customer-b-11111111"}
    serve = ServeProcess(emulator, config, tmp_path, env=env)
    return {
        "a": a_id,
        "b": b_id,
        "role_a": role_a,
        "stream": stream,
        "serve": serve,
        "tcp": tcp_port,
        "udp": udp_port,
        "token_a": env["TOKEN_A"],
        "token_b": env["TOKEN_B"],
    }


def wait_drained(admin: httpx.Client, customer: str, endpoint: str) -> dict:
    """The endpoint's status once nothing of it is pending."""
    url = f"/v1/customers/{customer}/endpoints/{endpoint}/status"
    return wait_for(lambda: (s := admin.get(url).json())["lines"]["pending"] == 0 and s)


def test_http_and_syslog_for_two_customers_arrive_once(emulator: Emulator, setup) -> None:
    serve = setup["serve"].start()
    a, b = setup["a"], setup["b"]
    try:
        a_http = [f"a-http-{i} GET /index.html 200".encode() for i in range(300)]
        b_http = [f'b-http-{i} {{"k": {i}}}'.encode() for i in range(200)]
        with serve.as_token(setup["token_a"]) as client:
            body = gzip.compress(b"\n".join(a_http[:150]) + b"\n")
            r = client.post(
                f"/v1/ingest/{a}/s3", content=body, headers={"Content-Encoding": "gzip"}
            )
            assert r.status_code == 202 and r.json()["accepted"] == 150
            r = client.post(f"/v1/ingest/{a}/s3", content=b"\n".join(a_http[150:]) + b"\n\n")
            assert r.status_code == 202
            assert r.json() == {
                "accepted": 150,
                "empty_skipped": 1,
                "truncated": 0,
                "invalid_utf8": 0,
            }
        with serve.as_token(setup["token_b"]) as client:
            r = client.post(f"/v1/ingest/{b}/kin", content=b"\n".join(b_http) + b"\n")
            assert r.status_code == 202 and r.json()["accepted"] == 200

        a_syslog = [
            f"<134>1 2026-11-26T10:00:00Z host app - - - tcp-{i}".encode() for i in range(100)
        ]
        with socket.create_connection(("127.0.0.1", setup["tcp"])) as sock:
            for i, line in enumerate(a_syslog):
                if i % 2:
                    sock.sendall(line + b"\n")
                else:
                    sock.sendall(f"{len(line)} ".encode() + line)
        b_syslog = [f"<13>Nov 26 10:00:00 host app: udp-{i}".encode() for i in range(50)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for line in b_syslog:
                udp.sendto(line, ("127.0.0.1", setup["udp"]))
                time.sleep(0.002)

        expected_a = Counter(a_http + a_syslog)
        bucket = setup["role_a"].bucket
        wait_for(lambda: bucket_lines(emulator, bucket)[0] == expected_a, timeout=60)
        expected_b = Counter(b_http + b_syslog)
        wait_for(lambda: stream_lines(emulator, setup["stream"]) == expected_b, timeout=60)
        counts, keys = bucket_lines(emulator, bucket)
        assert all(key.startswith("logs/") and key.endswith(".log.gz") for key in keys)
        assert set(counts.values()) == {1}  # each line once

        with serve.admin() as admin:
            status = wait_drained(admin, a, "s3")
            assert status["lines"]["delivered"] >= 300 and status["state"] in {"active", "idle"}
            metrics = admin.get("/metrics").text
            assert "logferry_sts_assume_role_total" in metrics
            tcp_listener = f"tcp://127.0.0.1:{setup['tcp']}"
            assert f'logferry_syslog_lines_total{{listener="{tcp_listener}"}} 100.0' in metrics
            assert (
                f'logferry_ingest_lines_total{{customer="{a}",endpoint="s3",source="http"}} 300.0'
                in metrics
            )
    finally:
        assert setup["serve"].terminate() == 0


def test_messy_bodies_land_exactly_as_normalised(emulator: Emulator, setup) -> None:
    """The spool trusts `normalize`'s output (it skips its own scans for empty lines and the
    line count): CRLF, runs of empty lines, a missing last newline, invalid UTF-8, an over-long
    line, one line alone and a 5 MiB body (normalised in a thread) must land line for line, each
    once, with the status' delivered count equal to what the 202s accepted."""
    serve = setup["serve"].start()
    a = setup["a"]
    max_line = 256 * 1024
    big = b"".join(
        f"big-{i} GET /x 200\r\n".encode() + (b"\n\n" if i % 997 == 0 else b"")
        for i in range(200_000)
    )
    bodies = [
        b"one line, no newline",
        b"crlf-1\r\ncrlf-2\r\n\r\n\nmiddle\n\n\nlast-no-newline",
        b"\n\nleading-empties\nbad-\xff\xfe-utf8\ncr-only\r\r\n",
        b"long-" + b"x" * (max_line + 1000) + b"\nafter-long\n",
        big,
    ]
    try:
        expected: Counter[bytes] = Counter()
        accepted = 0
        with serve.as_token(setup["token_a"]) as client:
            for body in bodies:
                norm = normalize(body, max_line_bytes=max_line)
                r = client.post(f"/v1/ingest/{a}/s3", content=body)
                assert r.status_code == 202, r.text
                assert r.json()["accepted"] == norm.lines
                assert r.json()["empty_skipped"] == norm.empty_skipped
                accepted += norm.lines
                expected.update(norm.data.split(b"\n")[:-1])
        assert accepted == 200_000 + 1 + 4 + 3 + 2
        bucket = setup["role_a"].bucket
        wait_for(lambda: bucket_lines(emulator, bucket)[0] == expected, timeout=90)
        counts, _ = bucket_lines(emulator, bucket)
        assert sum(counts.values()) == accepted
        assert b"" not in counts
        with serve.admin() as admin:
            status = wait_drained(admin, a, "s3")
        assert status["lines"]["delivered"] == accepted
    finally:
        assert setup["serve"].terminate() == 0


def test_kill9_during_ingest_loses_and_duplicates_nothing(emulator: Emulator, setup) -> None:
    serve = setup["serve"].start()
    a = setup["a"]
    acknowledged: list[bytes] = []
    unacknowledged: set[bytes] = set()  # sent when the server died: may or may not have landed
    stop = threading.Event()

    def load(worker: int) -> None:
        with serve.as_token(setup["token_a"]) as client:
            batch = 0
            while not stop.is_set():
                lines = [f"w{worker}-b{batch}-l{i} {'x' * 150}".encode() for i in range(2000)]
                try:
                    r = client.post(f"/v1/ingest/{a}/s3", content=b"\n".join(lines) + b"\n")
                except httpx.HTTPError:
                    unacknowledged.update(lines)
                    return  # the server died mid-request: not acknowledged
                if r.status_code == 202:
                    acknowledged.extend(lines)
                else:
                    unacknowledged.update(lines)
                batch += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acknowledged) >= 10_000 or not any(t.is_alive() for t in threads), 120)
    serve.kill9()
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 10_000

    setup["serve"].start()
    bucket = setup["role_a"].bucket
    expected = Counter(acknowledged)

    def delivered() -> bool:
        counts, _ = bucket_lines(emulator, bucket)
        return all(counts[line] >= 1 for line in expected)

    wait_for(delivered, timeout=120, interval=1.0)
    assert setup["serve"].terminate() == 0
    counts, keys = bucket_lines(emulator, bucket)
    duplicated = [line for line, n in counts.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} lines delivered twice"
    # Every upload whose ID reached serve was aborted or completed. The one exception the
    # guide's policy leaves (README, "S3 files"): a CreateMultipartUpload still in flight at
    # the kill — an empty upload whose ID never arrived.
    left = pending_uploads(emulator, bucket)
    assert len(left) <= 1, left
    for upload in left:
        parts = emulator.client("s3").list_parts(
            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        assert not parts.get("Parts"), upload
    # Across all objects, no line is held twice (in one object or in two) ...
    assert sum(keys.values()) == len(counts), (
        f"objects hold {sum(keys.values())} lines but only {len(counts)} distinct ones"
    )
    # ... and nothing landed that was never sent (only in-flight requests may add lines).
    unexpected = set(counts) - expected.keys() - unacknowledged
    assert not unexpected, f"{len(unexpected)} lines in the bucket were never sent"


def test_tokens_are_scoped_and_secrets_stay_out_of_output(emulator: Emulator, setup) -> None:
    serve = setup["serve"].start()
    a, b = setup["a"], setup["b"]
    try:
        with serve.as_token(setup["token_a"]) as client:
            assert client.post(f"/v1/ingest/{b}/kin", content=b"x\n").status_code == 403
            assert client.get("/v1/customers").status_code == 403
            assert client.put(f"/v1/customers/{a}", json={}).status_code == 403
            assert client.post(f"/v1/customers/{a}/tokens").status_code == 403
        with httpx.Client(base_url=serve.url) as anon:
            assert anon.post(f"/v1/ingest/{a}/s3", content=b"x\n").status_code == 401
            bad = anon.post(
                f"/v1/ingest/{a}/s3", content=b"x\n", headers={"Authorization": "Bearer nope"}
            )
            assert bad.status_code == 401
        with serve.admin() as admin:
            issued = admin.post(f"/v1/customers/{a}/tokens")
            assert issued.status_code == 201
            token = issued.json()["token"]
            with serve.as_token(token) as client:
                assert client.post(f"/v1/ingest/{a}/s3", content=b"y\n").status_code == 202
            listed = admin.get(f"/v1/customers/{a}/tokens").json()
            assert token not in json.dumps(listed)
            assert (
                admin.delete(f"/v1/customers/{a}/tokens/{issued.json()['id']}").status_code == 204
            )
            with serve.as_token(token) as client:
                assert client.post(f"/v1/ingest/{a}/s3", content=b"z\n").status_code == 401
            outputs = [
                admin.get(f"/v1/customers/{a}").text,
                admin.get(f"/v1/customers/{a}/endpoints/s3/status").text,
                admin.get(f"/v1/customers/{a}/endpoints").text,
                admin.get("/metrics").text,
            ]
    finally:
        setup["serve"].terminate()
    secrets = [
        ADMIN_TOKEN,
        setup["token_a"],
        setup["token_b"],
        token,
        emulator.vendor.secret_access_key,
    ]
    logs = serve.all_logs()
    assert "logferry ready" in logs
    for secret in secrets:
        assert secret not in logs
        for text in outputs:
            assert secret not in text


def test_endpoint_without_external_id_condition_is_refused(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    open_role = make_s3_role(emulator, unique, external_id=customer)
    iam = emulator.client("iam")
    iam.update_assume_role_policy(
        RoleName=open_role.role_name,
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": {
                    "Effect": "Allow",
                    "Principal": {"AWS": emulator.vendor.account_id},
                    "Action": "sts:AssumeRole",
                },
            }
        ),
    )
    good = make_s3_role(emulator, unique, external_id=customer)
    serve = ServeProcess(
        emulator, base_config(emulator, tmp_path / "spool", spool=spool_backend), tmp_path
    ).start()
    try:
        with serve.admin() as admin:
            assert admin.put(f"/v1/customers/{customer}", json={}).status_code == 201
            body = {"type": "s3", "bucket_name": open_role.bucket, "iam_role": open_role.role_arn}
            refused = admin.put(f"/v1/customers/{customer}/endpoints/open", json=body)
            assert refused.status_code == 422
            doc = refused.json()
            assert "external ID" in doc["error"]
            failed = [c for c in doc["report"]["checks"] if c["status"] == "fail"]
            assert [c["name"] for c in failed] == ["external-id required"]
            assert admin.get(f"/v1/customers/{customer}/endpoints/open").status_code == 404

            body = {
                "type": "s3",
                "bucket_name": good.bucket,
                "iam_role": good.role_arn,
                "period": 60,
            }
            assert admin.put(f"/v1/customers/{customer}/endpoints/ok", json=body).status_code == 201
            invalid = admin.put(
                f"/v1/customers/{customer}/endpoints/bad",
                json={
                    "type": "s3",
                    "bucket_name": good.bucket,
                    "period": 0,
                    "gzip_level": 3,
                    "compression_codec": "zstd",
                    "iam_role": good.role_arn,
                },
            )
            assert invalid.status_code == 422
            fields = {tuple(e["loc"]) for e in invalid.json()["detail"]}
            assert ("body", "period") in fields, fields
            bad_bucket = admin.put(
                f"/v1/customers/{customer}/endpoints/bad",
                json={"type": "s3", "bucket_name": "Bad_Bucket", "iam_role": good.role_arn},
            )
            assert bad_bucket.status_code == 422
            assert "bucket_name" in bad_bucket.text
            assert admin.get("/openapi.json").json()["paths"]
    finally:
        serve.terminate()


def test_spool_limit_answers_429_and_oversized_bodies_413(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool={
            "dir": str(tmp_path / "spool"),
            "max_bytes": "2MiB",
            "segment_bytes": "256KiB",
            "default_customer_share": 1,  # the directory's limit, not a customer's share
            **spool_backend,
        },
        server={"max_body_bytes": "1MiB"},
        customers=[
            {
                "id": customer,
                "token_env": "TOK",
                "endpoints": [
                    {
                        "type": "s3",
                        "name": "s3",
                        "bucket_name": role.bucket,
                        "iam_role": role.role_arn,
                        "period": 3600,
                    }
                ],
            }
        ],
    )
    serve = ServeProcess(emulator, config, tmp_path, env={"TOK": "tok-000000000000000"}).start()
    try:
        with serve.as_token("tok-000000000000000") as client:
            big = b"x" * (1024 * 1024 + 10)
            assert client.post(f"/v1/ingest/{customer}/s3", content=big).status_code == 413
            body = (b"y" * 999 + b"\n") * 1000  # ~1 MB
            # Until the first 429: a pressure flush (spool over 75 % full) may deliver and
            # free room between two requests on a busy machine.
            statuses: list[httpx.Response] = []
            while len(statuses) < 12 and 429 not in [r.status_code for r in statuses]:
                statuses.append(client.post(f"/v1/ingest/{customer}/s3", content=body))
            codes = [r.status_code for r in statuses]
            assert 202 in codes and codes[-1] == 429, codes
            assert int(statuses[-1].headers["Retry-After"]) >= 1
    finally:
        serve.terminate()


def test_config_errors_name_the_key_path(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[vendor]\naccount_id = "123"\n[spool]\nmax_bytes = "lots"\n[server]\nlisten = 8080\n'
        "[typo]\nx = 1\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "logferry.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    for needle in ("vendor.account_id", "spool.max_bytes", "server.listen", "typo"):
        assert needle in result.stderr, result.stderr


def test_sigterm_flushes_open_files_and_state_survives_restart(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool=spool_backend,
        vendor={"external_id_mode": "generated"},
    )
    serve = ServeProcess(emulator, config, tmp_path).start()
    with serve.admin() as admin:
        created = admin.put(f"/v1/customers/{customer}", json={"external_id": customer})
        assert created.status_code == 201 and created.json()["external_id"] == customer
        other = unique("gen")
        doc = admin.put(f"/v1/customers/{other}", json={}).json()
        generated = doc["external_id"]
        assert generated != other and len(generated) > 20
        trust = doc["trust_policies"]["s3"]["Statement"]
        assert trust["Condition"]["StringEquals"]["sts:ExternalId"] == generated
        assert trust["Principal"]["AWS"] == emulator.vendor.account_id
        # period 3600: nothing would be written before the hour is over, except by the flush.
        body = {
            "type": "s3",
            "bucket_name": role.bucket,
            "iam_role": role.role_arn,
            "period": 3600,
            "compression_codec": "zstd",
        }
        assert admin.put(f"/v1/customers/{customer}/endpoints/s3", json=body).status_code == 201
        ghost = make_s3_role(emulator, unique, external_id=customer, create_bucket=False)
        missing = {"type": "s3", "bucket_name": ghost.bucket, "iam_role": ghost.role_arn}
        put = admin.put(f"/v1/customers/{customer}/endpoints/broken?verify=false", json=missing)
        assert put.status_code == 201
        lines = [f"flush-me-{i}".encode() for i in range(500)]
        assert (
            admin.post(f"/v1/ingest/{customer}/s3", content=b"\n".join(lines) + b"\n").status_code
            == 202
        )
        assert admin.post(f"/v1/ingest/{customer}/broken", content=b"kept\n").status_code == 202
        status = wait_for(
            lambda: (
                (s := admin.get(f"/v1/customers/{customer}/endpoints/broken/status").json())[
                    "errors"
                ]
                and s
            )
        )
        assert status["state"] == "error" and status["lines"]["pending"] == 1
        error = status["errors"][0]
        assert error["code"] == "NoSuchBucket" and error["fix"]
    assert not read_objects(emulator, role.bucket)
    started = time.monotonic()
    assert serve.terminate() == 0
    assert time.monotonic() - started < 30
    objects = read_objects(emulator, role.bucket)
    assert len(objects) == 1
    ((key, obj),) = objects.items()
    assert key.endswith(".log.zst")
    assert get_codec("zstd").decompress(obj.body).split(b"\n")[:-1] == lines

    serve.start()  # everything persisted: customers, external IDs, endpoints, errors, pending
    try:
        with serve.admin() as admin:
            assert admin.get(f"/v1/customers/{other}").json()["external_id"] == generated
            names = [e["name"] for e in admin.get(f"/v1/customers/{customer}/endpoints").json()]
            assert names == ["broken", "s3"]
            status = admin.get(f"/v1/customers/{customer}/endpoints/broken/status").json()
            assert status["errors"][0]["code"] == "NoSuchBucket"
            assert status["lines"]["pending"] == 1
            s3_status = admin.get(f"/v1/customers/{customer}/endpoints/s3/status").json()
            assert s3_status["lines"]["delivered"] == 500 and s3_status["objects"] == 1
    finally:
        serve.terminate()
    assert len(read_objects(emulator, role.bucket)) == 1  # no duplicate after restart


def test_many_idle_endpoints_cost_no_workers(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    endpoints = [
        {"type": "s3", "name": f"e{i}", "bucket_name": role.bucket, "iam_role": role.role_arn}
        for i in range(2000)
    ]
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool=spool_backend,
        customers=[{"id": customer, "endpoints": endpoints}],
    )
    serve = ServeProcess(emulator, config, tmp_path).start(timeout=120)
    try:
        assert serve.process is not None
        fds = len(list(Path(f"/proc/{serve.process.pid}/fd").iterdir()))
        threads = len(list(Path(f"/proc/{serve.process.pid}/task").iterdir()))
        assert fds < 100 and threads < 60, (fds, threads)
        with serve.admin() as admin:
            assert len(admin.get(f"/v1/customers/{customer}/endpoints").json()) == 2000
            metrics = admin.get("/metrics").text
            assert 'logferry_endpoints{state="idle",type="s3"} 2000.0' in metrics
            # No worker, no AssumeRole for an idle endpoint (on NATS a delivery node takes all
            # 2,000 at start): the one call is serve's start-up check of the STS regions.
            assert assume_role_calls(metrics) <= 1, metrics
            r = admin.post(f"/v1/ingest/{customer}/e1999", content=b"one\n")
            assert r.status_code == 202
        assert len(list(Path(f"/proc/{serve.process.pid}/fd").iterdir())) < 100
    finally:
        serve.terminate()


def test_deleting_an_endpoint_aborts_its_open_upload(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    serve = ServeProcess(
        emulator, base_config(emulator, tmp_path / "spool", spool=spool_backend), tmp_path
    ).start()
    try:
        with serve.admin() as admin:
            admin.put(f"/v1/customers/{customer}", json={})
            body = {
                "type": "s3",
                "bucket_name": role.bucket,
                "iam_role": role.role_arn,
                "period": 3600,
                "gzip_level": 0,
            }
            assert (
                admin.put(f"/v1/customers/{customer}/endpoints/big", json=body).status_code == 201
            )
            line = b"z" * 1023 + b"\n"
            for _ in range(10):  # 10 MiB uncompressed: at least one 8 MiB part goes up
                assert (
                    admin.post(f"/v1/ingest/{customer}/big", content=line * 1024).status_code == 202
                )
            wait_for(lambda: pending_uploads(emulator, role.bucket), timeout=60)
            assert admin.delete(f"/v1/customers/{customer}/endpoints/big").status_code == 204
            assert admin.get(f"/v1/customers/{customer}/endpoints/big").status_code == 404
        assert not pending_uploads(emulator, role.bucket)
        assert not read_objects(emulator, role.bucket)
        if not is_nats(spool_backend):  # the local spool's own files (NATS: no such directory)
            leftovers = [p.name for p in (tmp_path / "spool" / "data").iterdir() if p.is_dir()]
            assert leftovers == []  # the endpoint's spool directory is gone
    finally:
        serve.terminate()


def test_idle_flush_closes_a_file_before_its_period_ends(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool=spool_backend,
        server={"idle_flush_seconds": 1},
        customers=[
            {
                "id": customer,
                "endpoints": [
                    {
                        "type": "s3",
                        "name": "s3",
                        "bucket_name": role.bucket,
                        "iam_role": role.role_arn,
                        "period": 3600,
                    }
                ],
            }
        ],
    )
    serve = ServeProcess(emulator, config, tmp_path).start()
    try:
        with serve.admin() as admin:
            assert admin.post(f"/v1/ingest/{customer}/s3", content=b"a\nb\n").status_code == 202
        objects = wait_for(lambda: read_objects(emulator, role.bucket), timeout=30)
        (obj,) = objects.values()
        assert obj.body == b"a\nb\n"
    finally:
        serve.terminate()


def assume_role_calls(metrics: str) -> float:
    """Every AssumeRole serve made, whatever the region and outcome."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("logferry_sts_assume_role_total{")
    )
