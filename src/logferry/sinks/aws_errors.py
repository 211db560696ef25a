"""The sinks' view of AWS errors: one classifier for the whole product lives in
`logferry.aws.errors` (provision, the STS broker, the role check and both sinks use it); this
module keeps the sinks' import path."""

from __future__ import annotations

from logferry.aws.errors import (
    IAM_ACTIONS,
    KMS_CODES,
    REFRESH_CODES,
    SERVICE_TRANSIENT,
    THROTTLING_CODES,
    TRANSIENT_CODES,
    classify,
    classify_code,
    iam_action,
    is_aws_exception,
)

__all__ = [
    "IAM_ACTIONS",
    "KMS_CODES",
    "REFRESH_CODES",
    "SERVICE_TRANSIENT",
    "THROTTLING_CODES",
    "TRANSIENT_CODES",
    "classify",
    "classify_code",
    "iam_action",
    "is_aws_exception",
]
