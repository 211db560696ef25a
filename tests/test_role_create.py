"""`logferry role create` against the emulator (IAM enforcement on, trust policies evaluated).

Every test checks what AWS would let the vendor do afterwards, not just which calls were made.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from logferry.aws.names import FASTLY_ACCOUNT_ID, parse_stream_arn
from logferry.aws.policies import KinesisDestination, S3Destination
from logferry.aws.provision import (
    LIFECYCLE_RULE_ID,
    RoleProvisioner,
    RoleRequest,
    provision_role,
)
from logferry.cli import app
from logferry.errors import SetupError
from logferry.local.emulator import Emulator, LocalAccount

runner = CliRunner()


def create(emulator: Emulator, *args: str, account: LocalAccount | None = None) -> Any:
    """Run `logferry role create ... --json` as the customer admin; returns (exit, document)."""
    acct = account or emulator.customer
    env = {
        "AWS_ACCESS_KEY_ID": acct.access_key_id,
        "AWS_SECRET_ACCESS_KEY": acct.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_PROFILE": None,
        "AWS_SESSION_TOKEN": None,
    }
    result = runner.invoke(
        app, ["role", "create", *args, "--endpoint-url", emulator.url, "--json"], env=env
    )
    return result.exit_code, json.loads(result.stdout)


def assume(emulator: Emulator, role_arn: str, external_id: str | None) -> dict[str, str]:
    sts = emulator.client("sts", emulator.vendor)
    kwargs: dict[str, str] = {"RoleArn": role_arn, "RoleSessionName": "delivery"}
    if external_id is not None:
        kwargs["ExternalId"] = external_id
    return sts.assume_role(**kwargs)["Credentials"]


def as_role(emulator: Emulator, creds: dict[str, str], service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=emulator.url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def denied(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


def s3_request(emulator: Emulator, bucket: str, prefix: str, role: str, **kw: Any) -> RoleRequest:
    return RoleRequest(
        dest=S3Destination(bucket, prefix),
        role_name=role,
        external_id=kw.pop("external_id", "ext-1"),
        policy_name=kw.pop("policy_name", f"{role}-policy"),
        **kw,
    )


# --- S3 -----------------------------------------------------------------------------------------


def test_s3_role_admits_only_the_vendor_with_the_external_id(emulator: Emulator, unique) -> None:
    bucket, other, role = unique("bkt"), unique("bkt"), unique("role")
    s3 = emulator.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=other)

    code, doc = create(
        emulator, "--bucket", bucket, "--prefix", "logs/", "--external-id", "ext-1",
        "--role-name", role, "--abort-incomplete-multipart-days", "2",
    )  # fmt: skip
    assert code == 0, doc
    assert doc["role_arn"] == f"arn:aws:iam::{emulator.customer.account_id}:role/{role}"
    assert [c["action"] for c in doc["changes"]] == [
        "create-role",
        "create-policy",
        "attach-policy",
        "put-bucket-lifecycle",
    ]
    assert "us-east-2, us-west-1, us-west-2" in doc["next_step"]

    assert denied(lambda: assume(emulator, doc["role_arn"], "ext-2")) == "AccessDenied"
    assert denied(lambda: assume(emulator, doc["role_arn"], None)) == "AccessDenied"
    stranger = emulator.add_account("246813579024")
    sts = emulator.client("sts", stranger)
    call = lambda: sts.assume_role(  # noqa: E731
        RoleArn=doc["role_arn"], RoleSessionName="stranger", ExternalId="ext-1"
    )
    assert denied(call) == "AccessDenied"

    role_s3 = as_role(emulator, assume(emulator, doc["role_arn"], "ext-1"), "s3")
    role_s3.put_object(Bucket=bucket, Key="logs/a.log", Body=b"line\n")
    upload = role_s3.create_multipart_upload(Bucket=bucket, Key="logs/big.log")
    role_s3.abort_multipart_upload(Bucket=bucket, Key="logs/big.log", UploadId=upload["UploadId"])
    assert s3.get_object(Bucket=bucket, Key="logs/a.log")["Body"].read() == b"line\n"
    assert denied(lambda: role_s3.get_object(Bucket=bucket, Key="logs/a.log")) == "AccessDenied"
    assert denied(lambda: role_s3.list_objects_v2(Bucket=bucket)) == "AccessDenied"
    assert denied(lambda: role_s3.put_object(Bucket=bucket, Key="x.log", Body=b"")) == (
        "AccessDenied"
    )
    assert denied(lambda: role_s3.put_object(Bucket=other, Key="logs/a", Body=b"")) == (
        "AccessDenied"
    )

    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [
        (r["ID"], r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]) for r in rules
    ] == [(LIFECYCLE_RULE_ID, 2)]


def test_create_twice_converges_with_the_same_arn(emulator: Emulator, unique) -> None:
    bucket, role = unique("bkt"), unique("role")
    emulator.client("s3").create_bucket(Bucket=bucket)
    args = ["--bucket", bucket, "--external-id", "ext-1", "--role-name", role]
    first_code, first = create(emulator, *args)
    second_code, second = create(emulator, *args)
    assert (first_code, second_code) == (0, 0)
    assert second["role_arn"] == first["role_arn"]
    assert second["policy_arn"] == first["policy_arn"]
    assert second["changes"] == []
    versions = emulator.client("iam").list_policy_versions(PolicyArn=first["policy_arn"])
    assert len(versions["Versions"]) == 1


def test_prefix_change_makes_a_new_default_version(emulator: Emulator, unique) -> None:
    bucket, role = unique("bkt"), unique("role")
    emulator.client("s3").create_bucket(Bucket=bucket)
    base = ["--bucket", bucket, "--external-id", "ext-1", "--role-name", role]
    create(emulator, *base, "--prefix", "old/")
    code, doc = create(emulator, *base, "--prefix", "new/")
    assert code == 0
    assert [c["action"] for c in doc["changes"]] == ["create-policy-version"]

    iam = emulator.client("iam")
    versions = iam.list_policy_versions(PolicyArn=doc["policy_arn"])["Versions"]
    default = [v["VersionId"] for v in versions if v["IsDefaultVersion"]]
    assert (len(versions), default) == (2, ["v2"])
    role_s3 = as_role(emulator, assume(emulator, doc["role_arn"], "ext-1"), "s3")
    role_s3.put_object(Bucket=bucket, Key="new/a.log", Body=b"x")
    assert denied(lambda: role_s3.put_object(Bucket=bucket, Key="old/a.log", Body=b"x")) == (
        "AccessDenied"
    )


def test_sixth_version_prunes_the_oldest_non_default(emulator: Emulator, unique) -> None:
    bucket, role = unique("bkt"), unique("role")
    emulator.client("s3").create_bucket(Bucket=bucket)
    clients = emulator.clients()
    for n in range(1, 6):
        provision_role(clients, s3_request(emulator, bucket, f"p{n}/", role))
    iam = emulator.client("iam")
    result = provision_role(clients, s3_request(emulator, bucket, "p6/", role))
    assert [c.action for c in result.changes] == ["delete-policy-version", "create-policy-version"]
    assert "v1" in result.changes[0].detail
    versions = iam.list_policy_versions(PolicyArn=result.policy_arn)["Versions"]
    assert sorted(v["VersionId"] for v in versions) == ["v2", "v3", "v4", "v5", "v6"]
    default = iam.get_policy(PolicyArn=result.policy_arn)["Policy"]["DefaultVersionId"]
    assert default == "v6"
    doc = iam.get_policy_version(PolicyArn=result.policy_arn, VersionId="v6")["PolicyVersion"]
    assert "p6/*" in json.dumps(doc["Document"])


def test_lifecycle_merge_keeps_existing_rules(emulator: Emulator, unique) -> None:
    bucket, role = unique("bkt"), unique("role")
    s3 = emulator.client("s3")
    s3.create_bucket(Bucket=bucket)
    theirs = {
        "ID": "expire-tmp",
        "Filter": {"Prefix": "tmp/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [theirs]})
    clients = emulator.clients()
    first = provision_role(
        clients, s3_request(emulator, bucket, "logs/", role, abort_multipart_days=7)
    )
    assert "keeps 1 other rule" in first.changes[-1].detail

    def rules() -> dict[str, Any]:
        got = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        return {r["ID"]: r for r in got}

    now = rules()
    assert set(now) == {"expire-tmp", LIFECYCLE_RULE_ID}
    assert now["expire-tmp"]["Expiration"] == {"Days": 30}
    assert now[LIFECYCLE_RULE_ID]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert now[LIFECYCLE_RULE_ID]["Filter"] == {"Prefix": "logs/"}

    again = provision_role(
        clients, s3_request(emulator, bucket, "logs/", role, abort_multipart_days=7)
    )
    assert again.changes == []
    provision_role(clients, s3_request(emulator, bucket, "logs/", role, abort_multipart_days=3))
    now = rules()
    assert set(now) == {"expire-tmp", LIFECYCLE_RULE_ID}
    assert now[LIFECYCLE_RULE_ID]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}


def test_dry_run_writes_nothing(emulator: Emulator, unique) -> None:
    bucket, role = unique("bkt"), unique("role")
    s3 = emulator.client("s3")
    s3.create_bucket(Bucket=bucket)
    code, doc = create(
        emulator, "--bucket", bucket, "--external-id", "ext-1", "--role-name", role,
        "--abort-incomplete-multipart-days", "1", "--dry-run",
    )  # fmt: skip
    assert code == 0
    assert doc["dry_run"] is True
    assert [c["action"] for c in doc["changes"]] == [
        "create-role",
        "create-policy",
        "attach-policy",
        "put-bucket-lifecycle",
    ]
    iam = emulator.client("iam")
    assert denied(lambda: iam.get_role(RoleName=role)) == "NoSuchEntity"
    assert denied(lambda: iam.get_policy(PolicyArn=doc["policy_arn"])) == "NoSuchEntity"
    assert denied(lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)) == (
        "NoSuchLifecycleConfiguration"
    )


def test_human_output_prints_arn_and_next_step(emulator: Emulator, unique) -> None:
    bucket, role = unique("bkt"), unique("role")
    emulator.client("s3").create_bucket(Bucket=bucket)
    acct = emulator.customer
    result = runner.invoke(
        app,
        ["role", "create", "--bucket", bucket, "--external-id", "ext-1", "--role-name", role,
         "--endpoint-url", emulator.url],
        env={"AWS_ACCESS_KEY_ID": acct.access_key_id,
             "AWS_SECRET_ACCESS_KEY": acct.secret_access_key,
             "AWS_CONFIG_FILE": "/nonexistent", "AWS_PROFILE": None},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"arn:aws:iam::{acct.account_id}:role/{role}" in result.stdout
    assert "Next step" in result.stdout and "us-west-2" in result.stdout


# --- safety: order of writes, drift, partial failure --------------------------------------------


def test_open_trust_is_fixed_before_anything_else(emulator: Emulator, unique) -> None:
    """A role someone made without the ExternalId condition gets it back first."""
    bucket, role = unique("bkt"), unique("role")
    emulator.client("s3").create_bucket(Bucket=bucket)
    open_trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": FASTLY_ACCOUNT_ID},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam = emulator.client("iam")
    arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(open_trust))["Role"][
        "Arn"
    ]
    assert assume(emulator, arn, None)  # the confused-deputy hole is real before the fix
    result = provision_role(emulator.clients(), s3_request(emulator, bucket, "", role))
    assert result.role_arn == arn
    assert result.changes[0].action == "update-trust-policy"
    assert denied(lambda: assume(emulator, arn, None)) == "AccessDenied"
    assert assume(emulator, arn, "ext-1")


def test_crash_after_each_step_is_safe_and_a_rerun_completes(emulator: Emulator, unique) -> None:
    bucket = unique("bkt")
    emulator.client("s3").create_bucket(Bucket=bucket)
    clients = emulator.clients()
    for crash_after in range(1, 3):
        role = unique("role")
        request = s3_request(emulator, bucket, "logs/", role)
        provisioner = RoleProvisioner(clients, request)
        steps, _, role_arn, _ = provisioner.plan(provisioner.observe())
        for step in steps[:crash_after]:
            step.run()  # ... and then the process dies
        creds = assume(emulator, role_arn, "ext-1")  # trust is already the right one
        wrong = lambda arn=role_arn: assume(emulator, arn, "wrong")  # noqa: E731
        assert denied(wrong) == "AccessDenied"
        role_s3 = as_role(emulator, creds, "s3")
        put = lambda c=role_s3: c.put_object(Bucket=bucket, Key="logs/a", Body=b"")  # noqa: E731
        assert denied(put) == "AccessDenied"  # no permission before the attachment
        rerun = provision_role(clients, request)
        assert rerun.role_arn == role_arn
        assert [c.action for c in rerun.changes] == [s.change.action for s in steps[crash_after:]]
        as_role(emulator, assume(emulator, role_arn, "ext-1"), "s3").put_object(
            Bucket=bucket, Key="logs/a", Body=b""
        )


def test_other_attached_policies_are_reported(emulator: Emulator, unique) -> None:
    bucket, role = unique("bkt"), unique("role")
    emulator.client("s3").create_bucket(Bucket=bucket)
    clients = emulator.clients()
    provision_role(clients, s3_request(emulator, bucket, "", role))
    emulator.client("iam").put_role_policy(
        RoleName=role,
        PolicyName="extra",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                                     "Resource": "*"}]}
        ),
    )  # fmt: skip
    result = provision_role(clients, s3_request(emulator, bucket, "", role))
    assert result.changes == []
    assert any("extra (inline)" in w for w in result.warnings)


# --- AWS errors ---------------------------------------------------------------------------------


def test_access_denied_is_one_sentence_with_a_fix(emulator: Emulator, unique) -> None:
    """The vendor user may only call sts:AssumeRole: IAM reads are denied."""
    code, doc = create(
        emulator, "--bucket", unique("bkt"), "--external-id", "ext-1",
        "--role-name", unique("role"), account=emulator.vendor,
    )  # fmt: skip
    assert code == 1
    assert doc["code"] == "AccessDenied"
    assert "AWS denied iam:GetRole" in doc["error"]
    assert "--profile" in doc["fix"]


def test_missing_bucket_and_stream_are_setup_errors(emulator: Emulator, unique) -> None:
    code, doc = create(
        emulator, "--bucket", unique("nobkt"), "--external-id", "ext-1",
        "--role-name", unique("role"), "--abort-incomplete-multipart-days", "1",
    )  # fmt: skip
    assert (code, doc["code"]) == (1, "NoSuchBucket")
    assert "--bucket" in doc["fix"]
    missing = f"arn:aws:kinesis:us-east-1:{emulator.customer.account_id}:stream/{unique('nos')}"
    code, doc = create(
        emulator, "--stream-arn", missing, "--external-id", "ext-1",
        "--role-name", unique("role"), "--resource-policy",
    )  # fmt: skip
    assert code == 1
    assert "--stream-arn" in doc["fix"]


def test_resource_policy_needs_the_streams_account(emulator: Emulator, unique) -> None:
    foreign = "arn:aws:kinesis:us-east-1:999988887777:stream/theirs"
    code, doc = create(
        emulator, "--stream-arn", foreign, "--external-id", "ext-1",
        "--role-name", unique("role"), "--resource-policy",
    )  # fmt: skip
    assert code == 2
    assert doc["where"] == "--stream-arn"
    assert "999988887777" in doc["error"]


# --- Kinesis ------------------------------------------------------------------------------------


def _stream(emulator: Emulator, name: str) -> str:
    kinesis = emulator.client("kinesis")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    return str(summary["StreamARN"])


def test_kinesis_role_can_put_records_and_list_shards_only(emulator: Emulator, unique) -> None:
    stream_arn, other_arn, role = (
        _stream(emulator, unique("s")),
        _stream(emulator, unique("s")),
        unique("role"),
    )
    code, doc = create(
        emulator, "--stream-arn", stream_arn, "--external-id", "ext-k", "--role-name", role
    )
    assert code == 0, doc
    assert denied(lambda: assume(emulator, doc["role_arn"], "nope")) == "AccessDenied"
    kinesis = as_role(emulator, assume(emulator, doc["role_arn"], "ext-k"), "kinesis")
    assert len(kinesis.list_shards(StreamARN=stream_arn)["Shards"]) == 1
    put = kinesis.put_records(StreamARN=stream_arn, Records=[{"Data": b"l\n", "PartitionKey": "k"}])
    assert put["FailedRecordCount"] == 0
    call = lambda: kinesis.put_record(StreamARN=stream_arn, Data=b"x", PartitionKey="k")  # noqa: E731
    assert denied(call) == "AccessDeniedException"
    call = lambda: kinesis.put_records(  # noqa: E731
        StreamARN=other_arn, Records=[{"Data": b"x", "PartitionKey": "k"}]
    )
    assert denied(call) == "AccessDeniedException"
    again_code, again = create(
        emulator, "--stream-arn", stream_arn, "--external-id", "ext-k", "--role-name", role
    )
    assert (again_code, again["changes"], again["role_arn"]) == (0, [], doc["role_arn"])


def test_stream_resource_policy_is_merged(emulator: Emulator, unique) -> None:
    stream_arn, role = _stream(emulator, unique("s")), unique("role")
    kinesis = emulator.client("kinesis")
    reader = {
        "Sid": "Analytics",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{emulator.customer.account_id}:root"},
        "Action": "kinesis:GetRecords",
        "Resource": stream_arn,
    }
    kinesis.put_resource_policy(
        ResourceARN=stream_arn,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [reader]}),
    )
    request = RoleRequest(
        dest=KinesisDestination(parse_stream_arn(stream_arn)),
        role_name=role,
        external_id="ext-k",
        policy_name=f"{role}-policy",
        resource_policy=True,
    )
    result = provision_role(emulator.clients(), request)
    assert result.changes[-1].action == "put-stream-policy"
    stored = json.loads(kinesis.get_resource_policy(ResourceARN=stream_arn)["Policy"])
    by_sid = {s["Sid"]: s for s in stored["Statement"]}
    assert by_sid["Analytics"] == reader
    assert by_sid["FastlyWrite"]["Principal"]["AWS"] == [
        f"arn:aws:iam::{FASTLY_ACCOUNT_ID}:root",
        result.role_arn,
    ]
    assert provision_role(emulator.clients(), request).changes == []


def _guide_trust(sid: str, external_id: str) -> dict[str, Any]:
    """The trust policy of Fastly's guide, written out literally (not built by our code)."""
    return {
        "Version": "2012-10-17",
        "Statement": {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {"AWS": "717331877981"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
        },
    }


@pytest.mark.parametrize("kind", ["s3", "kinesis"])
def test_trust_written_is_the_guide_document(emulator: Emulator, unique, kind: str) -> None:
    role = unique("role")
    if kind == "s3":
        bucket = unique("bkt")
        emulator.client("s3").create_bucket(Bucket=bucket)
        target, sid = ["--bucket", bucket], "S3LoggingTrustPolicy"
    else:
        target, sid = ["--stream-arn", _stream(emulator, unique("s"))], "KinesisLoggingTrustPolicy"
    code, doc = create(emulator, *target, "--external-id", "ext-k", "--role-name", role)
    assert code == 0, doc
    stored = emulator.client("iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert stored == _guide_trust(sid, "ext-k")


class _Http:
    status_code = 400


def _reject_first_put(attempts: list[int]) -> Any:
    """A `before-call` hook answering the first PutResourcePolicy as AWS does for a principal it
    does not know yet (IAM is eventually consistent); later calls go to the emulator."""

    def hook(**_: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            error = {"Code": "InvalidArgumentException", "Message": "Invalid principal in policy"}
            return _Http(), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}
        return None

    return hook


@pytest.mark.parametrize("role_is_new", [True, False])
def test_stream_policy_waits_for_a_new_role_only(
    emulator: Emulator, unique, role_is_new: bool
) -> None:
    stream_arn, role = _stream(emulator, unique("s")), unique("role")
    request = RoleRequest(
        dest=KinesisDestination(parse_stream_arn(stream_arn)),
        role_name=role,
        external_id="ext-k",
        policy_name=f"{role}-policy",
        resource_policy=True,
    )
    clients = emulator.clients()
    if not role_is_new:  # the role exists already; only the stream policy is missing
        provision_role(clients, dataclasses.replace(request, resource_policy=False))
    attempts: list[int] = []
    slept: list[float] = []
    kinesis = clients.client("kinesis", "us-east-1")
    kinesis.meta.events.register(
        "before-call.kinesis.PutResourcePolicy", _reject_first_put(attempts)
    )
    provisioner = RoleProvisioner(clients, request, sleep=slept.append)
    if role_is_new:
        result = provisioner.run()
        assert (len(attempts), slept) == (2, [1.0])
        assert result.changes[-1].action == "put-stream-policy"
        stored = emulator.client("kinesis").get_resource_policy(ResourceARN=stream_arn)
        assert result.role_arn in stored["Policy"]
    else:
        with pytest.raises(SetupError) as info:
            provisioner.run()
        assert info.value.code == "InvalidArgumentException"
        assert (len(attempts), slept) == (1, [])
