"""A customer without its own quota gets `spool.default_customer_share` of the spool (issue 27).

Through a real `logferry serve`: customer A has no `spool_max_bytes` and a role that trusts
another external ID, so nothing of A's ever drains. A must be refused with 429 + Retry-After once
it holds its default share (a quarter of `spool.max_bytes`), long before the shared spool is full,
while customer B (no own quota either, working role) still gets 202 and its lines are delivered.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from logferry.local.emulator import Emulator
from logferry.service.config import SpoolConfig
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


def _endpoint(role: Any) -> dict[str, Any]:
    return {
        "type": "s3",
        "name": "s3",
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "path": "logs/",
        "period": 1,
    }


def _bucket_lines(emulator: Emulator, bucket: str) -> list[bytes]:
    lines: list[bytes] = []
    for key, obj in read_objects(emulator, bucket).items():
        body = gzip.decompress(obj.body) if key.endswith(".gz") else obj.body
        lines += body.splitlines()
    return lines


def test_broken_customer_is_refused_at_its_default_share(
    emulator: Emulator, unique: Any, tmp_path: Path
) -> None:
    a, b = unique("cust-a"), unique("cust-b")
    broken = make_s3_role(emulator, unique, external_id=unique("not-a"))  # never drains
    working = make_s3_role(emulator, unique, external_id=b)
    config = base_config(
        emulator,
        tmp_path / "spool",
        spool={"dir": str(tmp_path / "spool"), "max_bytes": "8MiB", "segment_bytes": "256KiB"},
        customers=[
            {"id": a, "token_env": "TOKEN_A", "endpoints": [_endpoint(broken)]},
            {"id": b, "token_env": "TOKEN_B", "endpoints": [_endpoint(working)]},
        ],
    )
    env = {"TOKEN_A": "token-of-customer-a-000000000000", "TOKEN_B": "token-of-customer-b-1111"}
    serve = ServeProcess(emulator, config, tmp_path, env=env).start()
    body = b"".join(
        b"a line of customer A number %06d padded to 64 bytes....\n" % i for i in range(2000)
    )
    accepted = 0
    refused = None
    with serve.as_token(env["TOKEN_A"]) as client_a:
        for _ in range(200):  # 200 x 128 KB = 25 MB: far more than the whole spool
            response = client_a.post(f"/v1/ingest/{a}/s3", content=body)
            if response.status_code != 202:
                refused = response
                break
            accepted += len(body)
    assert refused is not None, "customer A was never refused"
    assert refused.status_code == 429, (refused.status_code, refused.text)
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert "spool.default_customer_share" in error and a in error, error
    # A's share is 2 MiB of the 8 MiB spool: refused at it, not when the spool is full.
    assert 1 * MIB <= accepted <= 2 * MIB, accepted
    with serve.as_token(env["TOKEN_B"]) as client_b:
        for i in range(3):
            response = client_b.post(f"/v1/ingest/{b}/s3", content=b"b-line-%d\n" % i)
            assert response.status_code == 202, response.text
    want = [b"b-line-0", b"b-line-1", b"b-line-2"]
    # Three requests may land in more than one object: wait for all of them, not the first.
    got = wait_for(
        lambda: (lines := sorted(_bucket_lines(emulator, working.bucket))) == want and lines
    )
    assert got == want
    with serve.as_token(env["TOKEN_A"]) as client_a:  # still refused: nothing drained
        assert client_a.post(f"/v1/ingest/{a}/s3", content=body).status_code == 429
    with serve.admin() as admin:  # an own quota replaces the default share
        raised = admin.put(f"/v1/customers/{a}", json={"spool_max_bytes": "6MiB"})
        assert raised.status_code == 200, raised.text
    with serve.as_token(env["TOKEN_A"]) as client_a:
        assert client_a.post(f"/v1/ingest/{a}/s3", content=body).status_code == 202
    assert serve.terminate() == 0


@pytest.mark.parametrize("share", [0, -0.5, 1.5, "half"])
def test_default_customer_share_must_be_a_fraction(share: object) -> None:
    with pytest.raises(ValidationError, match="default_customer_share"):
        SpoolConfig(default_customer_share=share)  # type: ignore[arg-type]


def test_default_customer_quota_is_the_share_of_max_bytes() -> None:
    assert SpoolConfig(max_bytes="8MiB").default_customer_quota() == 2 * MIB
    assert SpoolConfig(max_bytes="8MiB", default_customer_share=0.5).default_customer_quota() == (
        4 * MIB
    )
    assert SpoolConfig(default_customer_share=1).default_customer_quota() is None
