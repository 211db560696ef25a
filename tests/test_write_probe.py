"""The one S3 write probe (`aws/write_probe.py`) that `role check` and the S3 sink share, run as
the customer's role against the emulator: it leaves nothing open, even when the step between
its two calls fails, and its errors name the step and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from aws_helpers import make_s3_role
from logferry.aws.policies import s3_permission_policy
from logferry.aws.sts_broker import CredentialBroker
from logferry.aws.write_probe import S3Target, probe_s3_write, s3_call, was_answered, was_denied
from logferry.errors import SetupError
from logferry.local.emulator import Emulator

EXT = "cust-probe"


def _s3_as_role(emulator: Emulator, role: str) -> Any:
    broker = CredentialBroker(
        vendor_account_id=emulator.vendor.account_id,
        regions=["us-east-1"],
        sts_endpoints={"us-east-1": emulator.url},
        target=emulator.target,
        vendor_credentials=emulator.vendor.credentials(),
    )
    return broker.clients(role, EXT, customer_id=EXT).client("s3", "us-east-1")


def _open_uploads(emulator: Emulator, bucket: str) -> list[dict[str, Any]]:
    return emulator.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_probe_creates_and_aborts_under_the_prefix(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    role = make_s3_role(emulator, unique("role"), bucket, EXT, prefix="cdn/")
    seen: list[str] = []
    upload_id = probe_s3_write(
        s3_call(_s3_as_role(emulator, role)),
        S3Target(bucket, "cdn/"),
        "cdn/probe-1.probe",
        created=seen.append,
    )
    assert seen == [upload_id] and upload_id
    assert _open_uploads(emulator, bucket) == []


def test_a_failing_step_between_the_calls_still_aborts(emulator: Emulator, unique) -> None:
    """The sink notes the upload ID on disk between the calls; if that fails (full disk), the
    upload must not stay open with nobody able to name it."""
    bucket = unique("bkt")
    role = make_s3_role(emulator, unique("role"), bucket, EXT)

    def disk_full(upload_id: str) -> None:
        assert _open_uploads(emulator, bucket)[0]["UploadId"] == upload_id  # really open
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        probe_s3_write(
            s3_call(_s3_as_role(emulator, role)), S3Target(bucket), "x.probe", created=disk_full
        )
    assert _open_uploads(emulator, bucket) == []


def test_denied_create_names_every_permission_the_headers_need(emulator: Emulator, unique) -> None:
    bucket, other = unique("bkt"), unique("other")
    emulator.client("s3").create_bucket(Bucket=other)
    role = make_s3_role(
        emulator, unique("role"), bucket, EXT, permission=s3_permission_policy(other)
    )
    target = S3Target(bucket, "logs/", put_args=(("ACL", "bucket-owner-full-control"),))
    with pytest.raises(SetupError) as info:
        probe_s3_write(s3_call(_s3_as_role(emulator, role)), target, "logs/p.probe")
    error = info.value
    assert error.info.operation == "CreateMultipartUpload"
    assert was_answered(error) and was_denied(error)
    assert f"s3:PutObject on arn:aws:s3:::{bucket}/logs/*" in str(error.fix)
    assert "s3:PutObjectAcl" in str(error.fix)


def test_denied_abort_says_how_to_remove_the_probe(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    permission = s3_permission_policy(bucket)
    permission["Statement"]["Action"] = ["s3:PutObject"]  # type: ignore[index]
    role = make_s3_role(emulator, unique("role"), bucket, EXT, permission=permission)
    with pytest.raises(SetupError) as info:
        probe_s3_write(s3_call(_s3_as_role(emulator, role)), S3Target(bucket), "p.probe")
    error = info.value
    assert error.info.operation == "AbortMultipartUpload" and was_denied(error)
    (left,) = _open_uploads(emulator, bucket)
    assert f"--upload-id {left['UploadId']}" in str(error.fix)
    assert "s3:AbortMultipartUpload" in str(error.fix)
    emulator.client("s3").abort_multipart_upload(
        Bucket=bucket, Key="p.probe", UploadId=left["UploadId"]
    )
