"""`logferry role check` against roles made by `role create` and deliberately broken ones."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aws_helpers import REGION_DISABLED_BODY, canned_server, free_port, make_s3_role
from logferry.aws.clients import AwsClients
from logferry.aws.names import parse_stream_arn
from logferry.aws.policies import (
    S3Destination,
    kinesis_permission_policy,
    s3_permission_policy,
    trust_policy,
)
from logferry.aws.provision import RoleRequest, provision_role
from logferry.aws.role_check import KinesisTarget, S3Target, check_role
from logferry.aws.sts_broker import CredentialBroker
from logferry.cli import app
from logferry.local.emulator import Emulator

EXT = "cust-42"


def _broker(emulator: Emulator, regions: dict[str, str] | None = None) -> CredentialBroker:
    endpoints = regions or {"us-east-1": emulator.url}
    return CredentialBroker(
        vendor_name="acme-cdn",
        vendor_account_id=emulator.vendor.account_id,
        regions=list(endpoints),
        sts_endpoints=endpoints,
        target=emulator.target,
        vendor_credentials=emulator.vendor.credentials(),
    )


def _status(report, name: str) -> str:
    return next(c.status for c in report.checks if c.name == name)


def _created_s3_role(emulator: Emulator, unique, prefix: str = "cdn/") -> tuple[str, str]:
    bucket = unique("bkt")
    emulator.client("s3").create_bucket(Bucket=bucket)
    request = RoleRequest(
        dest=S3Destination(bucket=bucket, prefix=prefix),
        role_name=unique("role"),
        external_id=EXT,
        policy_name=unique("policy"),
        vendor_account=emulator.vendor.account_id,
    )
    result = provision_role(AwsClients(emulator.customer.credentials(), emulator.target), request)
    return result.role_arn, bucket


def test_role_from_role_create_passes_and_leaves_nothing(emulator: Emulator, unique) -> None:
    role, bucket = _created_s3_role(emulator, unique)
    report = check_role(
        broker=_broker(emulator), role_arn=role, external_id=EXT, target=S3Target(bucket, "cdn/")
    )
    assert report.ok, report.as_json()
    assert {c.status for c in report.checks} == {"pass"}
    assert _status(report, "external-id required") == "pass"
    uploads = emulator.client("s3").list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads")
    assert not emulator.client("s3").list_objects_v2(Bucket=bucket).get("Contents")


def test_wrong_external_id_fails_with_reason(emulator: Emulator, unique) -> None:
    role, bucket = _created_s3_role(emulator, unique)
    report = check_role(
        broker=_broker(emulator), role_arn=role, external_id="not-it", target=S3Target(bucket)
    )
    assert not report.ok
    check = next(c for c in report.checks if c.name == "assume-role us-east-1")
    assert check.status == "fail" and "AccessDenied" in check.detail
    assert "'not-it'" in check.detail and emulator.vendor.account_id in check.detail


def test_trust_without_external_id_condition_fails(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    trust = trust_policy("s3", EXT, emulator.vendor.account_id)
    del trust["Statement"]["Condition"]  # type: ignore[index, misc]
    role = make_s3_role(emulator, unique("role"), bucket, EXT, trust=trust)
    report = check_role(
        broker=_broker(emulator), role_arn=role, external_id=EXT, target=S3Target(bucket)
    )
    assert not report.ok
    check = next(c for c in report.checks if c.name == "external-id required")
    assert check.status == "fail" and "confused-deputy" in check.detail
    assert "sts:ExternalId" in str(check.fix)


def test_missing_abort_permission_is_named(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    permission = s3_permission_policy(bucket)
    permission["Statement"]["Action"] = ["s3:PutObject"]  # type: ignore[index]
    role = make_s3_role(emulator, unique("role"), bucket, EXT, permission=permission)
    report = check_role(
        broker=_broker(emulator), role_arn=role, external_id=EXT, target=S3Target(bucket)
    )
    assert not report.ok
    check = next(c for c in report.checks if c.name == "s3 abort")
    assert "s3:AbortMultipartUpload" in check.detail and "abort-multipart-upload" in str(check.fix)


def test_policy_for_another_bucket_fails(emulator: Emulator, unique) -> None:
    bucket, other = unique("bkt"), unique("other")
    emulator.client("s3").create_bucket(Bucket=other)
    role = make_s3_role(
        emulator, unique("role"), bucket, EXT, permission=s3_permission_policy(other)
    )
    report = check_role(
        broker=_broker(emulator), role_arn=role, external_id=EXT, target=S3Target(bucket)
    )
    check = next(c for c in report.checks if c.name == "s3 write")
    assert check.status == "fail" and "denied" in check.detail
    assert f"s3:PutObject on arn:aws:s3:::{bucket}/*" in str(check.fix)


def test_read_access_is_a_warning_not_a_failure(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    permission = s3_permission_policy(bucket)
    permission["Statement"]["Action"] = [  # type: ignore[index]
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:GetObject",
    ]
    role = make_s3_role(emulator, unique("role"), bucket, EXT, permission=permission)
    report = check_role(
        broker=_broker(emulator), role_arn=role, external_id=EXT, target=S3Target(bucket)
    )
    assert report.ok
    check = next(c for c in report.checks if c.name == "least privilege")
    assert check.status == "warn" and "s3:GetObject" in check.detail


def _kinesis_role(emulator: Emulator, unique, actions: list[str]) -> tuple[str, str]:
    name = unique("stream")
    kinesis = emulator.client("kinesis")
    kinesis.create_stream(StreamName=name, ShardCount=2)
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    iam = emulator.client("iam")
    role = unique("role")
    role_arn = iam.create_role(
        RoleName=role,
        AssumeRolePolicyDocument=json.dumps(
            trust_policy("kinesis", EXT, emulator.vendor.account_id)
        ),
    )["Role"]["Arn"]
    permission = kinesis_permission_policy(parse_stream_arn(arn))
    permission["Statement"]["Action"] = actions  # type: ignore[index]
    iam.put_role_policy(RoleName=role, PolicyName="k", PolicyDocument=json.dumps(permission))
    return role_arn, arn


def test_kinesis_role_passes_and_missing_list_shards_is_named(emulator: Emulator, unique) -> None:
    role, stream = _kinesis_role(emulator, unique, ["kinesis:PutRecords", "kinesis:ListShards"])
    target = KinesisTarget(parse_stream_arn(stream))
    report = check_role(
        broker=_broker(emulator),
        role_arn=role,
        external_id=EXT,
        target=target,
        put_test_record=True,
    )
    assert report.ok and {c.status for c in report.checks} == {"pass"}, report.as_json()

    role, stream = _kinesis_role(emulator, unique, ["kinesis:PutRecords"])
    report = check_role(
        broker=_broker(emulator),
        role_arn=role,
        external_id=EXT,
        target=KinesisTarget(parse_stream_arn(stream)),
    )
    check = next(c for c in report.checks if c.name == "kinesis list-shards")
    assert check.status == "fail" and "kinesis:ListShards" in str(check.fix)


@pytest.fixture
def vendor_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in emulator.vendor.env(emulator.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_cli_reports_each_region_and_exit_codes(emulator: Emulator, unique, vendor_env) -> None:
    role, bucket = _created_s3_role(emulator, unique)
    dead = f"http://127.0.0.1:{free_port()}"
    runner = CliRunner()
    with canned_server(403, REGION_DISABLED_BODY) as disabled:
        args = [
            "role",
            "check",
            "--role-arn",
            role,
            "--external-id",
            EXT,
            "--bucket",
            bucket,
            "--prefix",
            "cdn/",
            "--vendor-account",
            emulator.vendor.account_id,
            "--endpoint-url",
            emulator.url,
            "--sts-region",
            "us-east-1",
            "--sts-region",
            "us-east-2",
            "--sts-region",
            "us-west-1",
            "--sts-endpoint",
            f"us-east-1={emulator.url}",
            "--sts-endpoint",
            f"us-east-2={dead}",
            "--sts-endpoint",
            f"us-west-1={disabled}",
            "--json",
        ]
        result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["assume-role us-east-1"]["status"] == "pass"
    assert by_name["assume-role us-east-2"]["status"] == "warn"
    assert by_name["assume-role us-west-1"]["status"] == "fail"
    assert "activate STS in us-west-1" in by_name["assume-role us-west-1"]["fix"]
    assert by_name["s3 write"]["status"] == "pass"

    ok = runner.invoke(
        app,
        [*args[:14], "--sts-region", "us-east-1", "--sts-endpoint", f"us-east-1={emulator.url}"],
    )
    assert ok.exit_code == 0, ok.output
    assert "role OK" in ok.stdout


def test_cli_invalid_inputs_name_the_flag(vendor_env) -> None:
    runner = CliRunner()
    base = ["role", "check", "--external-id", EXT, "--bucket", "my-logs"]
    bad_arn = runner.invoke(app, [*base, "--role-arn", "not-an-arn"])
    assert bad_arn.exit_code == 2 and "--role-arn" in bad_arn.output
    bad_endpoint = runner.invoke(
        app, [*base, "--role-arn", "arn:aws:iam::123456789012:role/r", "--sts-endpoint", "nope"]
    )
    assert bad_endpoint.exit_code == 2 and "--sts-endpoint" in bad_endpoint.output


def test_cli_probe_sends_the_endpoints_headers(emulator: Emulator, unique, vendor_env) -> None:
    """`--redundancy`, `--server-side-encryption` and `--acl` go on the write probe, so the
    doctor proves what delivery will send (KMS and ACL permissions included)."""
    from logferry.local.latency_proxy import (
        ProxyConfig,
        ProxyRequest,
        ProxyResponse,
        latency_proxy,
    )

    role, bucket = _created_s3_role(emulator, unique)
    creates: list[dict[str, str]] = []

    async def record(request: ProxyRequest, forward):  # type: ignore[no-untyped-def]
        if request.service == "s3" and request.method == "POST" and "cdn/" in request.path:
            creates.append({k.lower(): v for k, v in request.headers})
        response: ProxyResponse = await forward()
        return response

    runner = CliRunner()
    with latency_proxy(emulator.url, ProxyConfig(), middlewares=[record]) as proxy:
        args = [
            "role", "check", "--role-arn", role, "--external-id", EXT, "--bucket", bucket,
            "--prefix", "cdn/", "--vendor-account", emulator.vendor.account_id,
            "--endpoint-url", proxy.url, "--sts-region", "us-east-1",
            "--sts-endpoint", f"us-east-1={emulator.url}", "--json",
            "--redundancy", "standard_ia", "--server-side-encryption", "AES256",
            "--acl", "bucket-owner-full-control",
        ]  # fmt: skip
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (probe,) = creates
    assert probe["x-amz-storage-class"] == "STANDARD_IA"
    assert probe["x-amz-server-side-encryption"] == "AES256"
    assert probe["x-amz-acl"] == "bucket-owner-full-control"
    write = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "s3 write")
    assert "with ACL, ServerSideEncryption, StorageClass" in write["detail"]

    bad = runner.invoke(app, [*args[:-6], "--redundancy", "platinum"])
    assert bad.exit_code == 2 and "--redundancy" in bad.output
    no_key = runner.invoke(app, [*args[:-6], "--server-side-encryption", "aws:kms"])
    assert no_key.exit_code == 2
    assert json.loads(no_key.output)["where"] == "--server-side-encryption-kms-key-id"
    kinesis = runner.invoke(
        app,
        [
            "role", "check", "--role-arn", role, "--external-id", EXT,
            "--stream-arn", "arn:aws:kinesis:us-east-1:123456789012:stream/logs",
            "--acl", "private",
        ],
    )  # fmt: skip
    assert kinesis.exit_code == 2 and "--acl" in kinesis.output and "S3" in kinesis.output
