"""Read an ingest body once, within the size limit, gunzipped: shared by every ingest route.

The limit is enforced while reading (declared Content-Length first, then the bytes as they
arrive, then the decompressed size), so no route ever holds more than `max_body` bytes plus one
read. Each route words the refusal in its own protocol (plain JSON for /v1/ingest, a
google.rpc.Status for OTLP); the status, the reason (the metric label) and the text are shared.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from logferry.ingest.lines import BadGzip, BodyTooLarge, gunzip_limited

SPLIT_FIX = "split the lines into several requests"


@dataclass
class BodyRefused(Exception):
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


async def read_body(request: Request, max_body: int, *, fix: str = SPLIT_FIX) -> bytes:
    """The request body, decompressed (in a thread) when `Content-Encoding: gzip`."""
    raw = await read_raw(request, max_body, fix=fix)
    encoding = request.headers.get("content-encoding", "")
    if not is_gzip(request):
        return decode_body(raw, encoding, max_body, fix=fix)
    return await asyncio.to_thread(decode_body, raw, encoding, max_body, fix=fix)
