"""`logferry send` as a real process into a real `logferry serve`: what lands in the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aws_helpers import free_port
from logferry.cli import app
from logferry.local.emulator import Emulator
from logferry.sinks.codecs import get_codec
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for

TOKEN = "token-of-the-send-customer-0123456789"
GZIP = get_codec("gzip", 3)


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def make_serve(
    emulator: Emulator, unique, tmp_path: Path, *, spool_max: str = "1GiB", **server: Any
) -> tuple[ServeProcess, str, str]:
    """A serve with one customer (token TOKEN) and one S3 endpoint `s3` (period 1 s, gzip)."""
    customer = unique("send")
    role = make_s3_role(emulator, unique, external_id=customer)
    endpoint = {
        "type": "s3",
        "name": "s3",
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "period": 1,
        "gzip_level": 1,
    }
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool={"max_bytes": spool_max},
        customers=[{"id": customer, "token_env": "SEND_TOKEN", "endpoints": [endpoint]}],
        **({"server": server} if server else {}),
    )
    serve = ServeProcess(emulator, config, tmp_path, env={"SEND_TOKEN": TOKEN})
    return serve, customer, role.bucket


def bucket_lines(emulator: Emulator, bucket: str) -> list[bytes]:
    lines: list[bytes] = []
    for key, obj in sorted(read_objects(emulator, bucket).items()):
        body = GZIP.decompress(obj.body) if key.endswith(".gz") else obj.body
        lines += body.split(b"\n")[:-1]
    return lines


def send(
    serve: ServeProcess, customer: str, *args: str, stdin: Any = None, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logferry.cli", "send", customer, "s3", *args, "--url", serve.url],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "LOGFERRY_TOKEN": token},
        timeout=600,
    )


def delivered(serve: ServeProcess, customer: str) -> int:
    with serve.admin() as admin:
        status = admin.get(f"/v1/customers/{customer}/endpoints/s3/status").json()
    return int(status["lines"]["delivered"])


def test_files_and_stdin_land_exactly(emulator: Emulator, unique, tmp_path: Path) -> None:
    serve, customer, bucket = make_serve(emulator, unique, tmp_path)
    serve.start(timeout=180)
    first = tmp_path / "a.log"
    first.write_bytes(b"".join(b"a-%d\n" % i for i in range(2500)) + b"a-last-no-newline")
    second = tmp_path / "b.log"
    second.write_bytes(b"b-1\r\nb-2\n")
    stdin = tmp_path / "stdin.log"
    stdin.write_bytes(b"s-1\ns-2\n")
    with stdin.open("rb") as piped:
        result = send(
            serve,
            customer,
            str(first),
            "-",
            str(second),
            "--batch-lines",
            "1000",
            "--linger",
            "5",
            "--json",
            stdin=piped,
        )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = [b"a-%d" % i for i in range(2500)] + [b"a-last-no-newline", b"s-1", b"s-2"]
    expected += [b"b-1", b"b-2"]
    assert summary["lines_read"] == summary["lines_delivered"] == len(expected)
    assert summary["batches"] == 3 and summary["requests"] == 3 and summary["retries"] == 0
    assert summary["server"]["accepted"] == len(expected) and summary["lines_undelivered"] == 0
    wait_for(lambda: delivered(serve, customer) == len(expected))
    assert sorted(bucket_lines(emulator, bucket)) == sorted(expected)  # once, CRLF normalised


def test_a_live_pipe_ships_before_it_closes(emulator: Emulator, unique, tmp_path: Path) -> None:
    """`tail -F log | logferry send …`: lines arrive while the input is still open."""
    serve, customer, bucket = make_serve(emulator, unique, tmp_path)
    serve.start(timeout=180)
    process = subprocess.Popen(
        [sys.executable, "-m", "logferry.cli", "send", customer, "s3", "--url", serve.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LOGFERRY_TOKEN": TOKEN},
    )
    try:
        assert process.stdin is not None
        process.stdin.write(b"live-1\nlive-2\n")
        process.stdin.flush()
        wait_for(lambda: delivered(serve, customer) == 2)
        assert process.poll() is None  # still reading: the linger shipped the partial batch
        process.stdin.write(b"live-3\n")  # communicate() flushes and closes stdin: EOF
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert b"3 of 3 lines" in stdout
    wait_for(lambda: delivered(serve, customer) == 3)
    assert sorted(bucket_lines(emulator, bucket)) == [b"live-1", b"live-2", b"live-3"]


def test_connection_errors_are_retried_until_the_server_is_up(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    serve, customer, bucket = make_serve(emulator, unique, tmp_path)
    lines = tmp_path / "x.log"
    lines.write_bytes(b"early-1\nearly-2\n")
    result: dict[str, Any] = {}

    def run() -> None:
        result["done"] = send(serve, customer, str(lines), "--json")

    sender = threading.Thread(target=run)
    sender.start()  # the server is not listening yet
    time.sleep(2)
    serve.start(timeout=180)
    sender.join(timeout=300)
    done = result["done"]
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["connection_errors"] >= 1 and summary["retries"] >= 1
    assert summary["ambiguous_retries"] == 0 and summary["lines_delivered"] == 2
    wait_for(lambda: delivered(serve, customer) == 2)
    assert sorted(bucket_lines(emulator, bucket)) == [b"early-1", b"early-2"]


def test_refusals_exit_1_with_the_servers_error(emulator: Emulator, unique, tmp_path) -> None:
    serve, customer, _ = make_serve(emulator, unique, tmp_path)
    serve.start(timeout=180)
    data = tmp_path / "x.log"
    data.write_bytes(b"x\ny\n")
    wrong = send(serve, customer, str(data), token="not-a-token")
    assert wrong.returncode == 1
    assert "401" in wrong.stderr and "unknown or revoked token" in wrong.stderr
    assert "2 line(s) read were not delivered" in wrong.stderr
    other = send(serve, "someone-else", str(data), "--json")
    assert other.returncode == 1
    document = json.loads(other.stdout)
    assert document["status"] == 403 and document["lines_undelivered"] == 2


def test_gives_up_after_max_retry_seconds(tmp_path: Path) -> None:
    data = tmp_path / "x.log"
    data.write_bytes(b"x\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app,
        ["send", "c1", "s3", str(data), "--url", url, "--max-retry-seconds", "1", "--json"],
        env={"LOGFERRY_TOKEN": "t"},
    )
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert "gave up on a batch of 1 lines" in document["error"]
    assert document["lines_undelivered"] == 1 and document["connection_errors"] >= 1


@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["c1", "s3"], {"LOGFERRY_TOKEN": ""}, "--token-env"),
        (["c1", "s3", "/nonexistent.log"], {}, "FILES"),
        (["c1", "s3", "--batch-bytes", "lots"], {}, "--batch-bytes"),
        (["c1", "s3", "--batch-lines", "0"], {}, "--batch-lines"),
        (["c1", "s3", "--linger", "-1"], {}, "--linger"),
        (["c1", "s3", "--url", "127.0.0.1:8080"], {}, "--url"),
    ],
)
def test_invalid_input_exits_2_naming_the_flag(
    args: list[str], env: dict[str, str], flag: str
) -> None:
    result = CliRunner().invoke(app, ["send", *args], env={"LOGFERRY_TOKEN": "t", **env})
    assert result.exit_code == 2, result.output
    assert flag in result.stderr


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(app, ["send", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example" in result.stdout and "| logferry send acme s3" in result.stdout


MILLION = 1_000_000


@pytest.mark.slow
def test_a_million_lines_through_a_full_spool_arrive_exactly_once(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    """The spool is far smaller than the input, so serve answers 429 while delivery drains;
    every line must still land exactly once."""
    serve, customer, bucket = make_serve(emulator, unique, tmp_path, spool_max="8MiB")
    serve.start(timeout=180)
    source = tmp_path / "million.log"
    pad = b"x" * 80
    with source.open("wb") as f:
        for start in range(0, MILLION, 100_000):
            f.write(b"".join(b"line-%07d %s\n" % (i, pad) for i in range(start, start + 100_000)))
    with source.open("rb") as piped:
        result = send(serve, customer, "--json", stdin=piped)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    print("\nsend summary:", json.dumps(summary))
    assert summary["lines_delivered"] == MILLION and summary["lines_undelivered"] == 0
    assert summary["status_429"] > 0  # the spool was full at times, and that was retried
    assert summary["retries"] >= summary["status_429"]
    wait_for(lambda: delivered(serve, customer) == MILLION, timeout=300)
    seen = bytearray(MILLION)
    for line in bucket_lines(emulator, bucket):
        index = int(line[5:12])
        assert line == b"line-%07d %s" % (index, pad)
        seen[index] += 1
    assert seen.count(1) == MILLION  # each exactly once
