"""Real senders ending badly, through a real `logferry serve`, every record landing exactly once:

- syslog over TLS closed every way a sender ends: close_notify sent and answered
  (`ssl.SSLSocket.unwrap()` returns, RFC 5425 §4.4), no close_notify (a killed sender), an RST,
  and half-open (a FIN without close_notify while still reading; and a connection simply left open);
- the OpenTelemetry SDK's OTLP/HTTP exporter against a customer with a tiny ingest rate limit, so
  serve answers 429 + Retry-After and the exporter retries."""

from __future__ import annotations

import json
import random
import socket
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aws_helpers import free_port
from chaos.harness import Tally, wait_until, write_tally
from e2e_helpers import bucket_content
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role
from service_helpers import ServeProcess, base_config
from syslog_helpers import make_cert, octet, reset, wait_sent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

pytest.importorskip("cryptography")

WAYS = ["close_notify", "no_close_notify", "rst", "half_open", "left_open"]
RUNS = 3
LINES = 300
TOKEN = "chaos-otlp-customer-token-0123456789"


def s3_endpoint(role: Any, name: str) -> dict[str, Any]:
    return {
        "type": "s3",
        "name": name,
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "period": 1,
    }


def send_tls(
    address: tuple[str, int], ca: Path, payload: bytes, end: str, rng: random.Random
) -> socket.socket | None:
    """Send `payload` over TLS in random-sized writes and end the connection as `end` says;
    returns a socket the caller must close later (half-open ways), else None."""
    raw = socket.create_connection(address)
    sock = ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="localhost")
    at = 0
    while at < len(payload):
        step = rng.randint(1, 5000)
        sock.sendall(payload[at : at + step])
        at += step
    if end == "close_notify":
        sock.settimeout(30)
        plain = sock.unwrap()  # raises (timeout) unless serve answers our close_notify
        plain.close()
        return None
    if end == "left_open":
        return sock
    tcp = socket.socket(fileno=sock.detach())  # no TLS shutdown from here on
    if end == "rst":
        wait_sent(tcp)
        reset(tcp)
        return None
    if end == "half_open":
        tcp.shutdown(socket.SHUT_WR)
        return tcp
    tcp.close()
    return None


def test_syslog_over_tls_every_way_of_closing_lands_once(
    emulator: Emulator, unique: Any, tmp_path: Path, rng: random.Random, seed: int
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    cert = make_cert(tmp_path, "server")
    port = free_port()
    config = base_config(
        emulator,
        tmp_path / "spool",
        customers=[{"id": customer, "endpoints": [s3_endpoint(role, "syslog")]}],
        listeners=[
            {
                "customer_id": customer,
                "endpoint": "syslog",
                "protocol": "tcp",
                "listen": f"127.0.0.1:{port}",
                "framing": "octet",
                "tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
            }
        ],
    )
    tally = Tally("syslog-tls-every-close", seed)
    serve = ServeProcess(emulator, config, tmp_path).start()
    expected: Counter[bytes] = Counter()
    still_open: list[socket.socket] = []
    plan = [way for way in WAYS for _ in range(RUNS)]
    rng.shuffle(plan)
    try:
        for n, way in enumerate(plan):
            head = f"<134>1 2026-12-06T21:00:00.000Z host app 7 - - {way}-{n:02d}"
            lines = [f"{head} line {i:05d}".encode() for i in range(LINES)]
            left = send_tls(
                ("127.0.0.1", port), cert.cert_file, b"".join(map(octet, lines)), way, rng
            )
            if left is not None:
                still_open.append(left)
            expected.update(lines)
            tally.moments[way] += 1
        # Half-open and left-open connections are still open here: their lines must land anyway.
        found = wait_until(
            lambda: (
                (c := bucket_content(emulator, role.bucket).lines)
                and sum(c.values()) >= sum(expected.values())
                and c
            ),
            120,
            "every syslog line in the bucket",
            1.0,
        )
    finally:
        for sock in still_open:
            sock.close()
    assert serve.terminate() == 0
    lost = sum(1 for line in expected if found[line] == 0)
    duplicated = sum(n - 1 for n in found.values() if n > 1)
    tally.acked, tally.checked, tally.lost, tally.duplicated = (
        sum(expected.values()),
        sum(found.values()),
        lost,
        duplicated,
    )
    write_tally(tally)
    assert found == expected, tally.line()


def test_otlp_exporter_retrying_on_429_lands_every_record_once(
    emulator: Emulator, unique: Any, tmp_path: Path, seed: int
) -> None:
    import requests
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        customers=[
            {
                "id": customer,
                "token_env": "CHAOS_TOKEN",
                # A tiny rate: the exporter's batches outrun it and get 429 + Retry-After.
                "ingest_rate_lines": 150,
                "endpoints": [s3_endpoint(role, "otel")],
            }
        ],
    )
    serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN}).start()
    answers: Counter[int] = Counter()
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **k: answers.update([r.status_code]))
    exporter = OTLPLogExporter(
        endpoint=f"{serve.url}/v1/otlp/{customer}/otel/v1/logs",
        headers={"Authorization": f"Bearer {TOKEN}"},
        session=session,
        timeout=60,
    )
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=100))
    logger = provider.get_logger("chaos")
    count = 1000
    for i in range(count):
        logger.emit(body=f"otel record {i:05d}")
    assert provider.force_flush(120_000)
    provider.shutdown()
    tally = Tally("otlp-exporter-429", seed)

    def bodies() -> Counter[str]:
        lines = bucket_content(emulator, role.bucket).lines
        got: Counter[str] = Counter()
        for line, n in lines.items():
            got[json.loads(line)["body"]] += n
        return got

    found = wait_until(
        lambda: (c := bodies()) and sum(c.values()) >= count and c, 60, "every record", 1.0
    )
    assert serve.terminate() == 0
    expected = Counter(f"otel record {i:05d}" for i in range(count))
    tally.acked, tally.checked = count, sum(found.values())
    tally.lost = sum(1 for body in expected if found[body] == 0)
    tally.duplicated = sum(n - 1 for n in found.values() if n > 1)
    tally.moments.update({f"HTTP {code}": n for code, n in answers.items()})
    write_tally(tally)
    assert answers[429] > 0, f"the rate limit never answered 429: {answers}"
    assert found == expected, tally.line()
