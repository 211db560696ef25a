"""Policy documents: the guide's JSON exactly, plus prefix, partition, merge and comparison."""

from __future__ import annotations

import json

import pytest

from logferry.aws import policies as p
from logferry.aws.names import parse_stream_arn
from logferry.aws.provision import LIFECYCLE_RULE_ID, merge_lifecycle_rules

# The guide's templates ("Creating an AWS IAM role for Fastly logging"), as published, with the
# placeholders (YourS3BucketName, YourKinesisStreamName, the customer ID) filled in.
GUIDE_S3_PERMISSION = """
{
    "Version": "2012-10-17",
    "Statement": {
        "Effect": "Allow",
        "Action": [
            "s3:PutObject",
            "s3:AbortMultipartUpload"
        ],
        "Resource": "arn:aws:s3:::my-logs/*"
    }
}
"""
GUIDE_KINESIS_PERMISSION = """
{
    "Version": "2012-10-17",
    "Statement": {
        "Effect": "Allow",
        "Action": [
            "kinesis:PutRecords",
            "kinesis:ListShards"
        ],
        "Resource": "arn:aws:kinesis:us-east-1:123456789012:stream/logs"
    }
}
"""
GUIDE_TRUST = """
{
    "Version": "2012-10-17",
    "Statement": {
        "Sid": "%s",
        "Effect": "Allow",
        "Principal": {"AWS": "717331877981"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": "cust-1"}}
    }
}
"""
GUIDE_RESOURCE = """
{
    "Version": "2012-10-17",
    "Id": "writePolicy",
    "Statement": [{
        "Sid": "FastlyWrite",
        "Effect": "Allow",
        "Principal": {"AWS": [
            "arn:aws:iam::717331877981:root",
            "arn:aws:iam::123456789012:role/vendor-logs"
        ]},
        "Action": [
            "kinesis:DescribeStreamSummary",
            "kinesis:ListShards",
            "kinesis:PutRecord",
            "kinesis:PutRecords"
        ],
        "Resource": "arn:aws:kinesis:us-east-1:123456789012:stream/logs"
    }]
}
"""
STREAM = parse_stream_arn("arn:aws:kinesis:us-east-1:123456789012:stream/logs")
ROLE = "arn:aws:iam::123456789012:role/vendor-logs"


def test_s3_documents_equal_the_guide() -> None:
    assert p.s3_permission_policy("my-logs") == json.loads(GUIDE_S3_PERMISSION)
    assert p.trust_policy("s3", "cust-1") == json.loads(GUIDE_TRUST % "S3LoggingTrustPolicy")


def test_kinesis_documents_equal_the_guide() -> None:
    assert p.kinesis_permission_policy(STREAM) == json.loads(GUIDE_KINESIS_PERMISSION)
    assert p.trust_policy("kinesis", "cust-1") == json.loads(
        GUIDE_TRUST % "KinesisLoggingTrustPolicy"
    )
    assert p.kinesis_resource_policy(STREAM, ROLE) == json.loads(GUIDE_RESOURCE)


def test_build_policies_bundles_the_right_documents() -> None:
    s3 = p.build_policies(p.S3Destination("my-logs"), "cust-1").as_json()
    assert set(s3) == {"trust_policy", "permission_policy"}
    kin = p.build_policies(p.KinesisDestination(STREAM), "cust-1", role_arn=ROLE).as_json()
    assert kin == {
        "trust_policy": json.loads(GUIDE_TRUST % "KinesisLoggingTrustPolicy"),
        "permission_policy": json.loads(GUIDE_KINESIS_PERMISSION),
        "resource_policy": json.loads(GUIDE_RESOURCE),
    }


def test_prefix_narrows_the_s3_resource() -> None:
    doc = p.s3_permission_policy("my-logs", "cdn/eu-")
    assert doc["Statement"]["Resource"] == "arn:aws:s3:::my-logs/cdn/eu-*"  # type: ignore[index]


def test_partitions_reach_every_arn() -> None:
    cn = parse_stream_arn("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/logs")
    res = p.kinesis_resource_policy(cn, "arn:aws-cn:iam::123456789012:role/r", "111122223333")
    stmt = res["Statement"][0]  # type: ignore[index]
    assert stmt["Principal"]["AWS"][0] == "arn:aws-cn:iam::111122223333:root"
    assert stmt["Resource"] == "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/logs"
    s3 = p.s3_permission_policy("b", "", "aws-us-gov")
    assert s3["Statement"]["Resource"] == "arn:aws-us-gov:s3:::b/*"  # type: ignore[index]


def test_vendor_account_is_configurable() -> None:
    doc = p.trust_policy("s3", "cust-1", "111122223333")
    assert doc["Statement"]["Principal"] == {"AWS": "111122223333"}  # type: ignore[index]


# --- comparison ---------------------------------------------------------------------------------


def test_equivalent_ignores_aws_rewrites() -> None:
    ours = p.trust_policy("s3", "cust-1")
    # What IAM returns: principal expanded to the root ARN, statement as a list.
    stored = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "S3LoggingTrustPolicy",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::717331877981:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": ["cust-1"]}},
            }
        ],
    }
    assert p.equivalent(ours, stored)
    assert p.equivalent(json.dumps(stored), ours)
    reordered = p.s3_permission_policy("b")
    reordered["Statement"]["Action"] = ["s3:AbortMultipartUpload", "s3:PutObject"]  # type: ignore[index]
    assert p.equivalent(reordered, p.s3_permission_policy("b"))


@pytest.mark.parametrize(
    "other",
    [
        p.trust_policy("s3", "cust-2"),
        p.trust_policy("s3", "cust-1", "111122223333"),
        p.trust_policy("kinesis", "cust-1"),
    ],
)
def test_equivalent_sees_real_differences(other: p.PolicyDocument) -> None:
    assert not p.equivalent(p.trust_policy("s3", "cust-1"), other)


def test_prefix_change_is_a_difference() -> None:
    assert not p.equivalent(p.s3_permission_policy("b", "x/"), p.s3_permission_policy("b", "y/"))


def test_has_external_id_condition() -> None:
    assert p.has_external_id_condition(dict(p.trust_policy("s3", "cust-1")), "cust-1")
    assert not p.has_external_id_condition(dict(p.trust_policy("s3", "cust-1")), "cust-2")
    open_trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "717331877981"}, "Action": "sts:AssumeRole"}
        ],
    }
    assert not p.has_external_id_condition(open_trust, "cust-1")


# --- merging ------------------------------------------------------------------------------------


def test_merge_resource_policy_keeps_other_statements() -> None:
    reader = {
        "Sid": "Analytics",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::222233334444:root"},
        "Action": "kinesis:GetRecords",
        "Resource": STREAM.arn,
    }
    old_ours = dict(p.resource_policy_statement(STREAM, "arn:aws:iam::123456789012:role/old"))
    existing = {"Version": "2012-10-17", "Id": "custom", "Statement": [reader, old_ours]}
    ours = p.kinesis_resource_policy(STREAM, ROLE)
    merged = p.merge_resource_policy(existing, ours)
    assert merged["Id"] == "custom"
    assert merged["Statement"] == [reader, p.resource_policy_statement(STREAM, ROLE)]
    assert p.merge_resource_policy(None, ours) == ours
    assert p.merge_resource_policy({}, ours) == ours
    assert p.equivalent(p.merge_resource_policy(merged, ours), merged)  # idempotent


def test_merge_lifecycle_adds_ours_and_keeps_others() -> None:
    expire = {"ID": "expire-old", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled"}
    expire["Expiration"] = {"Days": 30}
    merged = merge_lifecycle_rules([expire], 7, "logs/")
    assert merged is not None
    assert merged[0] == expire
    assert merged[1] == {
        "ID": LIFECYCLE_RULE_ID,
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    assert merge_lifecycle_rules(merged, 7, "logs/") is None  # nothing to change
    updated = merge_lifecycle_rules(merged, 3, "logs/")
    assert updated is not None
    assert updated[0] == expire
    assert updated[1]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    assert len(updated) == 2


def test_merge_lifecycle_into_nothing() -> None:
    merged = merge_lifecycle_rules([], 1)
    assert merged is not None and len(merged) == 1
    assert merged[0]["Filter"] == {"Prefix": ""}
