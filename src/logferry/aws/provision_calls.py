"""AWS calls for `role create`, failures told the way its user needs: what was being done, why
AWS refused, and what to run next. Codes and transience come from aws/errors.py.
"""

from __future__ import annotations

from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from logferry.aws.errors import (
    ACCESS_DENIED_CODES,
    BAD_CREDENTIAL_CODES,
    client_error_info,
    is_transient,
)
from logferry.errors import AwsErrorInfo, InputError, LogferryError, SetupError, TransientError

RERUN = "`logferry role create` is safe to re-run: it continues where it stopped."


def translate_error(
    exc: ClientError, *, service: str, operation: str, doing: str, region: str | None = None
) -> LogferryError:
    """One clear sentence with a fix for an AWS error code (the raw code travels in `info`)."""
    info = client_error_info(exc, service=service, operation=operation, region=region)
    code, message, status = info.code, info.message, info.http_status
    said = f" (AWS said: {message})" if message else ""
    action = f"{service}:{operation}"
    if code in ACCESS_DENIED_CODES:
        return SetupError(
            f"AWS denied {action} while {doing}{said}.",
            info,
            fix=f"Use credentials allowed to call {action} on this resource "
            "(e.g. --profile with an administrator), or ask your AWS administrator to grant it.",
        )
    if code in BAD_CREDENTIAL_CODES:
        return SetupError(
            f"AWS did not accept the credentials while {doing} ({code}){said}.",
            info,
            fix="Select valid credentials: --profile NAME, AWS_PROFILE, or `aws sso login`; "
            "with the local emulator pass --endpoint-url.",
        )
    if code == "NoSuchEntity":
        return SetupError(
            f"IAM found no such entity while {doing}{said}.",
            info,
            fix="Check the names and that the credentials belong to the intended account. " + RERUN,
        )
    if code == "MalformedPolicyDocument":
        return SetupError(
            f"AWS rejected the policy document while {doing}{said}.",
            info,
            fix="Check --vendor-account (it must be an existing account) and the bucket, prefix or "
            "stream; `logferry role policies` prints the exact documents.",
        )
    if code in ("LimitExceeded", "LimitExceededException"):
        return SetupError(
            f"An AWS quota was reached while {doing}{said}.",
            info,
            fix="Delete unused IAM roles, policies or policy versions, or request a quota "
            "increase in Service Quotas; then re-run.",
        )
    if code == "EntityAlreadyExists":
        return SetupError(
            f"It already exists: someone else created it while {doing}{said}.",
            info,
            fix="Run the command again: it brings the existing entity up to date.",
        )
    if code == "DeleteConflict":
        return SetupError(
            f"AWS refused a delete while {doing}{said}.",
            info,
            fix="Delete an old non-default policy version by hand "
            "(aws iam delete-policy-version), then re-run.",
        )
    if code == "NoSuchBucket":
        return SetupError(
            f"The bucket does not exist while {doing}{said}.",
            info,
            fix="Create the bucket first, or check --bucket and the account of your credentials.",
        )
    if code == "ResourceNotFoundException":
        return SetupError(
            f"The Kinesis stream was not found while {doing}{said}.",
            info,
            fix="Check --stream-arn (name, region and account) and that the stream is ACTIVE.",
        )
    if is_transient(code, status):
        return TransientError(
            f"AWS was temporarily unavailable while {doing} ({code}){said}.",
            info,
            fix="Wait a moment and re-run; " + RERUN,
        )
    return SetupError(
        f"{action} failed while {doing}: {code}{said}.",
        info,
        fix="Fix the cause named by AWS, then re-run; " + RERUN,
    )


def translate_botocore(exc: BotoCoreError, *, doing: str) -> LogferryError:
    """Errors raised before AWS answered (no credentials, unreachable endpoint, ...)."""
    if isinstance(exc, ProfileNotFound):
        return InputError(
            "--profile", f"{exc}.", fix="List profiles with `aws configure list-profiles`."
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return SetupError(
            f"No usable AWS credentials were found while {doing}.",
            AwsErrorInfo(code=type(exc).__name__, message=str(exc)),
            fix="Configure credentials (--profile, AWS_PROFILE, AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, or `aws configure`).",
        )
    if isinstance(exc, NoRegionError):
        return InputError("--region", "no AWS region is configured.", fix="Pass --region.")
    if isinstance(exc, EndpointConnectionError):
        return TransientError(
            f"Could not connect to AWS while {doing}: {exc}.",
            AwsErrorInfo(code="EndpointConnectionError", message=str(exc)),
            fix="Check the network and --endpoint-url, then re-run.",
        )
    return TransientError(
        f"The AWS call failed while {doing}: {exc}.",
        AwsErrorInfo(code=type(exc).__name__, message=str(exc)),
        fix="Re-run; " + RERUN,
    )


def call_aws(client: BaseClient, operation: str, doing: str, **kwargs: Any) -> dict[str, Any]:
    """Call `client.<operation>` and translate failures (`operation` in snake_case)."""
    service = client.meta.service_model.endpoint_prefix
    api_name = client.meta.method_to_api_mapping.get(operation, operation)
    try:
        return getattr(client, operation)(**kwargs)
    except ClientError as exc:
        raise translate_error(
            exc, service=service, operation=api_name, doing=doing, region=client.meta.region_name
        ) from exc
    except BotoCoreError as exc:
        raise translate_botocore(exc, doing=doing) from exc


def error_code_of(exc: LogferryError) -> str:
    """The AWS code our exception carries ("" for one that has none)."""
    info = getattr(exc, "info", None)
    return info.code if info is not None else ""
