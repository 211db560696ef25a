"""Issue 29's must-shows 5, 7 and 8 through real `logferry serve` processes on the NATS
backend, and two defects fixed with them (a transient JetStream publish answer ended as 503; a
registry write while NATS is down answered 500 after 10 s).

Every case asserts outcomes a sender or a customer sees: status codes, lines in the bucket by
content (exactly once), records in KV, S3 responses counted per delivery node by a recording
proxy. Timing is printed, never asserted (figures: docs/scale-out.md, bench/).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import nats.js.errors
import pytest

from e2e_helpers import body_of, bucket_content, make_lines
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from logferry.spool.nats.spool import publish_refusal
from logferry.spool.nats.wire import H_ID
from nats_helpers import nats_node, nats_server  # noqa: F401 - fixture
from nats_spool_helpers import backend, settings
from s3_helpers import make_s3_role
from service_helpers import reap_all, wait_for

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


# -- defect a: a transient publish answer is retried with the same Nats-Msg-Id --------------


def test_a_publish_answered_10158_is_retried_with_the_same_id_and_stored_once(
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The sequence a leader change produces: the first try reaches the stream but its ack
    is lost (timeout), the retry is answered 10158 "duplicate message id is in process" (the
    first try is still in the Raft log), the next gets the duplicate ack. Before the fix the
    10158 (HTTP 409, below 500) ended the append: 503 to a sender whose line was stored."""

    async def run() -> None:
        s = settings(nats_server, shards=1)
        async with backend(s, "n1", tmp_path, deliver=False) as b:
            spool = await asyncio.to_thread(b.provider.open, "k")
            real_publish = b.js.publish
            tries: list[str] = []

            async def flaky(subject: str, payload: bytes, **kw: Any) -> Any:
                tries.append(kw["headers"][H_ID])
                if len(tries) == 1:
                    await real_publish(subject, payload, **kw)
                    raise nats.errors.TimeoutError
                if len(tries) in (2, 3):
                    raise nats.js.errors.APIError(
                        code=409, err_code=10158, description="duplicate message id is in process"
                    )
                return await real_publish(subject, payload, **kw)

            b.js.publish = flaky  # type: ignore[method-assign]
            await spool.append(b"once\n", 1)
            assert len(tries) == 4 and len(set(tries)) == 1, tries
            info = await asyncio.wrap_future(b.run(b.js.stream_info(spool.stream)))
            assert info.state.messages == 1  # the retries were dropped as duplicates

    asyncio.run(run())


@pytest.mark.parametrize(
    ("code", "err_code", "description", "verdict"),
    [
        (409, 10158, "duplicate message id is in process", None),
        (429, 10167, "too many requests", None),
        (503, 10008, "JetStream system temporarily unavailable", None),
        (500, 10009, "JetStream cluster can not handle request", None),
        (503, 10077, "store is closed", None),
        (503, 10077, "maximum bytes exceeded", "full"),
        (400, 10054, "message size exceeds maximum allowed", "refused"),
        (404, 10059, "stream not found", "refused"),
    ],
)
def test_publish_answers_are_classified_by_what_a_retry_can_change(
    code: int, err_code: int, description: str, verdict: str | None
) -> None:
    exc = nats.js.errors.APIError(code=code, err_code=err_code, description=description)
    assert publish_refusal(exc) == verdict


# -- defect b: a registry write while NATS is down answers 503 + Retry-After at once ------


def test_a_registry_write_while_nats_is_down_answers_503_with_retry_after(
    emulator: Emulator, tmp_path: Path, unique: Any
) -> None:
    """Before the fix the write waited CALL_TIMEOUT (10 s) for a connection that was not
    there, then answered 500 (no handler for RegistryUnavailable). Now: 503, Retry-After, an
    error body naming NATS and the fix, nothing written; the same call succeeds once NATS is
    back."""
    cluster = NatsCluster(tmp_path / "nats", nodes=1).start()
    try:
        serve = nats_node(emulator, cluster, tmp_path, "all-1", "all", "RD").start()
        customer = unique("cust")
        role = make_s3_role(emulator, unique, external_id=customer)
        endpoint = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
        other = unique("cust")
        with serve.admin() as admin:
            r = admin.put(f"/v1/customers/{customer}", json={"external_id": customer})
            assert r.status_code == 201, r.text
            cluster.kill(cluster.nodes[0])
            wait_for(lambda: httpx.get(f"{serve.url}/readyz").status_code == 503, timeout=30)
            answers = []
            for method, path, body in (
                ("PUT", f"/v1/customers/{other}", None),
                ("PUT", f"/v1/customers/{customer}/endpoints/s3?verify=false", endpoint),
                ("POST", f"/v1/customers/{customer}/tokens", None),
            ):
                began = time.monotonic()
                r = admin.request(method, path, json=body, timeout=60)
                answers.append((path, r.status_code, round(time.monotonic() - began, 2)))
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert int(r.headers["Retry-After"]) >= 1
                problem = r.json()
                assert "NATS" in problem["error"] and problem["fix"], problem
                assert problem["retry_after"] == int(r.headers["Retry-After"])
            print(f"registry writes while NATS is down (path, status, seconds): {answers}")
            cluster.start_node(cluster.nodes[0])
            wait_for(lambda: httpx.get(f"{serve.url}/readyz").status_code == 200, timeout=60)
            r = wait_for(
                lambda: (
                    r if (r := admin.put(f"/v1/customers/{other}")).status_code != 503 else None
                ),
                timeout=60,
            )
            assert r.status_code == 201, r.text  # nothing was half-written while down
            r = admin.put(f"/v1/customers/{customer}/endpoints/s3?verify=false", json=endpoint)
            assert r.status_code == 201, r.text
            lines = make_lines("back", 100)
            r = admin.post(f"/v1/ingest/{customer}/s3", content=body_of(lines))
            assert r.status_code == 202, r.text
            want = set(lines)
            wait_for(lambda: want <= set(bucket_content(emulator, role.bucket).lines), timeout=120)
        assert serve.terminate() == 0
    finally:
        cluster.stop()
