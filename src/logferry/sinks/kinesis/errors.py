"""How a Kinesis sink turns AWS errors into setup / transient ones and remembers the last one.

The error methods of `KinesisSink` (functions taking the sink as `self`, bound in its class body
so that mypy checks them against its attributes); the classification itself is
`sinks.aws_errors`, which also knows the Kinesis codes that pass by themselves.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from logferry.errors import AwsError
from logferry.sinks.aws_errors import classify, classify_code

if TYPE_CHECKING:
    from logferry.sinks.kinesis.sink import KinesisSink


def _classify(self: KinesisSink, exc: BaseException, operation: str) -> AwsError:
    """An AWS exception (see `is_aws_exception`) as SetupError / TransientError."""
    return classify(
        exc,
        service="kinesis",
        operation=operation,
        region=self.endpoint.region,
        resource=self.stream_arn,
        target=self.stream_arn,
    )


def _classify_record_error(self: KinesisSink, code: str, message: str) -> AwsError:
    return classify_code(
        code,
        message,
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
