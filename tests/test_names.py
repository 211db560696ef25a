"""Validators and ARN helpers: what AWS accepts passes unchanged, everything else says why."""

from __future__ import annotations

import pytest

from logferry.aws import names
from logferry.errors import InputError


def _error(check, value: str) -> InputError:
    with pytest.raises(InputError) as info:
        check(value)
    return info.value


# --- buckets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bucket",
    ["abc", "my-logs", "logs.example.com", "a" * 63, "0bucket9", "my-s3alias-not-suffix"],
)
def test_valid_bucket_names(bucket: str) -> None:
    assert names.validate_bucket_name(bucket) == bucket


@pytest.mark.parametrize(
    ("bucket", "says"),
    [
        ("ab", "3-63"),
        ("a" * 64, "3-63"),
        ("My-Logs", "lowercase"),
        ("my_logs", "'_'"),
        ("my logs", "' '"),
        ("-logs", "start and end"),
        ("logs-", "start and end"),
        ("logs.", "start and end"),
        ("my..logs", "adjacent dots"),
        ("192.168.5.4", "IP address"),
        ("xn--logs", "'xn--'"),
        ("sthree-logs", "'sthree-'"),
        ("amzn-s3-demo-logs", "'amzn-s3-demo-'"),
        ("logs-s3alias", "'-s3alias'"),
        ("logs--ol-s3", "'--ol-s3'"),
        ("logs.mrap", "'.mrap'"),
        ("logs--x-s3", "'--x-s3'"),
        ("logs--table-s3", "'--table-s3'"),
    ],
)
def test_invalid_bucket_names(bucket: str, says: str) -> None:
    exc = _error(names.validate_bucket_name, bucket)
    assert says in exc.message
    assert exc.fix  # every bucket error says what is allowed or what to do


def test_uppercase_bucket_suggests_lowercase() -> None:
    assert "'my-logs'" in (_error(names.validate_bucket_name, "My-Logs").fix or "")


# --- prefixes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "logs/", "cdn/2024-", "a b/é/"])
def test_valid_prefixes(prefix: str) -> None:
    assert names.validate_key_prefix(prefix) == prefix


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("/logs/", "starts with '/'"),
        ("logs/*", "contains '*'"),
        ("a?b", "contains '?'"),
        ("${aws:username}/", "contains '${'"),
        ("a\nb", "control characters"),
    ],
)
def test_prefixes_that_would_change_the_grant(prefix: str, says: str) -> None:
    exc = _error(names.validate_key_prefix, prefix)
    assert says in exc.message
    assert exc.where == "prefix"


# --- streams, regions, accounts -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "logs_1.b-c", "x" * 128])
def test_valid_stream_names(name: str) -> None:
    assert names.validate_stream_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 129, "bad/name", "sp ace"])
def test_invalid_stream_names(name: str) -> None:
    assert "1-128" in (_error(names.validate_stream_name, name).fix or "")


@pytest.mark.parametrize(
    "region",
    [
        "us-east-1",
        "eu-central-2",
        "ap-southeast-5",
        "cn-northwest-1",
        "us-gov-west-1",
        "il-central-1",
    ],
)
def test_valid_regions(region: str) -> None:
    assert names.validate_region(region) == region


@pytest.mark.parametrize("region", ["us-east", "useast1", "US-EAST-1", "mars-north-1", ""])
def test_invalid_regions(region: str) -> None:
    exc = _error(names.validate_region, region)
    assert "not an AWS region" in exc.message
    assert "us-east-1" in (exc.fix or "")


def test_region_case_hint() -> None:
    assert "'us-east-1'" in _error(names.validate_region, "US-EAST-1").message


@pytest.mark.parametrize(
    ("region", "partition"),
    [("us-east-1", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-east-1", "aws-us-gov")],
)
def test_partition_for_region(region: str, partition: str) -> None:
    assert names.partition_for_region(region) == partition


@pytest.mark.parametrize("account", ["123456789012", "000000000001"])
def test_valid_accounts(account: str) -> None:
    assert names.validate_account_id(account) == account


@pytest.mark.parametrize("account", ["12345678901", "1234567890123", "12345678901a", "", "1e11"])
def test_invalid_accounts(account: str) -> None:
    assert "12-digit" in (_error(names.validate_account_id, account).fix or "")


# --- external IDs, IAM names --------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["ab", "cust-1", "A+b=c,d.e@f:g/h-i_j", "x" * 1224])
def test_valid_external_ids(ext: str) -> None:
    assert names.validate_external_id(ext) == ext


@pytest.mark.parametrize(
    ("ext", "says"),
    [
        ("a", "2-1224"),
        ("x" * 1225, "2-1224"),
        ("has space", "' '"),
        ("é-id", "'é'"),
        ("a;b", "';'"),
    ],
)
def test_invalid_external_ids(ext: str, says: str) -> None:
    exc = _error(names.validate_external_id, ext)
    assert says in exc.message


@pytest.mark.parametrize("role", ["r", "Vendor_Logs+=,.@-", "x" * 64])
def test_valid_role_names(role: str) -> None:
    assert names.validate_role_name(role) == role


@pytest.mark.parametrize("role", ["", "x" * 65, "has space", "a/b", "a:b"])
def test_invalid_role_names(role: str) -> None:
    exc = _error(names.validate_role_name, role)
    assert exc.where == "role-name"
    assert "1-64" in (exc.fix or "")


def test_policy_names_allow_128() -> None:
    assert names.validate_policy_name("p" * 128) == "p" * 128
    assert "1-128" in (_error(names.validate_policy_name, "p" * 129).fix or "")
    assert "'*'" in _error(names.validate_policy_name, "p*").message


# --- ARNs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arn", "partition", "region", "account", "name"),
    [
        (
            "arn:aws:kinesis:us-east-1:123456789012:stream/logs",
            "aws",
            "us-east-1",
            "123456789012",
            "logs",
        ),
        (
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b",
            "aws-cn",
            "cn-north-1",
            "123456789012",
            "a.b",
        ),
        (
            "arn:aws-us-gov:kinesis:us-gov-west-1:000000000001:stream/x_y",
            "aws-us-gov",
            "us-gov-west-1",
            "000000000001",
            "x_y",
        ),
    ],
)
def test_parse_stream_arn_round_trip(
    arn: str, partition: str, region: str, account: str, name: str
) -> None:
    parsed = names.parse_stream_arn(arn)
    assert (parsed.partition, parsed.region, parsed.account_id, parsed.name) == (
        partition,
        region,
        account,
        name,
    )
    assert parsed.arn == arn


@pytest.mark.parametrize(
    ("arn", "says"),
    [
        ("logs", "not a Kinesis stream ARN"),
        ("arn:aws:s3:::bucket", "not a Kinesis stream ARN"),
        ("arn:aws:kinesis:us-east-1:123:stream/logs", "not an AWS account ID"),
        ("arn:aws:kinesis:useast1:123456789012:stream/logs", "not an AWS region"),
        ("arn:aws:kinesis:us-east-1:123456789012:stream/", "does not name a stream"),
        ("arn:aws:kinesis:us-east-1:123456789012:deliverystream/x", "does not name a stream"),
        ("arn:aws:kinesis:us-east-1:123456789012:stream/bad name", "not a valid Kinesis stream"),
        ("arn:aws:kinesis:cn-north-1:123456789012:stream/logs", "belongs to aws-cn"),
        ("arn:aws-iso:kinesis:us-iso-east-1:123456789012:stream/l", "partition"),
    ],
)
def test_invalid_stream_arns(arn: str, says: str) -> None:
    exc = _error(names.parse_stream_arn, arn)
    assert exc.where == "stream-arn"
    assert says in exc.message


@pytest.mark.parametrize(
    ("arn", "name", "path"),
    [
        ("arn:aws:iam::123456789012:role/logs", "logs", "/"),
        ("arn:aws:iam::123456789012:role/team/app/logs", "logs", "/team/app/"),
    ],
)
def test_parse_role_arn(arn: str, name: str, path: str) -> None:
    parsed = names.parse_role_arn(arn)
    assert (parsed.name, parsed.path, parsed.account_id) == (name, path, "123456789012")
    assert parsed.arn == arn


@pytest.mark.parametrize(
    ("arn", "says"),
    [
        ("role/logs", "not an IAM role ARN"),
        ("arn:aws:iam::123456789012:user/bob", "does not name a role"),
        ("arn:aws:sts::123456789012:assumed-role/r/s", "not an IAM role ARN"),
        ("arn:aws:iam::123456789012:role/", "1-64"),
        ("arn:aws:iam::12345:role/r", "not an AWS account ID"),
    ],
)
def test_invalid_role_arns(arn: str, says: str) -> None:
    exc = _error(names.parse_role_arn, arn)
    assert exc.where == "role-arn"
    assert says in exc.message or says in (exc.fix or "")


def test_builders_are_partition_aware() -> None:
    assert names.object_arn("b", "p/", "aws-cn") == "arn:aws-cn:s3:::b/p/*"
    assert names.object_arn("b") == "arn:aws:s3:::b/*"
    assert names.bucket_arn("b", "aws-us-gov") == "arn:aws-us-gov:s3:::b"
    assert names.role_arn("aws-cn", "123456789012", "r") == "arn:aws-cn:iam::123456789012:role/r"
    assert (
        names.policy_arn("aws", "123456789012", "p", "/x/")
        == "arn:aws:iam::123456789012:policy/x/p"
    )
    assert names.account_root_arn("aws-us-gov", "717331877981") == (
        "arn:aws-us-gov:iam::717331877981:root"
    )
    assert names.arn_partition("arn:aws-cn:iam::123456789012:user/x") == "aws-cn"
