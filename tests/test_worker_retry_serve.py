"""The worker's retry policy at production settings, through a real `logferry serve`.

A destination that fails transiently (S3 answers 503 to every write) is retried with
`RETRY_POLICY` and delivers once S3 is back; one whose role is denied backs off with the slower
`SETUP_RETRY_POLICY` and delivers at once after a successful `verify`. Both policies are the
production objects (`sinks.base`), never test settings.

No pass/fail threshold depends on the box being fast: the checks are lower bounds the policy
guarantees (a retry never comes sooner than half its ceiling: "equal" jitter), which a slow box
only makes easier to meet, and counts. The one exception is named where it is made.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaos.harness import gated_proxy
from logferry.backoff import Backoff
from logferry.local.emulator import Emulator
from logferry.sinks.base import RETRY_POLICY, SETUP_RETRY_POLICY
from s3_helpers import make_s3_role, read_objects, set_policy_actions
from service_helpers import ServeProcess, base_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

S3_WRITES = frozenset(
    {
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    }
)
LINES = [f"retry-line-{i}".encode() for i in range(50)]


def _seconds(value: Any) -> float:
    """A status time (epoch seconds or RFC 3339) as epoch seconds."""
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _status(admin: httpx.Client, customer: str) -> dict[str, Any]:
    answer = admin.get(f"/v1/customers/{customer}/endpoints/s3/status")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _failures(admin: httpx.Client, customer: str, count: int) -> list[dict[str, Any]]:
    """Wait for `count` recorded delivery failures; oldest first."""
    status = wait_for(
        lambda: (s := _status(admin, customer)) and len(s["errors"]) >= count and s, timeout=120
    )
    return sorted(status["errors"], key=lambda e: _seconds(e["time"]))


def _assert_spaced_by(errors: list[dict[str, Any]], policy: Backoff) -> None:
    """Failure n+1 came no sooner than the policy's shortest wait after failure n (the attempt
    itself only adds to the gap)."""
    times = [_seconds(e["time"]) for e in errors]
    for n, (before, after) in enumerate(itertools.pairwise(times)):
        assert after - before >= policy.ceiling(n) / 2 - 0.05, (n, times)


def _endpoint(admin: httpx.Client, customer: str, bucket: str, role_arn: str) -> None:
    assert admin.put(f"/v1/customers/{customer}", json={"external_id": customer}).status_code in (
        200,
        201,
    )
    body = {"type": "s3", "bucket_name": bucket, "iam_role": role_arn, "period": 1}
    put = admin.put(f"/v1/customers/{customer}/endpoints/s3?verify=false", json=body)
    assert put.status_code == 201, put.text


def _ingest(admin: httpx.Client, customer: str) -> None:
    answer = admin.post(f"/v1/ingest/{customer}/s3", content=b"\n".join(LINES) + b"\n")
    assert answer.status_code == 202, answer.text


def _delivered_lines(emulator: Emulator, bucket: str) -> list[bytes]:
    return sorted(
        line for obj in read_objects(emulator, bucket).values() for line in obj.body.splitlines()
    )


def test_transient_failures_are_retried_with_the_retry_policy_and_deliver(
    emulator: Emulator, unique: Any, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("transient")
    role = make_s3_role(emulator, unique, external_id=customer)
    with gated_proxy(emulator) as (proxy, gate):
        gate.refusing = S3_WRITES  # S3 answers 503 ServiceUnavailable to every write
        config = base_config(
            emulator,
            tmp_path / "spool",
            spool=spool_backend,
            vendor={"sts_endpoints": {"us-east-1": proxy.url, "us-west-2": proxy.url}},
            aws={"endpoint_url": proxy.url},
            server={"idle_flush_seconds": 1},
        )
        serve = ServeProcess(emulator, config, tmp_path).start()
        try:
            with serve.admin() as admin:
                _endpoint(admin, customer, role.bucket, role.role_arn)
                _ingest(admin, customer)  # the only wake-up: nothing else cuts a wait short
                errors = _failures(admin, customer, 4)
                assert {e["code"] for e in errors} == {"ServiceUnavailable"}
                _assert_spaced_by(errors, RETRY_POLICY)
                status = _status(admin, customer)
                assert status["state"] == "retrying" and status["lines"]["delivered"] == 0
                refused = gate.refused
                gate.refusing = frozenset()  # S3 is back
                wait_for(
                    lambda: _status(admin, customer)["lines"]["delivered"] == len(LINES),
                    timeout=120,
                )
                assert _status(admin, customer)["state"] in ("active", "idle")
        finally:
            serve.terminate()
    assert refused >= 4  # every failure was a real 503 from the proxy, not a local error
    assert _delivered_lines(emulator, role.bucket) == sorted(LINES)  # once each


def test_denied_role_backs_off_slowly_and_delivers_at_once_after_verify(
    emulator: Emulator, unique: Any, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    customer = unique("denied")
    # The permission policy lacks s3:PutObject: the write probe's CreateMultipartUpload is denied.
    role = make_s3_role(emulator, unique, external_id=customer, actions=["s3:AbortMultipartUpload"])
    config = base_config(
        emulator, tmp_path / "spool", spool=spool_backend, server={"idle_flush_seconds": 1}
    )
    serve = ServeProcess(emulator, config, tmp_path).start()
    try:
        with serve.admin() as admin:
            _endpoint(admin, customer, role.bucket, role.role_arn)
            _ingest(admin, customer)
            failures = 5
            errors = _failures(admin, customer, failures)
            assert {e["code"] for e in errors} == {"AccessDenied"}
            assert all("s3:PutObject" in str(e["fix"]) for e in errors)
            _assert_spaced_by(errors, SETUP_RETRY_POLICY)
            status = _status(admin, customer)
            assert status["state"] == "error" and status["lines"]["delivered"] == 0
            last_failure = _seconds(errors[-1]["time"])

            set_policy_actions(emulator, role)  # the customer fixes the policy...
            verify = admin.post(f"/v1/customers/{customer}/endpoints/s3/verify")
            assert verify.status_code == 200 and verify.json()["ok"], verify.text  # ...and verifies
            status = wait_for(
                lambda: (s := _status(admin, customer))["lines"]["delivered"] == len(LINES) and s,
                timeout=120,
            )
            # "At once": delivered before the policy's earliest next attempt (half of the 32-s
            # ceiling that follows the 5th failure). The one bound a slow box could miss: verify
            # plus one delivery taking over 16 s.
            earliest_retry = last_failure + SETUP_RETRY_POLICY.ceiling(failures - 1) / 2
            assert _seconds(status["last_success"]) < earliest_retry
            assert len(status["errors"]) == failures  # no failed attempt after the fix
    finally:
        serve.terminate()
    assert _delivered_lines(emulator, role.bucket) == sorted(LINES)
