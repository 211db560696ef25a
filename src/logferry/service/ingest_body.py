"""Read an ingest body once, within the size limit, gunzipped: shared by every ingest route.

The limit is enforced while reading (declared Content-Length first, then the bytes as they
arrive, then the decompressed size), so no route ever holds more than `max_body` bytes plus one
read. Each route words the refusal in its own protocol (plain JSON for /v1/ingest, a
google.rpc.Status for OTLP); the status, the reason (the metric label) and the text are shared.
So are the answers for spool failures at ingest (`storage_refusal`): the spool raises what the
disk said, and the routes turn it into 503/507 + Retry-After instead of a 500.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from logferry.errors import LogferryError
from logferry.ingest.lines import BadGzip, BodyTooLarge, TooManyGzipMembers, gunzip_limited
from logferry.spool import SpoolBroken, SpoolClosed, SpoolError, SpoolFull

SPLIT_FIX = "split the lines into several requests"


@dataclass
class BodyRefused(LogferryError):
    """The body cannot be taken: HTTP `status`, counted under `reason`."""

    status: int
    reason: str
    message: str
    fix: str

    def __str__(self) -> str:
        return self.message


async def read_raw(request: Request, max_body: int, *, fix: str = SPLIT_FIX) -> bytes:
    """The request body as sent (still compressed), within the limit; raises BodyRefused."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise BodyRefused(
            413, "too_large", f"body is {declared} bytes; the limit is {max_body}", fix
        )
    parts: list[bytes] = []
    size = 0
    try:
        async for piece in request.stream():
            size += len(piece)
            if size > max_body:
                raise BodyRefused(
                    413, "too_large", f"body exceeds the limit of {max_body} bytes", fix
                )
            parts.append(piece)
    except ClientDisconnect:
        # A sender that dies mid-body is ordinary traffic, not a server error: one counted,
        # logged refusal instead of uvicorn's "Exception in ASGI application" traceback.
        expected = f" of {declared}" if declared and declared.isdigit() else ""
        raise BodyRefused(
            400,
            "client_disconnected",
            f"the client disconnected after {size}{expected} body bytes; "
            "nothing of this request was kept",
            "resend the whole request: a request is accepted whole or not at all",
        ) from None
    return b"".join(parts)


def is_gzip(request: Request) -> bool:
    return request.headers.get("content-encoding", "").strip().lower() in ("gzip", "x-gzip")


def decode_body(raw: bytes, encoding: str, max_body: int, *, fix: str = SPLIT_FIX) -> bytes:
    """Gunzip when `encoding` says so (CPU-heavy: call it in a thread); raises BodyRefused."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        try:
            return gunzip_limited(raw, max_body)
        except BodyTooLarge:
            raise BodyRefused(
                413, "too_large", f"decompressed body exceeds {max_body} bytes", fix
            ) from None
        except TooManyGzipMembers as exc:
            raise BodyRefused(400, "bad_gzip", exc.message, exc.fix or "") from None
        except BadGzip as exc:
            raise BodyRefused(
                400, "bad_gzip", str(exc), "send valid gzip or drop Content-Encoding"
            ) from None
    if encoding not in ("", "identity"):
        raise BodyRefused(
            415,
            "bad_encoding",
            f"Content-Encoding {encoding!r} is not supported",
            "use gzip or no encoding",
        )
    return raw


# -- storage failures --------------------------------------------------------------------------

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_FILES = (errno.EMFILE, errno.ENFILE)
_OPERATOR = "the vendor's operator must"


@dataclass
class StorageRefusal:
    """Why the spool could not take a request: HTTP `status` with a Retry-After of `retry_after`
    seconds. Nothing of the request was stored (except `spool_unconfirmed`: the message says
    it may yet be), and what was acknowledged before stays."""

    status: int
    reason: str
    message: str
    fix: str
    retry_after: int


def storage_refusal(exc: BaseException) -> StorageRefusal | None:
    """The answer for a spool failure at ingest; None for SpoolFull over a byte limit (the
    routes' own 429) and for anything that is not a storage failure.

    ENOSPC/EDQUOT: 507 Insufficient Storage. EMFILE/ENFILE, EROFS, EIO, a broken or closed
    spool: 503. Each with Retry-After, since all of them can end without the sender's help.
    """
    cause = exc.__cause__ if isinstance(exc, SpoolFull) else exc
    if isinstance(exc, SpoolFull) and not isinstance(cause, OSError):
        return None  # a byte limit or quota: the route's 429
    if isinstance(cause, OSError):
        code = cause.errno
        if code in _DISK_FULL:
            return StorageRefusal(
                507,
                "disk_full",
                "the spool's disk is full; nothing of this request was kept",
                f"retry later; {_OPERATOR} free space under spool.dir or lower spool.max_bytes",
                30,
            )
        if code in _NO_FILES:
            return StorageRefusal(
                503,
                "too_many_open_files",
                f"the server ran out of file descriptors ({errno.errorcode.get(code or 0, code)})"
                "; nothing of this request was kept",
                f"retry later; {_OPERATOR} raise the open-file limit (LimitNOFILE / ulimit -n)",
                5,
            )
        name = errno.errorcode.get(code or 0, "OSError")
        return StorageRefusal(
            503,
            "spool_io_error",
            f"the spool could not be written ({name}: {cause.strerror or cause}); "
            "nothing of this request was kept",
            f"retry later; {_OPERATOR} check the disk under spool.dir",
            30,
        )
    if isinstance(exc, SpoolBroken):
        return StorageRefusal(
            503,
            "spool_broken",
            "this endpoint's spool stopped after a storage error; nothing of this request was kept",
            f"retry later; {_OPERATOR} check the disk under spool.dir, then restart serve",
            60,
        )
    if isinstance(exc, SpoolClosed):
        return StorageRefusal(
            503,
            "spool_closed",
            "this endpoint's spool is being closed or reopened; nothing of this request was kept",
            "retry in a moment",
            1,
        )
    if isinstance(exc, SpoolError) and getattr(exc, "maybe_stored", False):
        hint = getattr(exc, "retry_after", None)
        return StorageRefusal(
            503,
            "spool_unconfirmed",
            f"the spool did not confirm the request in time ({exc.message}); it is not "
            "acknowledged, but the servers may still store it when they recover, so a retry "
            "may deliver some of its lines twice",
            f"retry later (at least once, as after a lost 202); {_OPERATOR} check that the "
            "NATS servers have a quorum",
            max(1, math.ceil(hint)) if isinstance(hint, int | float) else 30,
        )
    if isinstance(exc, SpoolError):
        hint = getattr(exc, "retry_after", None)  # NATS: a leader election takes 5-7 s
        return StorageRefusal(
            503,
            "spool_error",
            f"the spool refused the request ({exc.message}); nothing of this request was kept",
            f"retry later; {_OPERATOR} check serve's log",
            max(1, math.ceil(hint)) if isinstance(hint, int | float) else 30,
        )
    return None
