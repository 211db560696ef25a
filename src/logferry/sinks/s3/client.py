"""The S3 client of one sink: calls with retry, error classification and credential refresh.

The AWS-call methods of `S3Sink` (functions taking the sink as `self`, bound in its class body
so that mypy checks them against its attributes). Every AWS call goes through `_call`, which
classifies errors with `sinks.aws_errors` (setup vs transient), retries with `sinks.backoff`,
and records the outcome in the sink's stats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from botocore.client import BaseClient
from botocore.credentials import RefreshableCredentials

from logferry.aws.sts_credentials import StsCredentials
from logferry.errors import AwsError, SetupError, TransientError
from logferry.sinks.aws_errors import REFRESH_CODES, classify
from logferry.sinks.backoff import retry_call
from logferry.sinks.base import check_holds
from logferry.sinks.s3.stats import LastError

if TYPE_CHECKING:
    from logferry.sinks.s3.sink import S3Sink

_NO_RETRY_CODES: Final = frozenset({"NoSuchUpload"})
REWRITE_CODES: Final = frozenset({"NoSuchUpload", "InvalidPart", "InvalidPartOrder"})
"""Outcomes the sink handles itself by rewriting the file from the spool (not endpoint errors)."""


def _client(self: S3Sink) -> BaseClient:
    if self._s3 is None:
        # A `domain` comes with the clients' target (registry): AwsClients then adds the
        # S3-compatible settings and the address guard, exactly as for the role check.
        url = self.endpoint.endpoint_url
        if url is not None and self._clients.target.customer_url("s3") != url:
            raise ValueError(f"clients for S3 domain {url!r} must be made for that target")
        self._s3 = self._clients.client("s3", self._region)
        self._s3.meta.events.register_last(
            "before-call.s3", _put_without_expect, unique_id=_PUT_HANDLER
        )  # idempotent (unique_id): the sinks of one role may share a client
    return self._s3


def _call(self: S3Sink, operation: str, **kwargs: Any) -> dict[str, Any]:
    method = getattr(self._client(), _snake(operation))
    kwargs["Bucket"] = self.endpoint.bucket_name
    target = f"s3://{self.endpoint.bucket_name}/{kwargs.get('Key', '')}"

    def call() -> dict[str, Any]:
        check_holds(self._holds, operation, target)  # every attempt: a retry may come late
        return method(**kwargs)  # type: ignore[no-any-return]  # botocore is untyped

    def classify_error(exc: BaseException) -> AwsError:
        return classify(
            exc,
            service="s3",
            operation=operation,
            region=self._region,
            resource=self.endpoint.resource_arn,
            target=target,
        )

    try:
        return retry_call(
            call,
            classify=classify_error,
            policy=self._backoff,
            stop=self._stop,
            sleep=self._sleep,
            on_retry=self._on_retry,
            refresh=self._refresh,
            final=lambda e: e.code in _NO_RETRY_CODES,
        )
    except AwsError as exc:
        if exc.code in REWRITE_CODES:
            raise  # recover() rewrites the file from the spool: not an endpoint problem
        if isinstance(exc, SetupError) and self.endpoint.acl and exc.code == "AccessDenied":
            exc.fix = (
                f"{exc.fix} With acl set, the policy must also allow s3:PutObjectAcl "
                f"on {self.endpoint.resource_arn}."
            )
        self._error(exc)
        raise


def _on_retry(self: S3Sink, error: AwsError, delay: float) -> None:
    self.stats.retries += 1
    self.stats.state = "retrying"
    self.stats.last_error = LastError(
        error.code, error.message, error.fix, self._clock(), transient=True
    )


def _refresh(self: S3Sink, error: AwsError) -> bool:
    """Expired session token: refresh refreshable credentials now, then retry at once.

    The broker's credentials (`StsCredentials`) refresh on demand; any other refreshable
    credentials refresh through botocore's public path when inside their refresh windows.
    """
    if error.code not in REFRESH_CODES:
        return False
    creds = self._clients.session.get_credentials()
    if isinstance(creds, StsCredentials):
        creds.force_refresh()
    elif isinstance(creds, RefreshableCredentials):
        creds.get_frozen_credentials()
    return True


def _error(self: S3Sink, exc: AwsError) -> None:
    transient = isinstance(exc, TransientError)
    self.stats.last_error = LastError(
        exc.code, exc.message, exc.fix, self._clock(), transient=transient
    )
    self.stats.state = "retrying" if transient else "error"


def _success(self: S3Sink, key: str | None) -> None:
    self.stats.state = "ok"
    self.stats.last_success = self._clock()
    if key is not None:
        self.stats.last_key = key


_PUT_HANDLER: Final = "logferry-put-without-expect"


def _put_without_expect(model: Any, params: dict[str, Any], **_: Any) -> None:
    """Send a PutObject's body with its headers instead of after `100 Continue`.

    botocore asks for `Expect: 100-continue` on a PutObject (it turns a bytes body into a file,
    and every file-like body gets the header). That costs a round trip to S3 before the body
    goes out, and botocore reads the interim answer byte by byte on an unbuffered socket file:
    measured against the emulator, 27 socket reads and a poll per PutObject instead of 1, each a
    GIL hand-off, and ≈ 6 % of the call's Python work. Our objects are at most one part's size,
    and our UploadPart bodies (bytearrays, which botocore leaves as they are) never carried
    the header either.
    """
    if model.name == "PutObject":
        params.get("headers", {}).pop("Expect", None)


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
