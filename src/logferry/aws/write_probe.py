"""The S3 write probe: one implementation for `role check` / verify and the S3 sink's healthcheck.

CreateMultipartUpload under the endpoint's prefix, with the headers delivery writes with (storage
class, SSE, KMS key, ACL), then AbortMultipartUpload: it proves exactly what delivery needs
(s3:PutObject, s3:AbortMultipartUpload, kms:GenerateDataKey, s3:PutObjectAcl) with the guide's
policy and leaves nothing behind. Callers differ only in how one call is made and what happens
between the two calls:

- the role check passes `s3_call(client)` (one plain call; the report names what failed);
- the S3 sink passes its own retrying, classifying `_call` and a `created` hook that notes the
  upload ID on disk before the abort, so a kill -9 in between leaves an upload recovery aborts.

Both build their clients the same way: the role's credentials, the endpoint's target (for an
S3-compatible `domain`, its URL with the S3-compatible settings and the address guard, see
`aws/clients.py`) and `DELIVERY_CONFIG`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from logferry.aws.errors import classify, is_aws_exception, is_denied
from logferry.errors import AwsError, SetupError

__all__ = [
    "S3Call",
    "S3Target",
    "header_permissions",
    "probe_s3_write",
    "s3_call",
    "was_answered",
    "was_denied",
]

S3Call = Callable[..., Mapping[str, Any]]
"""`call(operation, **params)`: one S3 call by operation name ("CreateMultipartUpload"). May
raise botocore's errors or an already classified AwsError (the sink's retrying `_call`)."""


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    put_args: tuple[tuple[str, str], ...] = ()
    """The headers the endpoint writes with (StorageClass, SSE, KMS key, ACL): the write probe
    sends them too, so it proves what delivery needs (kms:GenerateDataKey, s3:PutObjectAcl)."""

    @property
    def resource(self) -> str:
        """The IAM resource delivery writes to (named in permission fixes)."""
        return f"arn:aws:s3:::{self.bucket}/{self.prefix}*"


def s3_call(client: BaseClient) -> S3Call:
    """`S3Call` over a plain botocore client: one call, no retry, botocore's errors raised."""

    def call(operation: str, **params: Any) -> Mapping[str, Any]:
        snake = "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
        method = getattr(client, snake)
        return method(**params)

    return call


def header_permissions(headers: Mapping[str, str]) -> str:
    """What the endpoint's headers need beyond s3:PutObject."""
    needs = []
    if headers.get("ServerSideEncryption") == "aws:kms":
        key = headers.get("SSEKMSKeyId", "the bucket's KMS key")
        needs.append(f"kms:GenerateDataKey on {key} (the key policy must allow the role too)")
    if "ACL" in headers:
        needs.append("s3:PutObjectAcl (or remove the endpoint's acl)")
    return f"; this endpoint also needs {' and '.join(needs)}" if needs else ""


def was_answered(error: AwsError) -> bool:
    """S3 answered the failed call (an AWS error), as opposed to no answer at all (refused
    connection, timeout, TLS, a refused address): the role check words the two differently."""
    return isinstance(error.__cause__, ClientError) or error.info.http_status is not None


def was_denied(error: AwsError) -> bool:
    """An IAM or resource policy said no (a denial code or a bare 403)."""
    cause = error.__cause__
    if isinstance(cause, ClientError):
        return is_denied(cause)
    return error.code in ("AccessDenied", "AccessDeniedException", "Forbidden", "403")


def _classified(exc: BaseException, operation: str, target: S3Target, key: str) -> AwsError:
    return classify(
        exc,
        service="s3",
        operation=operation,
        region=target.region,
        resource=target.resource,
        target=f"s3://{target.bucket}/{key}",
    )


def probe_s3_write(
    call: S3Call,
    target: S3Target,
    key: str,
    *,
    created: Callable[[str], None] | None = None,
) -> str:
    """Create and abort a multipart upload of `key` with the endpoint's headers.

    Returns the upload ID it created and aborted. Raises the classified AwsError
    (SetupError / TransientError) of the step that failed, `info.operation` naming it: a
    denied CreateMultipartUpload's fix names every permission the headers need; a failed
    abort's fix says how to remove the probe left open. `created(upload_id)` runs between the
    two calls; if it raises, the upload is aborted (best effort) and its error propagates.
    """
    headers = dict(target.put_args)
    try:
        answer = call("CreateMultipartUpload", Bucket=target.bucket, Key=key, **headers)
    except Exception as exc:
        if not is_aws_exception(exc):
            raise
        error = _classified(exc, "CreateMultipartUpload", target, key)
        if isinstance(error, SetupError) and was_denied(error):
            error.fix = (
                f"the role's permission policy must allow s3:PutObject on {target.resource}"
                + header_permissions(headers)
            )
        raise error from exc
    upload_id = str(answer["UploadId"])
    if created is not None:
        try:
            created(upload_id)
        except BaseException:
            with contextlib.suppress(Exception):
                call("AbortMultipartUpload", Bucket=target.bucket, Key=key, UploadId=upload_id)
            raise
    try:
        call("AbortMultipartUpload", Bucket=target.bucket, Key=key, UploadId=upload_id)
    except Exception as exc:
        if not is_aws_exception(exc):
            raise
        error = _classified(exc, "AbortMultipartUpload", target, key)
        remove = (
            f"aws s3api abort-multipart-upload --bucket {target.bucket} --key '{key}' "
            f"--upload-id {upload_id}"
        )
        if isinstance(error, SetupError):
            error.fix = (
                f"allow s3:AbortMultipartUpload on {target.resource}; then remove the probe "
                f"with: {remove}"
            )
        raise error from exc
    return upload_id
