"""Write fencing at the destination: a file's key is written at most once.

Every S3 write that makes an object — a single-part `PutObject` and `CompleteMultipartUpload` —
carries `If-None-Match: *`, so S3 itself refuses to replace an object that is already there
(`412 PreconditionFailed`). A file's key names its endpoint incarnation and its first spool
position, and its end is decided by the data or journaled before the write that ends it, so an
object under that key holds exactly the file's lines: whoever wrote it — an earlier life of this
sink whose answer was lost, or a stale owner on another node that had not noticed it lost the
endpoint — the 412 proves the range is delivered. The sink takes it as delivered (no error, no
duplicate); after a refused completion its own upload is aborted so no parts stay billed.

What real S3 does (AWS S3 User Guide, "Conditional writes"; the botocore model's `IfNoneMatch`
on PutObject and CompleteMultipartUpload): the check is atomic with the write; it needs no
permission beyond `s3:PutObject` (the guide's policy: PutObject + AbortMultipartUpload, no
read); two conditional writes racing on one key end with one 200 and the other 412, or `409
ConditionalRequestConflict`, which AWS says to retry (the retry then meets the 412). The
emulator (moto 5.2.5) checks both headers, but not atomically with the write:
`logferry.local.patches` closes that gap for the race tests. An S3-compatible `domain` that
answers `501 NotImplemented` to the header gets unconditional writes from then on (a warning in
the log, `unfenced` in status): replays then rewrite a key with the same lines, as before.

The functions below are methods of `S3Sink` (bound in its class body, as in the sibling modules).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from logferry.errors import AwsError, TransientError

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from logferry.sinks.s3.sink import S3Sink

ALREADY_COMPLETE: Final = "LogferryAlreadyComplete"
"""Set in the result of a fenced write that S3 refused because the key exists (412)."""
PRECONDITION_FAILED: Final = "PreconditionFailed"
NOT_IMPLEMENTED: Final = "NotImplemented"
CONFLICT: Final = "ConditionalRequestConflict"
_CONFLICT_FIX: Final = (
    "None needed: another writer was completing the same key at that moment (a stale owner "
    "of this endpoint); logferry retries, and S3 then answers whether the key exists."
)


def already_complete(result: dict[str, Any]) -> bool:
    return bool(result.get(ALREADY_COMPLETE))


def _fenced(self: S3Sink, operation: str, **kwargs: Any) -> dict[str, Any]:
    """`operation` with `If-None-Match: *`; a 412 returns `{ALREADY_COMPLETE: True}`."""
    if self.stats.unfenced:
        return self._call(operation, **kwargs)
    before = (self.stats.state, self.stats.last_error)
    try:
        return self._call(operation, IfNoneMatch="*", **kwargs)
    except AwsError as exc:
        if exc.code == NOT_IMPLEMENTED or exc.info.http_status == 501:
            # An S3-compatible `domain` without conditional writes: write as before fencing
            # existed (a replay rewrites the key with the same lines) rather than never.
            _log.warning(
                "S3 %s to bucket %s: the destination answered %s to If-None-Match; writing "
                "without it from now on (a replay then rewrites a key with the same lines)",
                operation,
                self.endpoint.bucket_name,
                exc.code,
            )
            self.stats.unfenced = True
            self.stats.state, self.stats.last_error = before
            return self._call(operation, **kwargs)
        if exc.code == PRECONDITION_FAILED or exc.info.http_status == 412:
            # `_call` recorded it as an endpoint error; it is the proof of delivery instead.
            last = self.stats.last_error
            if last is not None and last.code == exc.code:
                self.stats.state, self.stats.last_error = before
            self.stats.already_complete += 1
            return {ALREADY_COMPLETE: True}
        if exc.code == CONFLICT or exc.info.http_status == 409:
            retry = TransientError(exc.message, exc.info, fix=_CONFLICT_FIX)
            self._error(retry)
            raise retry from exc
        raise


def _complete(self: S3Sink, key: str, upload_id: str, parts: list[Any]) -> dict[str, Any]:
    """CompleteMultipartUpload, fenced. When the key exists already (412), the upload is
    aborted: the range is delivered and its parts must not stay billed."""
    result = self._fenced(
        "CompleteMultipartUpload",
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
    )
    if already_complete(result):
        self._abort_upload(key, upload_id)  # NoSuchUpload (it was this upload) is fine
    return result


def _put_object(self: S3Sink, key: str, body: bytes) -> dict[str, Any]:
    """A whole file in one PutObject, fenced."""
    return self._fenced("PutObject", Key=key, Body=body, **self._put_args)
