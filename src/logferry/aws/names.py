"""AWS names and ARNs: validation with clear errors, parsing and partition-aware building.

Pure functions, no I/O. Every validator returns the (normalised) value or raises `InputError`
whose message says what is wrong and what is allowed; callers attach the flag / key path with
`validated` below (the `where` given here is only a default).

We validate before calling AWS because AWS's own errors for bad names are vague
("MalformedPolicyDocument", "ValidationError") and arrive after some writes have already happened.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from logferry.errors import InputError

Partition = Literal["aws", "aws-cn", "aws-us-gov"]
PARTITIONS: tuple[Partition, ...] = ("aws", "aws-cn", "aws-us-gov")

FASTLY_ACCOUNT_ID = "717331877981"
"""Fastly's AWS account (the guide's trusted principal); our default `--vendor-account`."""

# Where IAM (a global service) is called from, per partition.
IAM_REGION: dict[Partition, str] = {
    "aws": "us-east-1",
    "aws-cn": "cn-north-1",
    "aws-us-gov": "us-gov-west-1",
}

_ACCOUNT_RE = re.compile(r"\d{12}")
_REGION_RE = re.compile(
    r"(?:[a-z]{2}|us-gov)-"
    r"(?:north|south|east|west|central|northeast|northwest|southeast|southwest)-[1-9]\d?"
)
_STREAM_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_EXTERNAL_ID_RE = re.compile(r"[\w+=,.@:/-]+", re.ASCII)
_IAM_NAME_RE = re.compile(r"[\w+=,.@-]+", re.ASCII)
_BUCKET_CHARS_RE = re.compile(r"[a-z0-9.-]+")
_ROLE_PATH_RE = re.compile(r"/(?:[\x21-\x7e]*/)?")

BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def _shown(value: str, limit: int = 80) -> str:
    """Quote a user value for an error message without flooding the terminal."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


# --- validators ---------------------------------------------------------------------------------


def validate_account_id(value: str) -> str:
    value = value.strip()
    if not _ACCOUNT_RE.fullmatch(value):
        raise InputError(
            "account",
            f"{_shown(value)} is not an AWS account ID.",
            fix="Use the 12-digit account number, e.g. 123456789012 (keep leading zeros).",
        )
    return value


def validate_region(value: str) -> str:
    value = value.strip()
    if not _REGION_RE.fullmatch(value):
        hint = f" Did you mean {value.lower()!r}?" if _REGION_RE.fullmatch(value.lower()) else ""
        raise InputError(
            "region",
            f"{_shown(value)} is not an AWS region name.{hint}",
            fix="Use a region code such as us-east-1, eu-west-2, cn-north-1 or us-gov-west-1.",
        )
    return value


def partition_for_region(region: str) -> Partition:
    """The partition a region belongs to (ARNs differ: arn:aws-cn:..., arn:aws-us-gov:...)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def validate_partition(value: str) -> Partition:
    for partition in PARTITIONS:
        if value == partition:
            return partition
    raise InputError(
        "partition",
        f"{_shown(value)} is not a supported AWS partition.",
        fix="Use one of: " + ", ".join(PARTITIONS) + ".",
    )


def validate_bucket_name(value: str) -> str:
    """S3 general purpose bucket naming rules (docs: "Bucket naming rules")."""
    where = "bucket"
    allowed = (
        "Bucket names are 3-63 characters of lowercase letters, digits, dots and hyphens, "
        "and start and end with a letter or digit."
    )
    if not 3 <= len(value) <= 63:
        raise InputError(
            where, f"{_shown(value)} is {len(value)} characters long; S3 allows 3-63.", fix=allowed
        )
    if value != value.lower() and _BUCKET_CHARS_RE.fullmatch(value.lower()):
        raise InputError(
            where,
            f"{_shown(value)} has uppercase letters; S3 bucket names are lowercase.",
            fix=f"Use {value.lower()!r} if that is the bucket's real name.",
        )
    if not _BUCKET_CHARS_RE.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[a-z0-9.-]", c)})
        raise InputError(
            where,
            f"{_shown(value)} contains {', '.join(repr(c) for c in bad)}, "
            "which S3 bucket names cannot.",
            fix=allowed,
        )
    if not (value[0].isalnum() and value[-1].isalnum()):
        raise InputError(
            where, f"{_shown(value)} must start and end with a letter or digit.", fix=allowed
        )
    if ".." in value:
        raise InputError(
            where, f"{_shown(value)} has two adjacent dots.", fix="Remove the doubled dot."
        )
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        pass
    else:
        raise InputError(
            where,
            f"{_shown(value)} is formatted as an IP address, which S3 forbids for bucket names.",
            fix=allowed,
        )
    for prefix in BUCKET_RESERVED_PREFIXES:
        if value.startswith(prefix):
            raise InputError(
                where,
                f"{_shown(value)} starts with the reserved prefix {prefix!r}.",
                fix="Reserved prefixes are " + ", ".join(BUCKET_RESERVED_PREFIXES) + ".",
            )
    for suffix in BUCKET_RESERVED_SUFFIXES:
        if value.endswith(suffix):
            raise InputError(
                where,
                f"{_shown(value)} ends with the reserved suffix {suffix!r} "
                "(used by access points, Express One Zone or table buckets).",
                fix="Use the general purpose bucket's own name.",
            )
    return value


def validate_key_prefix(value: str) -> str:
    """An S3 key prefix that narrows the policy resource to arn:aws:s3:::BUCKET/PREFIX*.

    `*`, `?` and `${` are rejected because inside a policy Resource they are wildcards / policy
    variables, and would silently widen (or break) the grant.
    """
    where = "prefix"
    if len(value.encode()) > 1000:
        raise InputError(where, "is longer than 1000 bytes.", fix="Use a shorter key prefix.")
    if value.startswith("/"):
        raise InputError(
            where,
            f"{_shown(value)} starts with '/': S3 keys have no leading slash, so objects "
            "would land under an empty-named folder.",
            fix=f"Use {value.lstrip('/')!r}.",
        )
    for token in ("*", "?", "${"):
        if token in value:
            raise InputError(
                where,
                f"{_shown(value)} contains {token!r}, which is a wildcard or policy variable in "
                "an IAM resource ARN and would change what the policy grants.",
                fix="Use a literal key prefix such as 'logs/cdn/'.",
            )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InputError(
            where, "contains control characters.", fix="Use printable characters only."
        )
    return value


def validate_stream_name(value: str) -> str:
    if not _STREAM_NAME_RE.fullmatch(value):
        raise InputError(
            "stream",
            f"{_shown(value)} is not a valid Kinesis stream name.",
            fix="Stream names are 1-128 characters of letters, digits, '_', '.' and '-'.",
        )
    return value


def validate_external_id(value: str) -> str:
    """STS ExternalId: 2-1224 characters of [\\w+=,.@:/-] (AssumeRole API reference)."""
    allowed = "External IDs are 2-1224 characters of letters, digits and _+=,.@:/-"
    if not 2 <= len(value) <= 1224:
        raise InputError(
            "external-id",
            f"is {len(value)} characters long; STS allows 2-1224.",
            fix=allowed + ".",
        )
    if not _EXTERNAL_ID_RE.fullmatch(value):
        bad = sorted({c for c in value if not _EXTERNAL_ID_RE.fullmatch(c)})
        raise InputError(
            "external-id",
            f"{_shown(value)} contains {', '.join(repr(c) for c in bad)}, "
            "which STS does not accept.",
            fix=allowed + " (no spaces).",
        )
    return value


def _validate_iam_name(value: str, where: str, what: str, limit: int) -> str:
    allowed = f"{what}s are 1-{limit} characters of letters, digits and _+=,.@-"
    if not 1 <= len(value) <= limit:
        raise InputError(
            where, f"is {len(value)} characters long; IAM allows 1-{limit}.", fix=allowed + "."
        )
    if not _IAM_NAME_RE.fullmatch(value):
        bad = sorted({c for c in value if not _IAM_NAME_RE.fullmatch(c)})
        raise InputError(
            where,
            f"{_shown(value)} contains {', '.join(repr(c) for c in bad)}, "
            f"which IAM does not allow in a {what.lower()}.",
            fix=allowed + ".",
        )
    return value


def validate_role_name(value: str) -> str:
    return _validate_iam_name(value, "role-name", "Role name", 64)


def validate_policy_name(value: str) -> str:
    return _validate_iam_name(value, "policy-name", "Policy name", 128)


# --- ARNs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamArn:
    """A Kinesis data stream ARN: it carries the stream's partition, region and account."""

    partition: Partition
    region: str
    account_id: str
    name: str

    @property
    def arn(self) -> str:
        return stream_arn(self.partition, self.region, self.account_id, self.name)

    def __str__(self) -> str:
        return self.arn


@dataclass(frozen=True)
class RoleArn:
    """An IAM role ARN; `path` is "/" or "/a/b/"."""

    partition: Partition
    account_id: str
    name: str
    path: str = "/"

    @property
    def arn(self) -> str:
        return role_arn(self.partition, self.account_id, self.name, self.path)

    def __str__(self) -> str:
        return self.arn


def _check_partition_region(partition: Partition, region: str, where: str, arn: str) -> None:
    if partition_for_region(region) != partition:
        raise InputError(
            where,
            f"{_shown(arn)} names region {region} but partition {partition}; "
            f"{region} belongs to {partition_for_region(region)}.",
            fix=f"Use arn:{partition_for_region(region)}:... for {region}.",
        )


def parse_stream_arn(value: str) -> StreamArn:
    """Parse `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`."""
    where = "stream-arn"
    example = "arn:aws:kinesis:us-east-1:123456789012:stream/my-logs"
    value = value.strip()
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "kinesis":
        raise InputError(
            where,
            f"{_shown(value)} is not a Kinesis stream ARN.",
            fix=f"Use the stream's ARN, e.g. {example} (aws kinesis describe-stream-summary).",
        )
    _, partition_s, _, region, account, resource = parts
    if partition_s not in PARTITIONS:
        raise InputError(
            where,
            f"{_shown(value)} has partition {partition_s!r}.",
            fix="Supported partitions: " + ", ".join(PARTITIONS) + ".",
        )
    partition = validate_partition(partition_s)
    try:
        validate_region(region)
        validate_account_id(account)
    except InputError as exc:
        raise InputError(where, f"{_shown(value)}: {exc.message}", fix=exc.fix) from None
    kind, _, name = resource.partition("/")
    if kind != "stream" or not name:
        raise InputError(
            where,
            f"{_shown(value)} does not name a stream (expected '...:stream/NAME').",
            fix=f"Use a data stream ARN such as {example}; consumer ARNs are not accepted.",
        )
    try:
        validate_stream_name(name)
    except InputError as exc:
        raise InputError(where, f"{_shown(value)}: {exc.message}", fix=exc.fix) from None
    _check_partition_region(partition, region, where, value)
    return StreamArn(partition, region, account, name)


def parse_role_arn(value: str) -> RoleArn:
    """Parse `arn:PARTITION:iam::ACCOUNT:role[/PATH/]NAME`."""
    where = "role-arn"
    example = "arn:aws:iam::123456789012:role/logferry-logging"
    value = value.strip()
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "iam" or parts[3] != "":
        raise InputError(
            where,
            f"{_shown(value)} is not an IAM role ARN.",
            fix=f"Use the role's ARN, e.g. {example} (aws iam get-role --role-name NAME).",
        )
    _, partition_s, _, _, account, resource = parts
    if partition_s not in PARTITIONS:
        raise InputError(
            where,
            f"{_shown(value)} has partition {partition_s!r}.",
            fix="Supported partitions: " + ", ".join(PARTITIONS) + ".",
        )
    try:
        validate_account_id(account)
    except InputError as exc:
        raise InputError(where, f"{_shown(value)}: {exc.message}", fix=exc.fix) from None
    if not resource.startswith("role/"):
        hint = (
            " (that is an assumed-role session ARN)" if resource.startswith("assumed-role/") else ""
        )
        raise InputError(
            where,
            f"{_shown(value)} does not name a role{hint}.",
            fix=f"Use an ARN of the form {example}.",
        )
    path_and_name = resource[len("role") :]
    cut = path_and_name.rfind("/")
    path, name = path_and_name[: cut + 1], path_and_name[cut + 1 :]
    if not _ROLE_PATH_RE.fullmatch(path) or len(path) > 512:
        raise InputError(where, f"{_shown(value)} has an invalid role path {path!r}.")
    try:
        validate_role_name(name)
    except InputError as exc:
        raise InputError(where, f"{_shown(value)}: {exc.message}", fix=exc.fix) from None
    return RoleArn(validate_partition(partition_s), account, name, path)


def arn_partition(arn: str) -> Partition:
    """Partition of any ARN (e.g. the caller identity from sts:GetCallerIdentity)."""
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn":
        raise InputError("arn", f"{_shown(arn)} is not an ARN.")
    return validate_partition(parts[1])


# --- builders -----------------------------------------------------------------------------------


def bucket_arn(bucket: str, partition: Partition = "aws") -> str:
    return f"arn:{partition}:s3:::{bucket}"


def object_arn(bucket: str, prefix: str = "", partition: Partition = "aws") -> str:
    """Objects under PREFIX: arn:aws:s3:::BUCKET/PREFIX* (the guide's BUCKET/* with no prefix)."""
    return f"arn:{partition}:s3:::{bucket}/{prefix}*"


def stream_arn(partition: Partition, region: str, account_id: str, name: str) -> str:
    return f"arn:{partition}:kinesis:{region}:{account_id}:stream/{name}"


def role_arn(partition: Partition, account_id: str, name: str, path: str = "/") -> str:
    return f"arn:{partition}:iam::{account_id}:role{path}{name}"


def policy_arn(partition: Partition, account_id: str, name: str, path: str = "/") -> str:
    return f"arn:{partition}:iam::{account_id}:policy{path}{name}"


def account_root_arn(partition: Partition, account_id: str) -> str:
    return f"arn:{partition}:iam::{account_id}:root"


def validated(where: str, check: Callable[[str], str], value: str) -> str:
    """Run a validator and attach the flag / key path `where` to its error."""
    try:
        return check(value)
    except InputError as exc:
        raise InputError(where, exc.message, fix=exc.fix) from None
