"""The destination a customer's role is for, from the selector flags (`--for`, `--bucket`, …).

Shared by the `role` commands and the management API's console routes (service/console_api.py),
so the API never imports the CLI layer. Errors name the CLI flag (`where`); the console maps
flags to its query parameters.
"""

from __future__ import annotations

from typing import cast

from logferry.aws.names import (
    Partition,
    parse_stream_arn,
    validate_bucket_name,
    validate_key_prefix,
    validate_partition,
    validated,
)
from logferry.aws.policies import Destination, KinesisDestination, S3Destination
from logferry.errors import InputError

__all__ = ["default_policy_name", "default_role_name", "resolve_destination"]


def resolve_destination(
    kind: str | None,
    bucket: str | None,
    prefix: str,
    stream_arn: str | None,
    partition: str | None = None,
) -> Destination:
    """Check that the selector flags fit together and are valid; flags name themselves.

    `kind` may be a str enum (the CLI's `--for`): its str() is its value.
    """
    kind_s = None if kind is None else str(kind)
    if kind_s is None:
        if bucket is not None and stream_arn is not None:
            raise InputError(
                "--bucket/--stream-arn",
                "give one destination, not both.",
                fix="Use --bucket for S3 or --stream-arn for Kinesis.",
            )
        if bucket is None and stream_arn is None:
            raise InputError(
                "--bucket/--stream-arn",
                "no destination given.",
                fix="Pass --bucket BUCKET (S3) or --stream-arn ARN (Kinesis).",
            )
        kind_s = "s3" if bucket is not None else "kinesis"
    if kind_s == "s3":
        if stream_arn is not None:
            raise InputError(
                "--stream-arn", "applies to Kinesis only.", fix="Drop it, or use --for kinesis."
            )
        if bucket is None:
            raise InputError("--bucket", "is required with --for s3.", fix="Pass --bucket BUCKET.")
        part = cast(Partition, validated("--partition", validate_partition, partition or "aws"))
        return S3Destination(
            bucket=validated("--bucket", validate_bucket_name, bucket),
            prefix=validated("--prefix", validate_key_prefix, prefix),
            partition=part,
        )
    if kind_s == "kinesis":
        if bucket is not None:
            raise InputError("--bucket", "applies to S3 only.", fix="Drop it, or use --for s3.")
        if prefix:
            raise InputError("--prefix", "applies to S3 only.", fix="Drop --prefix for Kinesis.")
        if stream_arn is None:
            raise InputError(
                "--stream-arn",
                "is required with --for kinesis.",
                fix="Pass --stream-arn arn:aws:kinesis:REGION:ACCOUNT:stream/NAME.",
            )
        try:
            stream = parse_stream_arn(stream_arn)
        except InputError as exc:
            raise InputError("--stream-arn", exc.message, fix=exc.fix) from None
        if partition is not None and partition != stream.partition:
            raise InputError(
                "--partition",
                f"is {partition} but the stream ARN is in {stream.partition}.",
                fix="Drop --partition: the stream ARN decides it.",
            )
        return KinesisDestination(stream)
    raise InputError("--for", f"{kind_s!r} is not a destination type.", fix="Use s3 or kinesis.")


def default_role_name(dest: Destination) -> str:
    """The role name `role create` and the console suggest for a destination type."""
    return f"logferry-{dest.kind}-logging"


def default_policy_name(role_name: str) -> str:
    """The managed policy name that goes with a role name."""
    return f"{role_name}-policy"
