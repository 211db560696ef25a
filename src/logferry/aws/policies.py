"""The IAM documents of Fastly's guide "Creating an AWS IAM role for Fastly logging", as pure
functions.

Shapes follow the guide exactly (Version, Sids, a single `Statement` object for the trust and
permission policies, actions, principal `{"AWS": "<vendor account>"}`, `StringEquals
sts:ExternalId`) so a customer comparing our output with the guide sees the same JSON. What we add:
partition-aware ARNs, an optional key prefix (`BUCKET/PREFIX*`), the stream's real ARN instead of
the guide's `arn:aws:kinesis:::NAME` placeholder, and a semantic comparison so provisioning knows
whether AWS already holds an equivalent document (AWS rewrites `"123…"` principals to
`arn:aws:iam::123…:root` and may reorder lists).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NotRequired, TypedDict

from logferry.aws.names import (
    FASTLY_ACCOUNT_ID,
    Partition,
    StreamArn,
    account_root_arn,
    object_arn,
)

POLICY_VERSION = "2012-10-17"

S3_TRUST_SID = "S3LoggingTrustPolicy"
KINESIS_TRUST_SID = "KinesisLoggingTrustPolicy"
RESOURCE_POLICY_ID = "writePolicy"
RESOURCE_POLICY_SID = "FastlyWrite"

S3_ACTIONS = ["s3:PutObject", "s3:AbortMultipartUpload"]
KINESIS_ACTIONS = ["kinesis:PutRecords", "kinesis:ListShards"]
KINESIS_RESOURCE_POLICY_ACTIONS = [
    "kinesis:DescribeStreamSummary",
    "kinesis:ListShards",
    "kinesis:PutRecord",
    "kinesis:PutRecords",
]

Kind = Literal["s3", "kinesis"]


class Statement(TypedDict):
    Effect: Literal["Allow", "Deny"]
    Action: str | list[str]
    Sid: NotRequired[str]
    Principal: NotRequired[dict[str, str | list[str]]]
    Resource: NotRequired[str | list[str]]
    Condition: NotRequired[dict[str, dict[str, str | list[str]]]]


class PolicyDocument(TypedDict):
    Version: str
    Statement: Statement | list[Statement]
    Id: NotRequired[str]


@dataclass(frozen=True)
class S3Destination:
    """Objects under `prefix` in `bucket` (prefix "" = the whole bucket, as in the guide)."""

    bucket: str
    prefix: str = ""
    partition: Partition = "aws"

    kind: ClassVar[Literal["s3"]] = "s3"

    @property
    def resource_arn(self) -> str:
        return object_arn(self.bucket, self.prefix, self.partition)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class KinesisDestination:
    """One Kinesis data stream; its ARN fixes partition, region and account."""

    stream: StreamArn

    kind: ClassVar[Literal["kinesis"]] = "kinesis"

    @property
    def partition(self) -> Partition:
        return self.stream.partition

    @property
    def resource_arn(self) -> str:
        return self.stream.arn

    def describe(self) -> str:
        return self.stream.arn


Destination = S3Destination | KinesisDestination


# --- builders -----------------------------------------------------------------------------------


def trust_policy(
    kind: Kind, external_id: str, vendor_account: str = FASTLY_ACCOUNT_ID
) -> PolicyDocument:
    """Who may assume the role: only `vendor_account`, and only with our ExternalId."""
    return {
        "Version": POLICY_VERSION,
        "Statement": {
            "Sid": S3_TRUST_SID if kind == "s3" else KINESIS_TRUST_SID,
            "Effect": "Allow",
            "Principal": {"AWS": vendor_account},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
        },
    }


def s3_permission_policy(
    bucket: str, prefix: str = "", partition: Partition = "aws"
) -> PolicyDocument:
    """Write-only on BUCKET/PREFIX*: PutObject (covers multipart) and AbortMultipartUpload."""
    return {
        "Version": POLICY_VERSION,
        "Statement": {
            "Effect": "Allow",
            "Action": list(S3_ACTIONS),
            "Resource": object_arn(bucket, prefix, partition),
        },
    }


def kinesis_permission_policy(stream: StreamArn) -> PolicyDocument:
    """PutRecords (batched writes) and ListShards (spreading over open shards) on one stream."""
    return {
        "Version": POLICY_VERSION,
        "Statement": {
            "Effect": "Allow",
            "Action": list(KINESIS_ACTIONS),
            "Resource": stream.arn,
        },
    }


def resource_policy_statement(
    stream: StreamArn, role_arn: str, vendor_account: str = FASTLY_ACCOUNT_ID
) -> Statement:
    return {
        "Sid": RESOURCE_POLICY_SID,
        "Effect": "Allow",
        "Principal": {"AWS": [account_root_arn(stream.partition, vendor_account), role_arn]},
        "Action": list(KINESIS_RESOURCE_POLICY_ACTIONS),
        "Resource": stream.arn,
    }


def kinesis_resource_policy(
    stream: StreamArn, role_arn: str, vendor_account: str = FASTLY_ACCOUNT_ID
) -> PolicyDocument:
    """The stream's resource-based policy (Id writePolicy, Sid FastlyWrite)."""
    return {
        "Version": POLICY_VERSION,
        "Id": RESOURCE_POLICY_ID,
        "Statement": [resource_policy_statement(stream, role_arn, vendor_account)],
    }


def permission_policy(dest: Destination) -> PolicyDocument:
    if isinstance(dest, S3Destination):
        return s3_permission_policy(dest.bucket, dest.prefix, dest.partition)
    return kinesis_permission_policy(dest.stream)


@dataclass(frozen=True)
class PolicySet:
    """Everything a destination needs; `resource` only for Kinesis."""

    trust: PolicyDocument
    permission: PolicyDocument
    resource: PolicyDocument | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"trust_policy": self.trust, "permission_policy": self.permission}
        if self.resource is not None:
            doc["resource_policy"] = self.resource
        return doc


def build_policies(
    dest: Destination,
    external_id: str,
    vendor_account: str = FASTLY_ACCOUNT_ID,
    role_arn: str | None = None,
) -> PolicySet:
    """All documents for `dest`; the Kinesis resource policy needs the role's ARN."""
    resource = None
    if isinstance(dest, KinesisDestination) and role_arn is not None:
        resource = kinesis_resource_policy(dest.stream, role_arn, vendor_account)
    return PolicySet(
        trust=trust_policy(dest.kind, external_id, vendor_account),
        permission=permission_policy(dest),
        resource=resource,
    )


# --- merging and comparing ----------------------------------------------------------------------


def merge_resource_policy(existing: dict[str, Any] | None, ours: PolicyDocument) -> dict[str, Any]:
    """Put our statement(s) into a stream policy without dropping anyone else's.

    PutResourcePolicy replaces the whole document, and a stream may already grant other readers
    or writers: statements whose Sid we own are replaced, every other statement is kept.
    """
    our_statements = statements(ours)
    if not existing or not existing.get("Statement"):
        return dict(ours)
    our_sids = {s.get("Sid") for s in our_statements}
    kept = [s for s in statements(existing) if s.get("Sid") not in our_sids]
    merged: dict[str, Any] = {
        "Version": existing.get("Version", POLICY_VERSION),
        "Id": existing.get("Id", ours.get("Id", RESOURCE_POLICY_ID)),
        "Statement": kept + list(our_statements),
    }
    return merged


def statements(doc: dict[str, Any] | PolicyDocument) -> list[Any]:
    raw = doc.get("Statement", [])
    return [raw] if isinstance(raw, dict) else list(raw)


def _principal_value(value: str) -> str:
    """AWS stores a bare account ID principal as arn:PARTITION:iam::ID:root; treat them alike."""
    parts = value.split(":")
    if len(parts) == 6 and parts[0] == "arn" and parts[2] == "iam" and parts[5] == "root":
        return parts[4]
    return value


def _as_sorted_list(value: Any) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))


def _normalise_statement(stmt: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in stmt.items():
        if key in ("Action", "NotAction", "Resource", "NotResource"):
            out[key] = _as_sorted_list(value)
        elif key in ("Principal", "NotPrincipal") and isinstance(value, dict):
            out[key] = {
                ptype: sorted(
                    _principal_value(p) if ptype == "AWS" else p
                    for p in (v if isinstance(v, list) else [v])
                )
                for ptype, v in value.items()
            }
        elif key == "Condition" and isinstance(value, dict):
            out[key] = {
                op: {k: _as_sorted_list(v) for k, v in conds.items()} for op, conds in value.items()
            }
        else:
            out[key] = value
    return out


def normalise(doc: dict[str, Any] | PolicyDocument | str | None) -> dict[str, Any] | None:
    """A canonical form for comparison (not for sending): lists sorted, statements as a list."""
    if doc is None:
        return None
    if isinstance(doc, str):
        doc = json.loads(doc) if doc.strip() else {}
    assert isinstance(doc, dict)
    if not doc:
        return {}
    stmts = [_normalise_statement(s) for s in statements(doc)]
    out = {k: v for k, v in doc.items() if k != "Statement"}
    out["Statement"] = sorted(stmts, key=lambda s: json.dumps(s, sort_keys=True))
    return out


def equivalent(
    a: dict[str, Any] | PolicyDocument | str | None, b: dict[str, Any] | PolicyDocument | str | None
) -> bool:
    """True when two policy documents grant the same thing (modulo formatting AWS applies)."""
    return normalise(a) == normalise(b)


def has_external_id_condition(doc: dict[str, Any] | PolicyDocument, external_id: str) -> bool:
    """Every Allow statement that lets someone AssumeRole requires exactly this ExternalId."""
    found = False
    for stmt in statements(doc):
        if stmt.get("Effect") != "Allow":
            continue
        actions = _as_sorted_list(stmt.get("Action", []))
        if not any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions):
            continue
        cond = stmt.get("Condition", {}).get("StringEquals", {}).get("sts:ExternalId")
        if _as_sorted_list(cond) != [external_id]:
            return False
        found = True
    return found
