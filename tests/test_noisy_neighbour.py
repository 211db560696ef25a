"""Issue 11's noisy neighbour, through a real `logferry serve`: customer A has a role that
AccessDenies, a Kinesis stream throttled on every call and floods 16 MiB invalid-UTF-8 bodies;
customer B meanwhile gets 202s and its lines land in S3 within period + 5 s."""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinesis_helpers import kinesis_role, make_stream
from logferry.local.emulator import Emulator
from logferry.local.fault_proxy import throttling_proxy
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, s3_customer, wait_for

FLOOD_BYTES = 16 * 1024 * 1024 - 64  # just under the default 16 MiB body limit
PERIOD = 2


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def _flood_bodies() -> list[bytes]:
    """gzip keeps the upload small (~16 KB): the cost is all in the server's normalisation."""
    giant = gzip.compress(b"\xff" * FLOOD_BYTES, 1)  # one invalid line, truncated to 256 KiB
    lines = gzip.compress((b"\xff" * 99 + b"\n") * (FLOOD_BYTES // 100), 1)  # 48 MiB repaired
    return [giant, lines]


def _landed(emulator: Emulator, bucket: str) -> set[bytes]:
    found: set[bytes] = set()
    for key, obj in read_objects(emulator, bucket).items():
        found.update((gzip.decompress(obj.body) if key.endswith(".gz") else obj.body).split(b"\n"))
    return found - {b""}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_noisy_neighbour_does_not_harm_another_customer(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    a, b = unique("cust-a"), unique("cust-b")
    denied = make_s3_role(emulator, unique, external_id=unique("someone-else"))
    stream = make_stream(emulator, unique("stream"))
    a_kinesis = kinesis_role(emulator, unique("role"), stream, a)
    good = make_s3_role(emulator, unique, external_id=b)
    with throttling_proxy(emulator.url, {stream.name}) as proxy:
        config = base_config(
            emulator,
            tmp_path / "spool",
            spool=spool_backend,
            aws={"endpoint_url": proxy.url},
            customers=[
                {
                    "id": a,
                    "token_env": "TOKEN_A",
                    "spool_max_bytes": "8MiB",
                    "endpoints": [
                        {
                            "type": "s3",
                            "name": "s3",
                            "bucket_name": denied.bucket,
                            "iam_role": denied.role_arn,
                            "path": "a/",
                            "period": PERIOD,
                        },
                        {
                            "type": "kinesis",
                            "name": "kin",
                            "topic": stream.name,
                            "region": stream.region,
                            "iam_role": a_kinesis,
                        },
                    ],
                },
                {
                    "id": b,
                    "token_env": "TOKEN_B",
                    "endpoints": [
                        {
                            "type": "s3",
                            "name": "s3",
                            "bucket_name": good.bucket,
                            "iam_role": good.role_arn,
                            "path": "b/",
                            "period": PERIOD,
                        },
                    ],
                },
            ],
        )
        env = {"TOKEN_A": "token-of-noisy-a-0000000000", "TOKEN_B": "token-of-quiet-b-111111"}
        serve = ServeProcess(emulator, config, tmp_path, env=env).start(180)
        # B's endpoint is activated (AssumeRole, client, setup check) before the flood starts:
        # what is measured is the neighbour's harm to B's delivery, not B's own cold start on a
        # CPU-starved box (its first lines landed 7.0-7.7 s after their 202 in two CI-like runs).
        with serve.as_token(env["TOKEN_B"]) as client_b:
            assert client_b.post(f"/v1/ingest/{b}/s3", content=b"b-warm-up\n").status_code == 202
        wait_for(lambda: b"b-warm-up" in _landed(emulator, good.bucket), timeout=120)
        a_codes: Counter[int] = Counter()
        stop = threading.Event()

        def flood(kind: int) -> None:
            bodies = _flood_bodies()
            with httpx.Client(base_url=serve.url, timeout=300) as client:
                headers = {"Authorization": f"Bearer {env['TOKEN_A']}", "Content-Encoding": "gzip"}
                # Keep A's Kinesis stream busy (throttled on every call) as well.
                client.post(
                    f"/v1/ingest/{a}/kin", content=gzip.compress(b"k\n" * 1000), headers=headers
                )
                while not stop.is_set():
                    response = client.post(
                        f"/v1/ingest/{a}/s3", content=bodies[kind], headers=headers
                    )
                    a_codes[response.status_code] += 1

        flooders = [threading.Thread(target=flood, args=(i % 2,)) for i in range(4)]
        for thread in flooders:
            thread.start()
        b_codes: Counter[int] = Counter()
        sent: dict[bytes, float] = {}
        landed_at: dict[bytes, float] = {}
        polling = threading.Event()

        def poll() -> None:  # landing times to 0.2 s, whatever B's request latency
            while not polling.is_set():
                for got in _landed(emulator, good.bucket) - set(landed_at):
                    landed_at[got] = time.monotonic()
                time.sleep(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            with serve.as_token(env["TOKEN_B"]) as client_b:
                deadline = time.monotonic() + 40
                i = 0
                while time.monotonic() < deadline or not a_codes[429]:
                    line = b"b-line-%04d" % i
                    response = client_b.post(f"/v1/ingest/{b}/s3", content=line + b"\n")
                    b_codes[response.status_code] += 1
                    if response.status_code == 202:
                        sent[line] = time.monotonic()
                    i += 1
                    time.sleep(0.5)
                    if time.monotonic() > deadline + 120:
                        break
        finally:
            stop.set()
            for thread in flooders:
                thread.join(300)
        end = time.monotonic() + PERIOD + 5
        while set(sent) - set(landed_at) and time.monotonic() < end:
            time.sleep(0.2)
        polling.set()
        poller.join(30)
        assert set(b_codes) == {202}, b_codes
        assert a_codes[429] > 0, a_codes  # A alone is told 429 at its quota
        assert proxy.throttled > 0  # A's stream really was throttled
        with serve.admin() as admin:
            status = admin.get(f"/v1/customers/{a}/endpoints/s3/status").json()
        assert any(e["code"] == "AccessDenied" for e in status["errors"]), status
        missing = set(sent) - set(landed_at)
        assert not missing, f"{len(missing)} of B's lines never landed"
        late = {k: landed_at[k] - sent[k] for k in sent if landed_at[k] - sent[k] > PERIOD + 5}
        assert not late, f"B's lines landed later than period + 5 s: {late}"


def test_a_destination_that_never_answers_holds_no_delivery_thread(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    """Customer A's S3-compatible `domain` accepts connections and never answers, so A's first
    activation (the write probe) hangs for minutes. With ONE delivery thread, customer B's
    lines still land within period + 5 s: activations run on their own pool."""
    import socket

    a, b = unique("cust-a"), unique("cust-b")
    role_a = make_s3_role(emulator, unique, external_id=a)
    role_b = make_s3_role(emulator, unique, external_id=b)
    hole = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def swallow() -> None:
        while True:
            try:
                conn, _ = hole.accept()
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    threading.Thread(target=swallow, daemon=True).start()
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool=spool_backend,
        server={"delivery_threads": 1},
        aws={"endpoint_url": emulator.url, "allow_http_domain": True, "allow_private_domain": True},
        customers=[
            s3_customer(
                a,
                "TOKEN_A",
                role_a.bucket,
                role_a.role_arn,
                period=PERIOD,
                domain=f"http://127.0.0.1:{hole.getsockname()[1]}",
            ),
            s3_customer(b, "TOKEN_B", role_b.bucket, role_b.role_arn, period=PERIOD, path="b/"),
        ],
    )
    env = {"TOKEN_A": "token-of-stuck-a-0000000000", "TOKEN_B": "token-of-quiet-b-111111"}
    serve = ServeProcess(emulator, config, tmp_path, env=env).start(180)
    try:
        with serve.as_token(env["TOKEN_A"]) as client_a:
            assert client_a.post(f"/v1/ingest/{a}/s3", content=b"a-line\n").status_code == 202
        wait_for(lambda: held, timeout=60)  # A's probe is in flight and will not come back
        with serve.as_token(env["TOKEN_B"]) as client_b:
            assert client_b.post(f"/v1/ingest/{b}/s3", content=b"b-line\n").status_code == 202
        # Before the fix, A's probe held the only delivery thread for 3 x 60 s read timeouts.
        wait_for(lambda: b"b-line" in _landed(emulator, role_b.bucket), timeout=60)
        with serve.admin() as admin:
            shown = admin.get(f"/v1/customers/{a}/endpoints/s3/status").json()
        assert shown["lines"]["pending"] == 1, shown  # A still waits on its hanging probe
        assert not read_objects(emulator, role_a.bucket, "")  # nothing reached A's real bucket
    finally:
        serve.kill9()
        hole.close()
        for conn in held:
            conn.close()
