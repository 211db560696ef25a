"""Bounded cost for every ingest request (issue 27), through a real `logferry serve`: a hostile
customer sends amplifying OTLP, gzip of many members, deep nesting, an OTLP flood over its rate,
and meets a full disk and no file descriptors under the spool, while another customer's lines keep
landing and everything acknowledged is delivered. The bounds as functions: test_ingest_bounds.py.

Imports only names that existed before these bounds, so the module also runs against the old code
(to show each test fails there)."""

from __future__ import annotations

import gzip
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from backends import LOCAL_SPOOL_ONLY
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, s3_customer, wait_for

TOKEN_H = "token-of-the-hostile-customer-0123456789"
TOKEN_N = "token-of-the-neighbour-customer-0123456789"
DEPTH_LIMIT = 30
"""logferry.ingest.otlp.MAX_ANYVALUE_DEPTH (test_ingest_bounds.py checks they agree)."""
EMPTY_MEMBER = gzip.compress(b"", mtime=0)  # 20 bytes: the smallest gzip member


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def amplifying_request(records: int, resource_bytes: int) -> ExportLogsServiceRequest:
    """One resource with `resource_bytes` of attributes and `records` tiny records: the resource
    is repeated in every line, so the output is about records x resource_bytes."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(kv("blob", "r" * resource_bytes))
    scope = resource_logs.scope_logs.add()
    scope.log_records.extend(
        LogRecord(time_unix_nano=1, body=AnyValue(string_value=f"r{i}")) for i in range(records)
    )
    return request


def nested_value(depth: int) -> AnyValue:
    """An AnyValue `depth` levels deep (kvlists and arrays alternating), a string at the bottom."""
    value = AnyValue(string_value="leaf")
    for level in range(depth - 1):
        outer = AnyValue()
        if level % 2:
            outer.array_value.values.append(value)
        else:
            outer.kvlist_value.values.append(KeyValue(key="k", value=value))
        value = outer
    return value


def request_with_body(value: AnyValue) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.append(LogRecord(body=value))
    return request


def deep_json(levels: int) -> bytes:
    """An OTLP/JSON body whose record body nests `levels` arrays (no RecursionError to build)."""
    inner = '{"stringValue":"x"}'
    body = '{"arrayValue":{"values":[' * levels + inner + "]}}" * levels
    return ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + body + "}]}]}]}").encode()


# -- through a real serve -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


class Tenants:
    """A serve with a hostile customer (OTLP and plain endpoints, an ingest rate) and a
    neighbour, both delivering to S3 in the emulator."""

    def __init__(
        self,
        emulator: Emulator,
        unique: Any,
        workdir: Path,
        *,
        spool_dir: Path | None = None,
        server: dict[str, Any] | None = None,
        hostile: dict[str, Any] | None = None,
        backend: dict[str, Any] | None = None,
    ) -> None:
        self.emulator = emulator
        self.hostile, self.neighbour = unique("hostile"), unique("neighbour")
        self.role_h = make_s3_role(emulator, unique, external_id=self.hostile)
        self.role_n = make_s3_role(emulator, unique, external_id=self.neighbour)
        spool = spool_dir or workdir / "spool"
        role_h, role_n = self.role_h, self.role_n
        config = base_config(
            emulator,
            spool,
            server={"max_line_bytes": "256KiB", **(server or {})},
            spool=backend or {},
            state={"db": str(workdir / "state.db")},
            customers=[
                {
                    **s3_customer(self.hostile, "TOKEN_H", role_h.bucket, role_h.role_arn),
                    **(hostile or {}),
                },
                s3_customer(self.neighbour, "TOKEN_N", role_n.bucket, role_n.role_arn),
            ],
        )
        self.serve = ServeProcess(
            emulator, config, workdir, env={"TOKEN_H": TOKEN_H, "TOKEN_N": TOKEN_N}
        )

    def start(self) -> Tenants:
        self.serve.start(timeout=180)
        return self

    def client(self, token: str) -> httpx.Client:
        return self.serve.as_token(token)

    def otlp(self, body: bytes, *, json_body: bool = False, **headers: str) -> httpx.Response:
        media = "application/json" if json_body else "application/x-protobuf"
        with self.client(TOKEN_H) as c:
            return c.post(
                f"/v1/otlp/{self.hostile}/s3/v1/logs",
                content=body,
                headers={"Content-Type": media, **headers},
            )

    def lines(self, bucket: str) -> list[bytes]:
        out: list[bytes] = []
        for key, obj in sorted(read_objects(self.emulator, bucket, "").items()):
            body = gzip.decompress(obj.body) if key.endswith(".gz") else obj.body
            out.extend(body.split(b"\n")[:-1])
        return out

    def neighbour_lands(self, tag: str, count: int = 20) -> None:
        """The neighbour's lines are accepted and delivered (it is not starved)."""
        sent = [f"{tag} neighbour line {i}".encode() for i in range(count)]
        with self.client(TOKEN_N) as c:
            answer = c.post(f"/v1/ingest/{self.neighbour}/s3", content=b"\n".join(sent))
        assert answer.status_code == 202, answer.text
        wait_for(lambda: set(sent) <= set(self.lines(self.role_n.bucket)), timeout=90)


def rpc_status(response: httpx.Response) -> status_pb2.Status:
    return status_pb2.Status.FromString(response.content)


def test_hostile_otlp_and_gzip_are_refused_while_the_neighbour_is_served(
    emulator: Emulator, unique: Any, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    tenants = Tenants(emulator, unique, tmp_path, backend=spool_backend).start()
    # Amplification: a ~1 MB request whose lines would repeat a 200 KB resource 5000 times
    # (about 1 GB of output) is refused before it is built.
    amplified = amplifying_request(records=5_000, resource_bytes=200_000).SerializeToString()
    assert len(amplified) < 1_100_000
    answer = tenants.otlp(amplified)
    assert answer.status_code == 413, answer.text
    assert "bytes of JSON lines" in rpc_status(answer).message
    assert "fewer log records" in rpc_status(answer).message
    tenants.neighbour_lands("after-amplification")

    # Gzip of many tiny members: over the cap, a clear 400; a body of many (fewer) members
    # is decoded whole and delivered.
    many = EMPTY_MEMBER * 100_001
    with tenants.client(TOKEN_H) as c:
        answer = c.post(
            f"/v1/ingest/{tenants.hostile}/s3",
            content=many,
            headers={"Content-Encoding": "gzip"},
        )
    assert answer.status_code == 400, answer.text
    assert "more than 100000 gzip members" in answer.json()["error"]
    assert "one gzip stream" in answer.json()["fix"]
    lines = [f"member line {i}".encode() for i in range(5_000)]
    members = b"".join(gzip.compress(line + b"\n", mtime=0) for line in lines)
    with tenants.client(TOKEN_H) as c:
        answer = c.post(
            f"/v1/ingest/{tenants.hostile}/s3",
            content=members,
            headers={"Content-Encoding": "gzip"},
        )
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 5_000

    # The same amplifying request, gzipped: same 413 (decoded under the slot, then bounded).
    answer = tenants.otlp(gzip.compress(amplified), **{"Content-Encoding": "gzip"})
    assert answer.status_code == 413, answer.text

    # Deep nesting, both encodings: 400 naming the limit, never a 500.
    answer = tenants.otlp(deep_json(10_000), json_body=True)
    assert answer.status_code == 400, answer.text
    assert f"limit of {DEPTH_LIMIT} AnyValue levels" in answer.json()["message"]
    answer = tenants.otlp(deep_json(100_000), json_body=True)  # and too many objects at all
    assert answer.status_code == 413, answer.text
    assert "send application/x-protobuf" in answer.json()["message"]
    deep_pb = request_with_body(nested_value(DEPTH_LIMIT + 1)).SerializeToString()
    answer = tenants.otlp(deep_pb)
    assert answer.status_code == 400, answer.text
    assert f"limit of {DEPTH_LIMIT} AnyValue levels" in rpc_status(answer).message

    # A well-behaved OTLP request of the same customer still lands.
    good = amplifying_request(records=50, resource_bytes=100).SerializeToString()
    answer = tenants.otlp(good)
    assert answer.status_code == 200, answer.text
    tenants.neighbour_lands("after-everything")
    wait_for(lambda: len(tenants.lines(tenants.role_h.bucket)) >= 5_050, timeout=90)
    delivered = tenants.lines(tenants.role_h.bucket)
    assert set(lines) <= set(delivered)
    assert sum(b'"resource":{"blob":"' in line for line in delivered) == 50
    assert len(delivered) == 5_050  # nothing of the refused requests was kept
    assert tenants.serve.process is not None and tenants.serve.process.poll() is None


def test_otlp_follows_the_customers_ingest_rate(
    emulator: Emulator, unique: Any, tmp_path: Path
) -> None:
    tenants = Tenants(emulator, unique, tmp_path, hostile={"ingest_rate_lines": 100}).start()
    batch = amplifying_request(records=500, resource_bytes=10).SerializeToString()
    first = tenants.otlp(batch)
    assert first.status_code == 200, first.text  # admitted, then 500 lines of debt
    second = tenants.otlp(batch)
    assert second.status_code == 429, second.text
    assert int(second.headers["Retry-After"]) >= 1
    assert "over its ingest rate" in rpc_status(second).message
    tenants.neighbour_lands("beside-the-rate-limit")
    with tenants.serve.admin() as admin:
        metrics = admin.get("/metrics").text
    assert 'logferry_ingest_rejected_requests_total{reason="rate_limited"}' in metrics


def test_otlp_record_count_over_the_limit_is_a_413(
    emulator: Emulator, unique: Any, tmp_path: Path
) -> None:
    tenants = Tenants(emulator, unique, tmp_path, server={"otlp_max_records": 1000}).start()
    answer = tenants.otlp(amplifying_request(records=1001, resource_bytes=1).SerializeToString())
    assert answer.status_code == 413, answer.text
    assert "holds 1001 log records; the limit is 1000" in rpc_status(answer).message
    answer = tenants.otlp(amplifying_request(records=1000, resource_bytes=1).SerializeToString())
    assert answer.status_code == 200, answer.text


# -- a full disk and no file descriptors under the spool -----------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for spool.dir: a disk that really fills up (ENOSPC)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        reap_all()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem of `path` up to `leave` free bytes with one file."""
    filler = path / "filler"
    free = shutil.disk_usage(path).free
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@LOCAL_SPOOL_ONLY  # spool.dir on a full disk: the local spool's own files (NATS has none there)
def test_a_full_disk_answers_507_and_keeps_what_was_acknowledged(
    emulator: Emulator, unique: Any, tmp_path: Path, tiny_tmpfs: Path, spool_backend: dict[str, Any]
) -> None:
    spool_dir = tiny_tmpfs / "spool"
    tenants = Tenants(emulator, unique, tmp_path, spool_dir=spool_dir).start()
    path = f"/v1/ingest/{tenants.hostile}/s3"
    acknowledged: list[bytes] = []
    filler = fill(tiny_tmpfs, leave=256 * 1024)
    refused: httpx.Response | None = None
    with tenants.client(TOKEN_H) as c:
        for round_ in range(200):
            lines = [f"round {round_} line {i} ".encode() + b"x" * 200 for i in range(100)]
            answer = c.post(path, content=b"\n".join(lines))
            if answer.status_code == 202:
                acknowledged.extend(lines)
                continue
            refused = answer
            break
    assert refused is not None, "the disk never filled"
    assert refused.status_code == 507, refused.text
    assert "disk is full" in refused.json()["error"]
    assert "free space under spool.dir" in refused.json()["fix"]
    assert int(refused.headers["Retry-After"]) >= 1
    # OTLP: 503 (what exporters retry), same text.
    answer = tenants.otlp(amplifying_request(records=2000, resource_bytes=200).SerializeToString())
    assert answer.status_code == 503, answer.text
    assert "disk is full" in rpc_status(answer).message
    assert answer.headers["Retry-After"]
    # Space comes back: the refused request is taken on retry, and nothing acknowledged is lost.
    filler.unlink()
    with tenants.client(TOKEN_H) as c:
        retry = [f"after the disk was freed {i}".encode() for i in range(10)]
        answer = c.post(path, content=b"\n".join(retry))
    assert answer.status_code == 202, answer.text
    wanted = set(acknowledged) | set(retry)
    wait_for(lambda: wanted <= set(tenants.lines(tenants.role_h.bucket)), timeout=120)
    tenants.neighbour_lands("after-the-full-disk")


def lowest_free_fd(pid: int) -> int:
    """The fd number the process's next open() would get: with RLIMIT_NOFILE at this, it fails."""
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


@LOCAL_SPOOL_ONLY  # EMFILE opening the endpoint's first segment file (NATS opens no file)
def test_no_file_descriptors_answers_503_and_recovers(
    emulator: Emulator, unique: Any, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    """EMFILE while opening an endpoint's first segment: a 503 with the fix, then recovery."""
    if not hasattr(resource, "prlimit"):
        pytest.skip("resource.prlimit is Linux-only")
    tenants = Tenants(emulator, unique, tmp_path).start()
    pid = tenants.serve.pid
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    with tenants.client(TOKEN_H) as c:
        assert c.get("/healthz").status_code == 200  # this connection is open before the cap
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), old[1]))
        try:
            answer = c.post(f"/v1/ingest/{tenants.hostile}/s3", content=b"first line\n")
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
        assert answer.status_code == 503, answer.text
        assert "file descriptors (EMFILE)" in answer.json()["error"]
        assert "open-file limit" in answer.json()["fix"]
        assert answer.headers["Retry-After"] == "5"
        again = c.post(f"/v1/ingest/{tenants.hostile}/s3", content=b"after the limit\n")
    assert again.status_code == 202, again.text
    wait_for(lambda: b"after the limit" in tenants.lines(tenants.role_h.bucket), timeout=90)
    assert b"first line" not in tenants.lines(tenants.role_h.bucket)
