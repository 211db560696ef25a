"""Issue 27's three regressions, each through a real `logferry serve` (and each failed before).

1. Start-up sts:GetCallerIdentity fails over across STS regions exactly like delivery's
   AssumeRole, and says per region what happened.
2. Syslog over TLS answers a sender's close_notify with its own (RFC 5425 §4.4).
3. Draining a large backlog keeps the S3 part bytes in flight within `server.upload_memory_bytes`.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aws_helpers import REGION_DISABLED_BODY, canned_server, free_port
from e2e_helpers import body_of, bucket_content, ingest, make_lines, wait_pending_zero
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role
from service_helpers import ServeProcess, base_config, reap_all, wait_for

TOKEN_ENV = "LOGFERRY_TEST_REGRESS_TOKEN"
TOKEN = "regress-customer-token-0123456789"


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def _log_records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _customer(customer: str, role: Any, **fields: Any) -> dict[str, Any]:
    return {
        "id": customer,
        "token_env": TOKEN_ENV,
        "endpoints": [
            {
                "type": "s3",
                "name": "s3",
                "bucket_name": role.bucket,
                "iam_role": role.role_arn,
                "period": 1,
                **fields,
            }
        ],
    }


# ------------------------------------------------------------------ 1. STS failover at start-up

REGIONS = ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]


def test_start_up_fails_over_sts_regions_like_delivery(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    """us-east-1/2 down (dead ports), us-west-1 RegionDisabledException (the real 403 body),
    us-west-2 healthy: serve starts, delivers, and logs each region's outcome with its fix."""
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    with canned_server(403, REGION_DISABLED_BODY) as disabled:
        config = base_config(
            emulator,
            tmp_path / "spool",
            vendor={
                "sts_regions": REGIONS,
                "sts_endpoints": {
                    "us-east-1": f"http://127.0.0.1:{free_port()}",
                    "us-east-2": f"http://127.0.0.1:{free_port()}",
                    "us-west-1": disabled,
                    "us-west-2": emulator.url,
                },
            },
            customers=[_customer(customer, role)],
        )
        serve = ServeProcess(emulator, config, tmp_path, env={TOKEN_ENV: TOKEN}).start()
        try:
            lines = make_lines("sts-failover", 200)
            with serve.as_token(TOKEN) as client:
                assert ingest(client, customer, "s3", body_of(lines)) == len(lines)
            wait_pending_zero(serve, customer, "s3")
            found = bucket_content(emulator, role.bucket).lines
            assert found == Counter(lines)
        finally:
            assert serve.terminate() == 0

    records = _log_records(serve.logs())
    start = [r for r in records if r.get("message") == "STS regions at start-up"]
    assert len(start) == 1, serve.logs()[-3000:]
    assert start[0]["regions"] == (
        "us-east-1=unreachable us-east-2=unreachable us-west-1=region_disabled us-west-2=ok"
    )
    assert start[0]["answered_by"] == "us-west-2"
    failed = {
        r["region"]: r
        for r in records
        if r.get("message") == "STS region failed at start-up; failed over"
    }
    assert set(failed) == {"us-east-1", "us-east-2", "us-west-1"}
    assert "activate STS in us-west-1" in failed["us-west-1"]["fix"]
    assert "unreachable" in failed["us-east-1"]["fix"]
    assert "credentials" not in failed["us-west-1"]["fix"]


def test_start_up_with_every_sts_region_failing_exits_1_with_one_line_per_region(
    emulator: Emulator, tmp_path: Path
) -> None:
    with canned_server(403, REGION_DISABLED_BODY) as disabled:
        config = base_config(
            emulator,
            tmp_path / "spool",
            vendor={
                "sts_regions": ["us-east-1", "us-west-1"],
                "sts_endpoints": {
                    "us-east-1": f"http://127.0.0.1:{free_port()}",
                    "us-west-1": disabled,
                },
            },
        )
        serve = ServeProcess(emulator, config, tmp_path).spawn()
        assert serve.process is not None
        try:
            code = serve.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not exit:\n{serve.logs()[-3000:]}")
    out = serve.logs()
    assert code == 1, out[-3000:]
    east = [ln for ln in out.splitlines() if ln.strip().startswith("us-east-1: unreachable")]
    west = [ln for ln in out.splitlines() if ln.strip().startswith("us-west-1: region_disabled")]
    assert len(east) == 1 and len(west) == 1, out[-3000:]
    assert "activate STS in us-west-1" in west[0]
    assert "vendor.sts_endpoints" in east[0]


# ------------------------------------------------------------------ 2. TLS close_notify answered


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text; 0 when absent."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        got = sorted(x for x in (m.group(2) or "").split(",") if x) if m else None
        if m and m.group(1) == name and got == want:
            return float(m.group(3))
    return 0.0


def test_syslog_tls_answers_close_notify_and_survives_unclean_ends(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    """RFC 5425 §4.4: a sender that sends close_notify and waits for ours (`unwrap()`) gets it;
    senders that just close the TCP socket or reset it leave serve healthy; every complete
    message of all three lands in S3 exactly once."""
    pytest.importorskip("cryptography")
    from syslog_helpers import make_cert, octet, send_and_end

    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    cert = make_cert(tmp_path, "server")
    port = free_port()
    config = base_config(
        emulator,
        tmp_path / "spool",
        customers=[_customer(customer, role, gzip_level=3)],
        listeners=[
            {
                "customer_id": customer,
                "endpoint": "s3",
                "protocol": "tcp",
                "listen": f"127.0.0.1:{port}",
                "framing": "octet",
                "tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
            }
        ],
    )
    serve = ServeProcess(emulator, config, tmp_path, env={TOKEN_ENV: TOKEN}).start()
    address = ("127.0.0.1", port)
    try:
        sent: list[bytes] = []

        def messages(tag: str) -> list[bytes]:
            lines = [
                f"<134>1 2026-12-06T20:00:00.000Z sender app 42 ID7 - {tag} {i:04d}".encode()
                for i in range(300)
            ]
            sent.extend(lines)
            return lines

        # A sender that closes cleanly and waits for our close_notify.
        payload = b"".join(octet(m) for m in messages("unwrap"))
        ctx = ssl.create_default_context(cafile=str(cert.cert_file))
        with socket.create_connection(address) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(payload)
            tls.settimeout(60)
            plain = tls.unwrap()  # raises SSLEOFError when the server answers with a bare EOF
            plain.settimeout(60)
            assert plain.recv(1) == b""  # then the server closes the TCP connection
        # A sender that closes the TCP socket without close_notify, and one that resets it.
        for end in ("close", "rst"):
            send_and_end(
                address,
                b"".join(octet(m) for m in messages(end)),
                end,
                ca=cert.cert_file,
                chunk=1500,
            )

        wait_pending_zero(serve, customer, "s3")
        with serve.admin() as admin:
            listener = f"tcp://127.0.0.1:{port}"
            text = admin.get("/metrics").text
            closed = "logferry_syslog_connections_closed_total"
            assert _metric(text, closed, listener=listener, reason="clean") == 1
            assert _metric(text, closed, listener=listener, reason="fin_without_close_notify") == 1
            assert _metric(text, closed, listener=listener, reason="reset") == 1
            assert admin.get("/healthz").status_code == 200
        found = wait_for(
            lambda: (c := bucket_content(emulator, role.bucket).lines) == Counter(sent) and c,
            timeout=60,
        )
        assert sum(found.values()) == 900
    finally:
        assert serve.terminate() == 0


# ------------------------------------------------------------------ 3. S3 upload memory budget

MIB = 1024 * 1024
BUDGET = 16 * MIB  # two 8 MiB parts for the whole process


def test_drain_keeps_s3_upload_bytes_in_flight_within_the_budget(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    """Three endpoints spool 24 MiB each behind AccessDenied (about 3 parts of 8 MiB each),
    then their roles are fixed and they drain at once through a slow S3 (300 ms per call), all
    wanting parts in flight: the process never has more than `server.upload_memory_bytes` of
    bodies in flight (the peak /metrics reports), endpoints waited for room instead, and every
    line lands exactly once."""
    from logferry.local.latency_proxy import LinkProfile, ProxyConfig, latency_proxy

    customer = unique("cust")
    roles = [make_s3_role(emulator, unique, external_id=customer) for _ in range(3)]
    iam = emulator.client("iam")
    for role in roles:  # AccessDenied on every S3 call: the backlog builds in the spool
        iam.detach_role_policy(RoleName=role.role_name, PolicyArn=role.policy_arn)
    endpoints = [
        {
            "type": "s3",
            "name": f"s3-{i}",
            "bucket_name": role.bucket,
            "iam_role": role.role_arn,
            "period": 2,
        }
        for i, role in enumerate(roles)
    ]
    slow_s3 = ProxyConfig(services={"s3": LinkProfile(delay_ms=300)})
    with latency_proxy(emulator.url, slow_s3) as proxy:
        config = base_config(
            emulator,
            tmp_path / "spool",
            aws={"endpoint_url": proxy.url},
            server={"upload_memory_bytes": "16MiB"},
            customers=[{"id": customer, "token_env": TOKEN_ENV, "endpoints": endpoints}],
        )
        serve = ServeProcess(emulator, config, tmp_path, env={TOKEN_ENV: TOKEN}).start()
        try:
            sent: dict[str, list[bytes]] = {}
            with serve.as_token(TOKEN) as client:
                for i, endpoint in enumerate(endpoints):
                    name = endpoint["name"]
                    sent[name] = []
                    for batch in range(6):  # 6 × 4 MiB of 1000-byte lines
                        lines = make_lines(f"e{i}-b{batch}", 4 * MIB // 1001, size=1000)
                        assert ingest(client, customer, name, body_of(lines)) == len(lines)
                        sent[name] += lines
            for role in roles:
                iam.attach_role_policy(RoleName=role.role_name, PolicyArn=role.policy_arn)
            with serve.admin() as admin:
                for endpoint in endpoints:  # a successful verify wakes the endpoint at once
                    path = f"/v1/customers/{customer}/endpoints/{endpoint['name']}/verify"
                    r = admin.post(path)
                    assert r.status_code == 200, r.text
            for endpoint, role in zip(endpoints, roles, strict=True):
                wait_pending_zero(serve, customer, endpoint["name"], timeout=300)
                expected = Counter(sent[endpoint["name"]])
                found = wait_for(
                    lambda b=role.bucket, e=expected: (
                        (c := bucket_content(emulator, b).lines) == e and c
                    ),
                    timeout=60,
                )
                assert found == expected  # exactly once
            with serve.admin() as admin:
                text = admin.get("/metrics").text
        finally:
            assert serve.terminate() == 0
    budget = _metric(text, "logferry_s3_upload_budget_bytes")
    peak = _metric(text, "logferry_s3_upload_bytes_in_flight_peak")
    assert budget == BUDGET
    assert 0 < peak <= BUDGET, (peak, budget)
    assert _metric(text, "logferry_s3_upload_bytes_in_flight") == 0
    # The budget was binding (bodies waited for room), so the bound above was really tested.
    assert _metric(text, "logferry_s3_upload_budget_waits_total") > 0


def test_upload_memory_below_two_parts_is_refused_with_the_fix() -> None:
    from pydantic import ValidationError

    from logferry.service.config import ServerConfig

    with pytest.raises(ValidationError) as info:
        ServerConfig(upload_memory_bytes="8MiB")
    assert "upload_memory_bytes" in str(info.value) and "at least 16MiB" in str(info.value)
    assert ServerConfig(upload_memory_bytes="1GiB").upload_memory_bytes == 1024 * MIB
