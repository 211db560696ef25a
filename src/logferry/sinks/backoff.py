"""AWS calls retried with the one backoff policy (`logferry/backoff.py`), interruptible by a stop
event.

Shared by the sinks (S3, Kinesis) so every retry loop behaves the same: attempt n waits a
uniform random time in [0, min(cap, base * 2**n)] (`Backoff`'s default "full" jitter). A stop
event cuts any wait short so shutdown is never delayed by a sleeping retry; `sleep` is injectable
so tests run without real waits. `Backoff` and `wait` live in `logferry.backoff` (every layer
uses them) and are re-exported here for the sinks' existing imports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from logferry.backoff import Backoff, wait
from logferry.errors import AwsError, TransientError

__all__ = ["RETRYABLE_TYPES", "Backoff", "Stopped", "retry_call", "wait"]

RETRYABLE_TYPES: tuple[type[BaseException], ...] = (AwsError, ClientError, BotoCoreError, OSError)
"""Exceptions `retry_call` classifies; anything else is a bug and propagates untouched."""

T = TypeVar("T")


class Stopped(TransientError):
    """The stop event was set while waiting to retry (shutdown): nothing was lost, the caller
    keeps the data. Carries the transient error that caused the wait."""

    def __init__(self, error: AwsError) -> None:
        super().__init__(
            f"Stopped while retrying after: {error.message}", error.info, fix=error.fix
        )
        self.error = error


def retry_call(
    call: Callable[[], T],
    *,
    classify: Callable[[BaseException], AwsError],
    policy: Backoff,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[AwsError, float], None] | None = None,
    refresh: Callable[[AwsError], bool] | None = None,
    final: Callable[[AwsError], bool] | None = None,
) -> T:
    """Run `call`, retrying TransientErrors with backoff; raise SetupErrors at once.

    `classify` turns any exception into an AwsError (SetupError / TransientError). `refresh`,
    when given, is asked about each transient error first: if it returns True (e.g. it refreshed
    expired credentials) the call is retried once immediately, without waiting. After
    `policy.max_attempts` calls the last TransientError is raised; `Stopped` if `stop` is set
    during a wait. `final(error)` → True raises a transient error at once (the caller has a
    better remedy than repeating the call, e.g. S3 NoSuchUpload).
    """
    attempt = 0
    refreshed = False
    while True:
        try:
            return call()
        except RETRYABLE_TYPES as exc:
            error = classify(exc)
            if not isinstance(error, TransientError) or (final is not None and final(error)):
                _reraise(error, exc)
            attempt += 1
            if refresh is not None and not refreshed and refresh(error):
                refreshed = True
                if on_retry is not None:
                    on_retry(error, 0.0)
                continue
            if attempt >= policy.max_attempts:
                _reraise(error, exc)
            delay = policy.delay(attempt - 1)
            if on_retry is not None:
                on_retry(error, delay)
            if not wait(delay, stop=stop, sleep=sleep):
                raise Stopped(error) from exc


def _reraise(error: AwsError, cause: BaseException) -> NoReturn:
    if error is cause:
        raise error
    raise error from cause
