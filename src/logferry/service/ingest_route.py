"""`POST /v1/ingest/{customer_id}/{name}`: the one handler, reached two ways.

A vendor's traffic is mostly small requests (many customers, a few lines each). Measured in
process on 20-line bodies (cProfile, bench/ingest_request_cpu.py), FastAPI's routing, dependency
solving and response handling took about three quarters of such a request's CPU and our own
handler a fifth. So `IngestFastPath` answers this one route in plain ASGI in front of the FastAPI
app; every other path, and any request it does not recognise exactly, goes on to FastAPI.

The FastAPI route stays (it is what the OpenAPI document describes) and calls the same
`ingest_request`, and authentication is the same `authenticate`, so the two cannot drift apart:
same statuses, same JSON bodies, same headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.exception_handlers import http_exception_handler
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from logferry.ingest.lines import normalize
from logferry.service.ingest_body import (
    BodyRefused,
    StorageRefusal,
    decode_body,
    is_gzip,
    read_raw,
    storage_refusal,
)
from logferry.service.limits import retry_after_header
from logferry.service.logs import log
from logferry.service.runtime import Service, UnknownEndpoint
from logferry.spool import SpoolError, SpoolFull

INGEST_PREFIX = "/v1/ingest/"

logger = logging.getLogger("logferry.ingest")

NORMALIZE_INLINE_BYTES = 64 * 1024
"""Bodies above this are normalised in a worker thread so the event loop keeps serving."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is. Internal only (never parsed or rendered), so a plain dataclass: a
    pydantic model here cost a validation on every ingest request."""

    admin: bool
    customer_id: str | None = None


_ADMIN = Principal(admin=True)


class IngestResult(BaseModel):
    accepted: int
    empty_skipped: int = 0
    truncated: int = 0
    invalid_utf8: int = 0


def problem(status: int, message: str, fix: str | None = None, **extra: Any) -> JSONResponse:
    """The error body every route answers with: {"error", "fix", ...}."""
    body: dict[str, Any] = {"error": message}
    if fix:
        body["fix"] = fix
    body.update(extra)
    return JSONResponse(body, status_code=status)


def too_many(message: str, wait: float, fix: str) -> JSONResponse:
    """429 with Retry-After (whole seconds, rounded up) in the header and the body."""
    retry = retry_after_header(wait)
    response = problem(429, message, f"{fix}; retry after {retry} s", retry_after=int(retry))
    response.headers["Retry-After"] = retry
    return response


def over_quota(exc: SpoolFull) -> JSONResponse:
    """429 for a byte limit (a customer's quota, the spool's), with its Retry-After."""
    return too_many(
        f"{exc.message}; nothing of this request was kept",
        exc.retry_after,
        "wait for delivery to catch up",
    )


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(service: Service, authorization: str) -> Principal:
    """Who an `Authorization` header is; raises HTTPException 401."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    token = token.strip()
    if not token.isascii() or not token.isprintable():  # ours are ASCII: never a 500
        raise _unauthorized("unknown or revoked token")
    if service.admin_token and hmac.compare_digest(token, service.admin_token):
        return _ADMIN
    customer = service.store.cached_customer_for_token(token)
    if customer is None:  # SQLite (synchronous=FULL) stays off the event loop
        customer = await asyncio.to_thread(service.store.customer_for_token, token)
    if customer is None:
        raise _unauthorized("unknown or revoked token")
    return Principal(admin=False, customer_id=customer)


def check_owner(who: Principal, customer_id: str) -> None:
    """A customer's token reaches only that customer's paths; raises HTTPException 403."""
    if not who.admin and who.customer_id != customer_id:
        raise HTTPException(403, f"this token does not belong to customer {customer_id!r}")


def storage_failed(
    service: Service, exc: BaseException, customer_id: str, name: str
) -> StorageRefusal | None:
    """Count and log a spool failure at ingest; its answer (None: not a storage failure)."""
    refusal = storage_refusal(exc)
    if refusal is not None:
        service.metrics.ingest_rejected.labels(refusal.reason).inc()
        log(
            logger,
            logging.ERROR,
            f"ingest refused ({refusal.status}): {refusal.message}: {exc}",
            customer=customer_id,
            endpoint=name,
        )
    return refusal


def _storage_answer(refusal: StorageRefusal) -> JSONResponse:
    response = problem(
        refusal.status, refusal.message, refusal.fix, retry_after=refusal.retry_after
    )
    response.headers["Retry-After"] = str(refusal.retry_after)
    return response


def quota_refusal_unread(
    service: Service, request: Request, customer_id: str, max_body: int
) -> SpoolFull | None:
    """A body whose declared size cannot fit the customer's quota (or the spool) now: refused
    before it is read, decompressed and normalised, so a tenant flooding past its quota costs
    the server a request head per body (measured in docs/scale-out.md, noisy neighbour). What
    is appended is at least the declared size (gzip only grows it) but for lines cut at
    max_line_bytes and skipped empty lines, so this refuses what the append would refuse, but
    for such a body that would just have fit: it gets the 429 a moment early. OTLP uses it
    too: its JSON lines are larger than the protobuf or JSON they come from."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or not 0 < int(declared) <= max_body:
        return None  # chunked, empty, or the 413 read_raw gives
    return service.quota_refusal(customer_id, int(declared))


def _over_rate(customer_id: str, wait: float) -> JSONResponse:
    return too_many(
        f"customer {customer_id!r} is over its ingest rate; nothing was kept",
        wait,
        "send slower or ask for a higher ingest_rate_bytes / ingest_rate_lines",
    )


_ACCEPTED_JSON = '{"accepted":%d,"empty_skipped":%d,"truncated":%d,"invalid_utf8":%d}'


def accepted_response(
    accepted: int, empty_skipped: int = 0, truncated: int = 0, invalid_utf8: int = 0
) -> Response:
    """202 and the counts: the bytes FastAPI renders for `IngestResult` (compact JSON, fields
    in order; tests/test_ingest_route.py pins them), formatted directly because building and
    dumping the model was a measurable part of a small request's CPU."""
    body = _ACCEPTED_JSON % (accepted, empty_skipped, truncated, invalid_utf8)
    return Response(body.encode(), 202, media_type="application/json")


async def ingest_request(
    service: Service, request: Request, customer_id: str, name: str
) -> Response:
    """Read, check, normalise and durably append one body; 202 only once it is durable.

    The caller has authenticated the request for `customer_id`.
    """
    max_body = int(service.config.server.max_body_bytes)  # an int once validated
    try:
        service.endpoint(customer_id, name)
    except UnknownEndpoint as exc:
        return problem(404, exc.message, exc.fix)
    wait = service.ingest_wait(customer_id)
    if wait > 0:  # refused before reading the body: a flood costs its sender, not the loop
        service.metrics.ingest_rejected.labels("rate_limited").inc()
        return _over_rate(customer_id, wait)
    full = quota_refusal_unread(service, request, customer_id, max_body)
    if full is not None:
        service.metrics.ingest_rejected.labels("spool_full").inc()
        return over_quota(full)
    try:
        body = await read_raw(request, max_body)
    except BodyRefused as exc:
        service.metrics.ingest_rejected.labels(exc.reason).inc()
        if exc.reason == "client_disconnected":
            log(logger, logging.WARNING, exc.message, customer=customer_id, endpoint=name)
        return problem(exc.status, exc.message, exc.fix)
    gzipped = is_gzip(request)
    heavy = gzipped or len(body) > NORMALIZE_INLINE_BYTES
    # CPU-heavy bodies take a slot: one per customer, few in all, so a tenant's flood
    # queues behind itself and the event loop keeps most of the GIL for everybody else.
    async with service.heavy_slot(customer_id) if heavy else contextlib.nullcontext():
        try:
            encoding = request.headers.get("content-encoding", "")
            if gzipped:
                body = await asyncio.to_thread(decode_body, body, encoding, max_body)
            else:
                body = decode_body(body, encoding, max_body)
        except BodyRefused as exc:
            service.metrics.ingest_rejected.labels(exc.reason).inc()
            return problem(exc.status, exc.message, exc.fix)
        wait = service.ingest_wait(customer_id, len(body))
        if wait > 0:
            service.metrics.ingest_rejected.labels("rate_limited").inc()
            return _over_rate(customer_id, wait)
        max_line = int(service.config.server.max_line_bytes)
        if len(body) > NORMALIZE_INLINE_BYTES:
            norm = await asyncio.to_thread(normalize, body, max_line_bytes=max_line)
        else:
            norm = normalize(body, max_line_bytes=max_line)
    service.charge_lines(customer_id, norm.lines)
    if norm.lines:
        try:
            await service.ingest(customer_id, name, norm.data, norm.lines, "http", normalized=True)
        except (SpoolError, OSError) as exc:
            refusal = storage_failed(service, exc, customer_id, name)
            if refusal is not None:
                return _storage_answer(refusal)
            if not isinstance(exc, SpoolFull):
                raise
            service.metrics.ingest_rejected.labels("spool_full").inc()
            return over_quota(exc)
    adjusted = service.metrics.ingest_adjusted
    for kind, count in (
        ("empty_skipped", norm.empty_skipped),
        ("truncated", norm.truncated),
        ("invalid_utf8", norm.invalid_utf8),
    ):
        if count:
            adjusted.labels(customer_id, name, kind).inc(count)
    return accepted_response(norm.lines, norm.empty_skipped, norm.truncated, norm.invalid_utf8)


def ingest_target(scope: Scope) -> tuple[str, str] | None:
    """(customer_id, name) when `scope` is exactly what the FastAPI route would match."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(INGEST_PREFIX):
        return None
    customer_id, slash, name = path[len(INGEST_PREFIX) :].partition("/")
    # The route's parameters are `[^/]+` each: anything else (a trailing slash, an extra
    # segment, an empty one) is FastAPI's to answer (redirect or 404).
    if not slash or not customer_id or not name or "/" in name:
        return None
    return customer_id, name


class IngestFastPath:
    """ASGI app in front of FastAPI that answers the ingest route itself (see the module doc)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = ingest_target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        customer_id, name = target
        request = Request(scope, receive)
        response: Response
        try:
            who = await authenticate(self.service, request.headers.get("authorization", ""))
            check_owner(who, customer_id)
            response = await ingest_request(self.service, request, customer_id, name)
        except HTTPException as exc:
            response = await http_exception_handler(request, exc)
        except UnknownEndpoint as exc:  # deleted while this request was in flight
            response = problem(404, exc.message, exc.fix)
        await response(scope, receive, send)
