"""AWS errors, one module for all of logferry: botocore exceptions into our tree.

SetupError (the customer must fix something, never retried) or TransientError (retried with
backoff), each with the AWS code and a one-sentence fix. The code sets and `client_error_info`
are shared by everything that calls AWS: provisioning (aws/provision.py, whose messages speak to
the person running `role create`), the STS broker's regional failover (aws/sts_broker.py), the
role check (aws/role_check.py) and the S3 and Kinesis sinks (`classify`, re-exported by
sinks/aws_errors.py).

The split follows AWS's own retry guidance (botocore's
`standard` retry mode: throttling codes, 5xx, connection errors and timeouts are transient) plus
what the field teaches: expired session tokens are transient (the broker refreshes them), and
everything a customer controls (permissions, bucket/stream existence, KMS keys, storage class,
region) is a setup error whose fix names the exact permission and resource, because "Access
Denied" alone is what makes these integrations so hard to debug.
"""

from __future__ import annotations

from typing import Final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from logferry.errors import AwsError, AwsErrorInfo, SetupError, TransientError

THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "EC2ThrottledException",
        "KMS.ThrottlingException",
        "KMSThrottlingException",
        "PriorRequestNotComplete",
    }
)
TRANSIENT_CODES: Final = THROTTLING_CODES | frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "OperationAborted",  # S3: a conflicting operation on the same key is in progress
        "IDPCommunicationError",
        "NoSuchUpload",  # the S3 sink handles it (rewrites the file); never a customer problem
    }
)
REFRESH_CODES: Final = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired"}
)
"""Codes fixed by fresh credentials: transient, and worth one immediate retry after a refresh."""

SERVICE_TRANSIENT: Final[dict[tuple[str, str], str]] = {
    ("kinesis", "ResourceInUseException"): "None needed: the stream is being created or updated; "
    "logferry retries.",
    ("kinesis", "ExpiredNextTokenException"): "None needed: logferry lists the shards again from "
    "the start.",
}
"""(service, code) → fix: codes that look like setup errors but pass by themselves there."""

KMS_CODES: Final = frozenset(
    {
        "KMS.NotFoundException",
        "KMS.DisabledException",
        "KMS.KMSInvalidStateException",
        "KMS.InvalidKeyUsageException",
        "KMS.AccessDeniedException",
        "KMS.OptInRequired",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
        "KMSOptInRequired",
    }
)


ACCESS_DENIED_CODES: Final = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden"}
)
"""An IAM or resource policy said no (role_check also counts a bare HTTP 403, see `is_denied`)."""

BAD_CREDENTIAL_CODES: Final = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "InvalidToken",
    }
)
"""The caller's own credentials were refused (for `role create`: the person's, not a role's)."""

STS_FAILOVER_CODES: Final = TRANSIENT_CODES | frozenset({"RegionDisabledException"})
"""This STS region cannot serve now (or STS is not activated there for the role's account):
the broker tries the next region."""


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError ("Unknown" when AWS sent none)."""
    return str(exc.response.get("Error", {}).get("Code") or "Unknown")


def http_status(exc: ClientError) -> int | None:
    """The HTTP status of the failed call, when botocore recorded one."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def client_error_info(
    exc: ClientError, *, service: str, operation: str, region: str | None = None
) -> AwsErrorInfo:
    """What one failed call says: code, message, HTTP status (for our exceptions' `info`)."""
    return AwsErrorInfo(
        code=error_code(exc),
        message=str(exc.response.get("Error", {}).get("Message") or "").strip(),
        service=service,
        operation=operation,
        region=region,
        http_status=http_status(exc),
    )


def is_transient(code: str, status: int | None) -> bool:
    """Worth a retry: throttling, AWS-side failures, expired session tokens, any 5xx or 429."""
    return (
        code in TRANSIENT_CODES
        or code in REFRESH_CODES
        or (status is not None and (status >= 500 or status == 429))
    )


def is_denied(exc: ClientError) -> bool:
    """Access denied: a denial code, or a bare 403 that is not STS's RegionDisabledException."""
    code = error_code(exc)
    return (
        code in ACCESS_DENIED_CODES
        or code == "403"
        or (http_status(exc) == 403 and code != "RegionDisabledException")
    )


# IAM action behind each API operation (S3: PutObject covers the whole multipart family).
IAM_ACTIONS: Final[dict[tuple[str, str], str]] = {
    ("s3", "PutObject"): "s3:PutObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject",
    ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject",
    ("s3", "AbortMultipartUpload"): "s3:AbortMultipartUpload",
    ("s3", "ListParts"): "s3:ListMultipartUploadParts",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "GetObject"): "s3:GetObject",
    ("kinesis", "PutRecords"): "kinesis:PutRecords",
    ("kinesis", "PutRecord"): "kinesis:PutRecord",
    ("kinesis", "ListShards"): "kinesis:ListShards",
    ("kinesis", "DescribeStreamSummary"): "kinesis:DescribeStreamSummary",
}

_SERVICE_NAMES: Final = {"s3": "S3", "kinesis": "Kinesis", "sts": "STS", "iam": "IAM"}


def iam_action(service: str, operation: str) -> str:
    """The IAM action an operation needs (`s3:PutObject` for UploadPart, …)."""
    return IAM_ACTIONS.get((service, operation), f"{service}:{operation}")


def is_aws_exception(exc: BaseException) -> bool:
    """Whether `classify` understands `exc` (anything else is a bug and must propagate)."""
    return isinstance(exc, AwsError | ClientError | BotoCoreError | OSError)


def _fix_for(
    code: str,
    status: int | None,
    error: dict[str, str],
    *,
    service: str,
    operation: str,
    region: str | None,
    resource: str | None,
) -> str:
    action = iam_action(service, operation)
    on = f" on {resource}" if resource else ""
    aws_message = error.get("Message", "")
    if code in KMS_CODES or (code.startswith("AccessDenied") and "kms" in aws_message.lower()):
        return (
            f"Use a KMS key that exists and is enabled in {region or 'the bucket region'}, and "
            "let the role use it (kms:GenerateDataKey and kms:Decrypt in the role's policy and "
            "in the key policy)."
        )
    if code in ACCESS_DENIED_CODES or (status == 403 and not code):
        return (
            f"The role's permission policy must allow {action}{on}, and no bucket/stream "
            "policy, SCP or permissions boundary may deny it."
        )
    if code == "NoSuchBucket":
        bucket = error.get("BucketName", "the bucket")
        return (
            f"Create bucket {bucket} (or correct bucket_name); the role must be in the account "
            "that can write to it."
        )
    if code in ("ResourceNotFoundException", "StreamNotFound"):
        stream = f" {resource}" if resource else ""
        return f"Create the stream{stream} or correct the stream name and region."
    if code in (
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "IllegalLocationConstraintException",
    ):
        right = error.get("Region") or error.get("Endpoint")
        where = f" ({right})" if right else ""
        return f"Set region to the bucket's own region{where}."
    if code == "InvalidStorageClass":
        return (
            "Set redundancy to a storage class this bucket supports (standard, standard_ia, "
            "onezone_ia, intelligent_tiering, glacier_ir, glacier, deep_archive)."
        )
    if code == "AccessControlListNotSupported":
        return (
            "The bucket's Object Ownership is 'Bucket owner enforced', which rejects ACLs: "
            "remove acl from the endpoint."
        )
    if code in ("InvalidArgument", "InvalidRequest", "InvalidEncryptionAlgorithmError"):
        return (
            "Check server_side_encryption, server_side_encryption_kms_key_id, acl and "
            "redundancy against what the bucket accepts (AWS says: "
            f"{aws_message or code})."
        )
    if code == "AllAccessDisabled":
        return (
            "AWS has disabled all access to this bucket: contact AWS support or use another bucket."
        )
    if code in ("InvalidAccessKeyId", "UnrecognizedClientException", "InvalidClientTokenId"):
        return (
            "The credentials are not valid for this endpoint: check the vendor credentials, and "
            "that domain/region belong to the same AWS partition as the role."
        )
    if code in ("SignatureDoesNotMatch", "IncompleteSignature"):
        return (
            "Check the vendor's secret key and the host clock; for a custom domain, make sure it "
            "accepts AWS Signature Version 4."
        )
    if code == "InvalidToken":
        return "The session token is malformed or from another partition: re-check iam_role."
    if code == "RequestTimeTooSkewed":
        return "Synchronise this host's clock (NTP): AWS rejects requests more than 15 minutes off."
    if code == "NoSuchUpload":
        return (
            "None needed: the multipart upload no longer exists (aborted or expired by a "
            "lifecycle rule), so the file is rewritten from the spool."
        )
    if code in REFRESH_CODES:
        return "None needed: the session credentials are refreshed automatically."
    if code in TRANSIENT_CODES or (status is not None and (status >= 500 or status == 429)):
        return "None needed: AWS is busy or unavailable; logferry retries with backoff."
    return (
        f"Check the endpoint settings against the {operation} documentation "
        f"(AWS says: {aws_message or code})."
    )


def classify(
    exc: BaseException,
    *,
    service: str,
    operation: str,
    region: str | None,
    resource: str | None = None,
    target: str | None = None,
) -> AwsError:
    """`exc` as SetupError or TransientError with code, region and fix.

    `resource` is the IAM resource the call needs (e.g. `arn:aws:s3:::BUCKET/PREFIX*`, named in
    permission fixes); `target` what the call acted on (e.g. `s3://BUCKET/KEY`, named in the
    message). Our own AwsErrors (e.g. a credential refresh that failed) are returned unchanged.
    """
    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), AwsError):
        return exc.kwargs["error"]  # raised while connecting
    name = _SERVICE_NAMES.get(service, service)
    on = f" for {target}" if target else ""
    where = f" in {region}" if region else ""
    if isinstance(exc, ClientError):
        error = {k: str(v) for k, v in exc.response.get("Error", {}).items()}
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = error.get("Code", "") or (str(status) if status else "Unknown")
        if code.isdigit() and status is None:
            status = int(code)
        info = AwsErrorInfo(
            code=code,
            message=error.get("Message", ""),
            service=service,
            operation=operation,
            region=region,
            http_status=status,
            extra={k: v for k, v in error.items() if k not in ("Code", "Message")},
        )
        fix = _fix_for(
            code, status, error, service=service, operation=operation, region=region,
            resource=resource,
        )  # fmt: skip
        text = f"{name} {operation}{on} failed{where}: {code}"
        if info.message:
            text += f" ({info.message.rstrip('.')})"
        text += "."
        transient = is_transient(code, status)
        passing = SERVICE_TRANSIENT.get((service, code))
        if passing is not None and not transient:
            transient, fix = True, passing
        return (TransientError if transient else SetupError)(text, info, fix=fix)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        info = AwsErrorInfo(
            code=type(exc).__name__, message=str(exc), service=service, operation=operation,
            region=region,
        )  # fmt: skip
        return SetupError(
            f"{name} {operation}{on}: no usable credentials ({exc}).",
            info,
            fix="Configure the vendor credentials logferry assumes the role with.",
        )
    if isinstance(exc, SSLError):
        info = AwsErrorInfo(
            code="SSLError", message=str(exc), service=service, operation=operation, region=region
        )
        return SetupError(
            f"{name} {operation}{on}: TLS failed{where} ({exc}).",
            info,
            fix="Check domain: the endpoint's certificate must be valid for that host name.",
        )
    if isinstance(exc, ParamValidationError):
        info = AwsErrorInfo(
            code="ParamValidation", message=str(exc), service=service, operation=operation,
            region=region,
        )  # fmt: skip
        return SetupError(
            f"{name} {operation}{on}: request rejected before sending ({exc}).",
            info,
            fix="Check the endpoint settings named in the message.",
        )
    # Connection errors, timeouts, resets, truncated responses: all worth a retry.
    code = type(exc).__name__
    if isinstance(exc, BotoConnectionError | BotoCoreError | OSError):
        info = AwsErrorInfo(
            code=code, message=str(exc), service=service, operation=operation, region=region
        )
        return TransientError(
            f"{name} {operation}{on} failed{where}: {code} ({exc}).",
            info,
            fix="None needed if it passes: logferry retries; if it persists, check network "
            "access to the endpoint (domain/region).",
        )
    raise TypeError(f"classify() cannot handle {type(exc).__name__}: {exc}") from exc


def classify_code(
    code: str,
    message: str,
    *,
    service: str,
    operation: str,
    region: str | None,
    resource: str | None = None,
    target: str | None = None,
) -> AwsError:
    """An error code inside a successful answer (a PutRecords record's `ErrorCode`), classified
    exactly as the same code answered to a whole call."""
    return classify(
        ClientError({"Error": {"Code": code, "Message": message}}, operation),
        service=service,
        operation=operation,
        region=region,
        resource=resource,
        target=target,
    )
