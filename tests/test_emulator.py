"""Each emulator patch proven by the AWS behaviour it restores (DESIGN.md §5 gaps 1–5, 7)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from logferry.local.emulator import Emulator
from logferry.local.trust_policy import conditions_match, principal_matches

VENDOR = "717331877981"


def _trust(principal: object, external_id: str | None = "cust-1") -> str:
    statement: dict[str, object] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": "sts:AssumeRole",
    }
    if external_id is not None:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def _make_role(emulator: Emulator, name: str, trust: str) -> str:
    iam = emulator.client("iam")
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]


def _assume(emulator: Emulator, role_arn: str, external_id: str | None = None, account=None):
    sts = emulator.client("sts", account or emulator.vendor)
    kwargs = {"RoleArn": role_arn, "RoleSessionName": "test"}
    if external_id is not None:
        kwargs["ExternalId"] = external_id
    return sts.assume_role(**kwargs)


def _denied(call) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


def test_external_id_is_enforced_cross_account(emulator: Emulator, unique) -> None:
    arn = _make_role(emulator, unique("role"), _trust(VENDOR))
    creds = _assume(emulator, arn, "cust-1")["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    assert _denied(lambda: _assume(emulator, arn, "someone-else")) == "AccessDenied"
    assert _denied(lambda: _assume(emulator, arn, None)) == "AccessDenied"


@pytest.mark.parametrize(
    "principal",
    [VENDOR, f"arn:aws:iam::{VENDOR}:root", f"arn:aws:iam::{VENDOR}:user/logferry-vendor"],
)
def test_principal_forms_are_honoured(emulator: Emulator, unique, principal: str) -> None:
    arn = _make_role(emulator, unique("role"), _trust([principal]))
    assert _assume(emulator, arn, "cust-1")["AssumedRoleUser"]["Arn"].endswith("/test")


def test_other_account_is_not_trusted(emulator: Emulator, unique) -> None:
    stranger = emulator.add_account("444455556666")
    arn = _make_role(emulator, unique("role"), _trust(VENDOR))
    assert _denied(lambda: _assume(emulator, arn, "cust-1", stranger)) == "AccessDenied"


def test_trust_without_condition_lets_any_external_id_in(emulator: Emulator, unique) -> None:
    """The confused-deputy case `role check` must detect has to be reproducible here."""
    arn = _make_role(emulator, unique("role"), _trust(VENDOR, external_id=None))
    assert _assume(emulator, arn, "anything")["Credentials"]
    assert _assume(emulator, arn, None)["Credentials"]


def test_missing_role_is_access_denied(emulator: Emulator) -> None:
    missing = "arn:aws:iam::123456789012:role/does-not-exist"
    assert _denied(lambda: _assume(emulator, missing, "cust-1")) == "AccessDenied"


def test_assumed_role_acts_in_role_account_with_role_policy(emulator: Emulator, unique) -> None:
    name, bucket = unique("role"), unique("bkt")
    arn = _make_role(emulator, name, _trust(VENDOR))
    emulator.client("s3").create_bucket(Bucket=bucket)
    emulator.client("iam").put_role_policy(
        RoleName=name,
        PolicyName="w",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:PutObject",
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    }
                ],
            }
        ),
    )
    creds = _assume(emulator, arn, "cust-1")["Credentials"]
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=emulator.url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    s3.put_object(Bucket=bucket, Key="a.log", Body=b"x\n")
    assert _denied(lambda: s3.get_object(Bucket=bucket, Key="a.log")) == "AccessDenied"
    body = emulator.client("s3").get_object(Bucket=bucket, Key="a.log")["Body"].read()
    assert body == b"x\n"


def _stream_role_clients(emulator: Emulator, unique, actions: list[str], shards: int = 1):
    import boto3

    name, stream = unique("role"), unique("stream")
    kinesis_admin = emulator.client("kinesis")
    kinesis_admin.create_stream(StreamName=stream, ShardCount=shards)
    stream_arn = kinesis_admin.describe_stream_summary(StreamName=stream)[
        "StreamDescriptionSummary"
    ]["StreamARN"]
    arn = _make_role(emulator, name, _trust(VENDOR))
    emulator.client("iam").put_role_policy(
        RoleName=name,
        PolicyName="k",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": stream_arn}],
            }
        ),
    )
    creds = _assume(emulator, arn, "cust-1")["Credentials"]
    client = boto3.client(
        "kinesis",
        endpoint_url=emulator.url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    return client, stream, stream_arn


def test_kinesis_stream_scoped_policy(emulator: Emulator, unique) -> None:
    client, _stream, stream_arn = _stream_role_clients(
        emulator, unique, ["kinesis:PutRecords", "kinesis:ListShards"]
    )
    shards = client.list_shards(StreamARN=stream_arn)["Shards"]
    assert len(shards) == 1
    put = client.put_records(
        StreamARN=stream_arn, Records=[{"Data": b"line\n", "PartitionKey": "k"}]
    )
    assert put["FailedRecordCount"] == 0
    with pytest.raises(ClientError) as info:
        client.put_record(StreamARN=stream_arn, Data=b"x", PartitionKey="k")
    error = info.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "kinesis:PutRecord" in error["Message"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Another stream in the same account is out of the policy's scope.
    other = unique("stream")
    emulator.client("kinesis").create_stream(StreamName=other, ShardCount=1)
    code = _denied(
        lambda: client.put_records(StreamName=other, Records=[{"Data": b"x", "PartitionKey": "k"}])
    )
    assert code == "AccessDeniedException"


def test_kinesis_routing_end_key_inclusive_and_open_shards_only(emulator: Emulator, unique) -> None:
    kinesis = emulator.client("kinesis")
    stream = unique("stream")
    kinesis.create_stream(StreamName=stream, ShardCount=4)
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    top = shards[-1]["HashKeyRange"]["EndingHashKey"]
    assert int(top) == 2**128 - 1
    records = [{"Data": b"top", "PartitionKey": "k", "ExplicitHashKey": top}]
    for shard in shards:
        end = shard["HashKeyRange"]["EndingHashKey"]
        records.append({"Data": end.encode(), "PartitionKey": "k", "ExplicitHashKey": end})
    result = kinesis.put_records(StreamName=stream, Records=records)
    assert result["FailedRecordCount"] == 0
    assert result["Records"][0]["ShardId"] == shards[-1]["ShardId"]
    for shard, placed in zip(shards, result["Records"][1:], strict=True):
        assert placed["ShardId"] == shard["ShardId"]  # the end key belongs to its own shard

    kinesis.update_shard_count(StreamName=stream, TargetShardCount=8, ScalingType="UNIFORM_SCALING")
    after = kinesis.list_shards(StreamName=stream)["Shards"]
    open_ids = {
        s["ShardId"] for s in after if "EndingSequenceNumber" not in s["SequenceNumberRange"]
    }
    assert len(open_ids) == 8
    keys = [str(i * (2**128 // 64)) for i in range(64)] + [top]
    placed = kinesis.put_records(
        StreamName=stream,
        Records=[{"Data": b"x", "PartitionKey": "k", "ExplicitHashKey": k} for k in keys],
    )["Records"]
    assert {p["ShardId"] for p in placed} == open_ids


def test_kinesis_get_records_reads_everything_in_order(emulator: Emulator, unique) -> None:
    kinesis = emulator.client("kinesis")
    stream = unique("stream")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    sent = [f"line-{i}".encode() for i in range(1200)]
    for start in range(0, len(sent), 500):
        kinesis.put_records(
            StreamName=stream,
            Records=[{"Data": d, "PartitionKey": "p"} for d in sent[start : start + 500]],
        )
    shard_id = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    got: list[bytes] = []
    while True:
        page = kinesis.get_records(ShardIterator=iterator, Limit=500)
        got += [r["Data"] for r in page["Records"]]
        if not page["Records"]:
            break
        iterator = page["NextShardIterator"]
    assert got == sent


def test_condition_semantics() -> None:
    assert conditions_match({"StringEquals": {"sts:ExternalId": "a"}}, {"sts:externalid": "a"})
    assert not conditions_match({"StringEquals": {"sts:ExternalId": "a"}}, {})
    assert conditions_match({"StringNotEquals": {"sts:ExternalId": "a"}}, {})
    assert conditions_match({"StringEqualsIfExists": {"sts:ExternalId": "a"}}, {})
    assert conditions_match(
        {"StringLike": {"sts:ExternalId": "cust-*"}}, {"sts:ExternalId": "cust-9"}
    )
    assert conditions_match({"Null": {"sts:ExternalId": "false"}}, {"sts:ExternalId": "x"})
    assert not conditions_match({"Null": {"sts:ExternalId": "false"}}, {})
    assert not conditions_match({"NumericLessThan": {"x": "1"}}, {"x": "0"})  # fail closed


def test_principal_semantics() -> None:
    user = "arn:aws:iam::111122223333:user/u"
    assert principal_matches("*", user, "111122223333")
    assert principal_matches({"AWS": "111122223333"}, user, "111122223333")
    assert not principal_matches({"AWS": "11112222333"}, user, "111122223333")  # no substring
    assert not principal_matches({"AWS": "arn:aws:iam::999988887777:root"}, user, "111122223333")
    session = "arn:aws:sts::111122223333:assumed-role/r/s"
    assert principal_matches({"AWS": "arn:aws:iam::111122223333:role/r"}, session, "111122223333")


def test_unknown_multipart_upload_is_no_such_upload(emulator: Emulator, unique) -> None:
    s3 = emulator.client("s3")
    bucket = unique("bkt")
    s3.create_bucket(Bucket=bucket)
    for call in (
        lambda: s3.upload_part(Bucket=bucket, Key="k", UploadId="nope", PartNumber=1, Body=b"x"),
        lambda: s3.complete_multipart_upload(
            Bucket=bucket,
            Key="k",
            UploadId="nope",
            MultipartUpload={"Parts": [{"ETag": "x", "PartNumber": 1}]},
        ),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == "NoSuchUpload"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_backend_lookup_is_listed_once_and_still_finds_every_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cached module list (a performance patch) names exactly what moto's own listing does,
    and a lookup no longer touches the package directory."""
    import os

    from moto import backends

    from logferry.local import patches

    listed = list(backends.list_of_moto_modules())
    monkeypatch.setattr(backends, "list_of_moto_modules", backends.list_of_moto_modules)
    patches._patch_backend_lookup()
    calls: list[str] = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: calls.append(path) or real_listdir(path))
    assert list(backends.list_of_moto_modules()) == listed
    assert {"s3", "sts", "iam", "kinesis"} <= set(listed)
    assert calls == []


def test_logferry_local_prints_working_credentials_and_stops_on_sigterm() -> None:
    import re
    import signal
    import subprocess
    import sys

    import boto3

    proc = subprocess.Popen(
        [sys.executable, "-m", "logferry.cli", "local", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        exports: list[dict[str, str]] = [{}]
        while len(exports) < 3 or "AWS_ENDPOINT_URL" not in exports[-1]:
            line = proc.stdout.readline()
            assert line, "logferry local exited early"
            if line.startswith("# ") and "account" in line:
                exports.append({})
            m = re.match(r"export (\w+)=(\S+)", line)
            if m:
                exports[-1][m.group(1)] = m.group(2).strip("'")
        vendor, customer = exports[1], exports[2]
        for env, expected in ((vendor, "user/logferry-vendor"), (customer, "user/admin")):
            sts = boto3.client(
                "sts",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                region_name="us-east-1",
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            )
            assert sts.get_caller_identity()["Arn"].endswith(expected)
        assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_toml_writer_round_trips_a_service_config() -> None:
    import tomllib

    from logferry.local.toml_out import to_toml

    doc = {
        "vendor": {"name": "acme", "sts_endpoints": {"us-east-1": "http://127.0.0.1:5000"}},
        "server": {"listen": "127.0.0.1:8080", "shutdown_flush_seconds": 2.5, "x": True},
        "customers": [{"id": "c1", "endpoints": [{"type": "s3", "name": "s3", "period": 5}]}],
    }
    assert tomllib.loads(to_toml(doc)) == doc
