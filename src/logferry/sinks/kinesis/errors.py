"""How a Kinesis sink turns AWS errors into setup / transient ones and remembers the last one.

The `ErrorState` mixin of `KinesisSink`; the classification itself is `sinks.aws_errors`, with
the Kinesis codes that pass by themselves turned transient here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from logferry.errors import AwsError, SetupError, TransientError
from logferry.sinks.aws_errors import classify

if TYPE_CHECKING:
    from logferry.sinks.kinesis.sink import KinesisSink


class ErrorState:
    """`KinesisSink`'s error half: classify, note transient errors, keep the setup error."""

    def _classify(self: KinesisSink, exc: BaseException, operation: str) -> AwsError:
        """An AWS exception (see `is_aws_exception`) as SetupError / TransientError."""
        error = classify(
            exc,
            service="kinesis",
            operation=operation,
            region=self.endpoint.region,
            resource=self.stream_arn,
            target=self.stream_arn,
        )
        if isinstance(error, SetupError) and error.code in _KINESIS_TRANSIENT:
            return TransientError(error.message, error.info, fix=_KINESIS_TRANSIENT[error.code])
        return error

    def _classify_record_error(self: KinesisSink, code: str, message: str) -> AwsError:
        return classify(
            ClientError({"Error": {"Code": code, "Message": message}}, "PutRecords"),
            service="kinesis",
            operation="PutRecords",
            region=self.endpoint.region,
            resource=self.stream_arn,
            target=self.stream_arn,
        )

    def _note_transient(self: KinesisSink, error: AwsError) -> None:
        self._retrying = True
        self.stats.last_error = str(error)
        self.stats.last_error_at = time.time()

    def _set_error(self: KinesisSink, error: AwsError) -> None:
        self._error = error
        self.stats.last_error = str(error)
        self.stats.last_error_at = time.time()


_KINESIS_TRANSIENT: dict[str, str] = {
    "ResourceInUseException": "None needed: the stream is being created or updated; logferry "
    "retries.",
    "ExpiredNextTokenException": "None needed: logferry lists the shards again from the start.",
}
"""Kinesis codes the shared classifier treats as setup errors but that pass by themselves."""
