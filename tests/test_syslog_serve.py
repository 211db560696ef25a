"""Syslog through a real `logferry serve`: listeners from the TOML config, lines read back from S3.

- Senders that vanish (TLS without close_notify, TCP FIN, RST after data) lose nothing, run
  after run, and the ends are counted in /metrics per listener.
- A listener whose endpoint is deleted refuses and drops (counted, logged once) until the
  endpoint is created again through the API.
"""

from __future__ import annotations

import gzip
import re
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from aws_helpers import free_port
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for
from syslog_helpers import make_cert, octet, send_and_end

pytest.importorskip("cryptography")

RUNS = 20
N = 250


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def bucket_lines(emulator: Emulator, bucket: str) -> Counter[bytes]:
    counts: Counter[bytes] = Counter()
    for key, obj in read_objects(emulator, bucket).items():
        body = gzip.decompress(obj.body) if key.endswith(".gz") else obj.body
        counts.update(body.split(b"\n")[:-1])
    return counts


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text; 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(",")))
            if got == want:
                return float(m.group(3))
    return 0.0


def rfc5424(tag: str, i: int) -> bytes:
    return f"<134>1 2026-11-30T10:00:00.000Z sender app 42 ID7 - {tag} message {i:04d}".encode()


def s3_endpoint(role: Any) -> dict[str, Any]:
    return {
        "type": "s3",
        "name": "s3",
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "path": "syslog/",
        "period": 2,
        "gzip_level": 3,
    }


@pytest.mark.slow
def test_senders_that_vanish_lose_nothing(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    cert = make_cert(tmp_path, "server")
    tls_port, tcp_port = free_port(), free_port()
    listener = {"customer_id": customer, "endpoint": "s3", "protocol": "tcp"}
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool=spool_backend,
        customers=[{"id": customer, "endpoints": [s3_endpoint(role)]}],
        listeners=[
            {
                **listener,
                "listen": f"127.0.0.1:{tls_port}",
                "framing": "octet",
                "tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
            },
            {**listener, "listen": f"127.0.0.1:{tcp_port}"},
        ],
    )
    serve = ServeProcess(emulator, config, tmp_path).start()
    try:
        tls_addr, tcp_addr = ("127.0.0.1", tls_port), ("127.0.0.1", tcp_port)
        expected: Counter[bytes] = Counter()
        ways = [
            ("tls-close", tls_addr, "close", cert.cert_file),  # no close_notify: the issue
            ("tls-rst", tls_addr, "rst", cert.cert_file),
            ("tcp-fin", tcp_addr, "close", None),
            ("tcp-rst", tcp_addr, "rst", None),
        ]
        for way, address, end, ca in ways:
            for run_no in range(RUNS):
                lines = [rfc5424(f"{way}-{run_no:02d}", i) for i in range(N)]
                payload = b"".join(octet(line) for line in lines)
                send_and_end(address, payload, end, ca=ca, chunk=1500)
                expected.update(lines)
        bucket = role.bucket
        got = wait_for(lambda: (c := bucket_lines(emulator, bucket)) == expected and c, timeout=120)
        # Every run of every way: all N lines, once each.
        per_run = Counter(line.rsplit(b" message ", 1)[0].rsplit(b" ", 1)[1] for line in got)
        assert set(per_run.values()) == {N} and len(per_run) == len(ways) * RUNS
        with serve.admin() as admin:
            text = admin.get("/metrics").text
        tls_l, tcp_l = f"tcp://127.0.0.1:{tls_port}", f"tcp://127.0.0.1:{tcp_port}"
        closed = "logferry_syslog_connections_closed_total"
        assert metric(text, closed, listener=tls_l, reason="fin_without_close_notify") == RUNS
        assert metric(text, closed, listener=tls_l, reason="reset") == RUNS
        assert metric(text, closed, listener=tcp_l, reason="clean") == RUNS
        assert metric(text, closed, listener=tcp_l, reason="reset") == RUNS
        assert metric(text, "logferry_syslog_tls_unclean_closes_total", listener=tls_l) == 2 * RUNS
        assert metric(text, "logferry_syslog_truncated_at_close_total", listener=tls_l) == 0
        assert metric(text, "logferry_syslog_lines_total", listener=tls_l) == 2 * RUNS * N
        assert metric(text, "logferry_syslog_lines_total", listener=tcp_l) == 2 * RUNS * N

        # A failed handshake (plain text on the TLS port) is counted too.
        failures = "logferry_syslog_tls_handshake_failures_total"
        assert metric(text, failures, listener=tls_l) == 0
        with socket.create_connection(tls_addr) as sock:
            sock.sendall(b"<13>this is not TLS\n")
            sock.settimeout(10)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionError:
                pass
        with serve.admin() as admin:
            wait_for(lambda: metric(admin.get("/metrics").text, failures, listener=tls_l) == 1)
    finally:
        assert serve.terminate() == 0


def _refused(address: tuple[str, int]) -> bool:
    """True when the server closes a new connection at once without reading it."""
    with socket.create_connection(address) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(b"<13>sent while the endpoint is gone\n")
            return sock.recv(1) == b""
        except ConnectionError:
            return True


def test_deleted_endpoint_refuses_until_it_is_back(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    spool = tmp_path / "spool"
    endpoint = s3_endpoint(role)
    path = f"/v1/customers/{customer}/endpoints/s3"

    # First run, no listener: the customer and endpoint are created through the API.
    first = ServeProcess(
        emulator, base_config(emulator, spool, spool=spool_backend), tmp_path / "first"
    ).start()
    try:
        with first.admin() as admin:
            assert admin.put(f"/v1/customers/{customer}", json={}).status_code in (200, 201)
            r = admin.put(path, json=endpoint)
            assert r.status_code in (200, 201), r.text
    finally:
        assert first.terminate() == 0

    tcp_port, udp_port = free_port(), free_port()
    listener = {"customer_id": customer, "endpoint": "s3"}
    config = base_config(
        emulator,
        spool,
        spool=spool_backend,
        listeners=[
            {**listener, "protocol": "tcp", "listen": f"127.0.0.1:{tcp_port}"},
            {**listener, "protocol": "udp", "listen": f"127.0.0.1:{udp_port}"},
        ],
    )
    serve = ServeProcess(emulator, config, tmp_path / "second").start()
    tcp_addr, udp_addr = ("127.0.0.1", tcp_port), ("127.0.0.1", udp_port)
    tcp_l, udp_l = f"tcp://127.0.0.1:{tcp_port}", f"udp://127.0.0.1:{udp_port}"

    def udp(line: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(line, udp_addr)

    def metrics(admin: httpx.Client) -> str:
        return admin.get("/metrics").text

    try:
        with serve.admin() as admin:
            send_and_end(tcp_addr, b"<13>tcp before\n", "close")
            udp(b"<13>udp before")
            want = Counter([b"<13>tcp before", b"<13>udp before"])
            wait_for(lambda: bucket_lines(emulator, role.bucket) == want, timeout=60)

            assert admin.delete(path).status_code == 204
            for _ in range(5):
                assert _refused(tcp_addr)
                udp(b"<13>udp while gone")
            refused = "logferry_syslog_connections_refused_total"
            wait_for(
                lambda: (
                    metric(metrics(admin), refused, listener=tcp_l, reason="endpoint_missing") == 5
                )
            )
            dropped = "logferry_syslog_udp_dropped_total"
            wait_for(
                lambda: (
                    metric(metrics(admin), dropped, listener=udp_l, reason="endpoint_missing") == 5
                )
            )
            time.sleep(1.5)  # the old behaviour: a retry (and a log line) every second
            logs = serve.logs()
            assert logs.count("no longer exists") == 2, logs[-3000:]  # once per listener
            assert "UnknownEndpoint" not in logs and "spool refused" not in logs

            r = admin.put(path, json=endpoint)
            assert r.status_code in (200, 201), r.text
            send_and_end(tcp_addr, b"<13>tcp after\n", "close")
            udp(b"<13>udp after")
            want.update([b"<13>tcp after", b"<13>udp after"])
            wait_for(lambda: bucket_lines(emulator, role.bucket) == want, timeout=60)
            assert serve.logs().count("exists again") == 2
    finally:
        assert serve.terminate() == 0
