"""OTLP/HTTP logs ingest: `POST /v1/otlp/{customer_id}/{name}/v1/logs`.

An OpenTelemetry exporter's base endpoint is `http://HOST/v1/otlp/{customer_id}/{name}` (the
exporter appends `/v1/logs`). Each LogRecord becomes one JSON line (logferry.ingest.otlp) that
takes the same path as /v1/ingest: the same body limits and gzip handling, the same line rules,
the same spool append, durable before the 200, and the same tenant limits: the customer's
ingest rate (checked before the body is read; OTLP charges the larger of body and output
bytes) and, for gzip or large bodies, the customer's heavy slot around decoding, which runs in a
thread. Answers follow the OTLP/HTTP specification: 200 + ExportLogsServiceResponse in the
request's encoding (partial_success when records were dropped), 429 + Retry-After when over the
rate or the spool is full, 503 + Retry-After when the spool's storage fails (a full disk too:
OTLP exporters retry 429/502/503/504 only, and would drop the data on a 507), 400 for an
undecodable or too deeply nested body and 413 over a size bound (not retryable), each error
with a google.rpc.Status body.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2

from logferry.ingest.lines import Normalized, normalize
from logferry.ingest.otlp import (
    JSON_TYPE,
    PROTOBUF_TYPE,
    BadOtlpBody,
    Converted,
    Encoding,
    TooBig,
    UnsupportedContentType,
    decode_request,
    encode,
    encoding_of,
    export_response,
    status_message,
    to_lines,
)
from logferry.service.ingest_body import BodyRefused, decode_body, is_gzip, read_raw
from logferry.service.ingest_route import (
    NORMALIZE_INLINE_BYTES,
    quota_refusal_unread,
    storage_failed,
)
from logferry.service.limits import retry_after_header
from logferry.service.runtime import Service, UnknownEndpoint
from logferry.spool import SpoolError, SpoolFull

_MEDIA = {"protobuf": PROTOBUF_TYPE, "json": JSON_TYPE}
_GRPC_CODE = {
    400: code_pb2.INVALID_ARGUMENT,
    404: code_pb2.NOT_FOUND,
    413: code_pb2.INVALID_ARGUMENT,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}
OUTPUT_FLOOR_BYTES = 4 << 20
"""A request may always produce this many bytes of lines, whatever its body's size."""
SPLIT_FIX = "export fewer log records per request (a smaller batch size)"

_REQUEST_BODY = {
    "description": "An OTLP ExportLogsServiceRequest, protobuf or OTLP/JSON; "
    "`Content-Encoding: gzip` accepted.",
    "required": True,
    "content": {
        PROTOBUF_TYPE: {"schema": {"type": "string", "format": "binary"}},
        JSON_TYPE: {"schema": {"type": "object"}},
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Durable. An ExportLogsServiceResponse in the request's encoding; "
        "partialSuccess names the records that were dropped and why.",
        "content": {PROTOBUF_TYPE: {}, JSON_TYPE: {}},
    },
    400: {
        "description": "the body is not an ExportLogsServiceRequest, or nests AnyValues too "
        "deeply (google.rpc.Status)"
    },
    404: {"description": "no such endpoint (google.rpc.Status)"},
    413: {
        "description": "body, record count or output over its bound; nothing kept "
        "(google.rpc.Status)"
    },
    415: {"description": "Content-Type is not application/x-protobuf or application/json"},
    429: {
        "description": "over the customer's ingest rate or spool quota: retry after "
        "Retry-After seconds (google.rpc.Status)"
    },
    503: {
        "description": "the spool's storage failed (disk full, no file descriptors, I/O "
        "error): retry after Retry-After seconds (google.rpc.Status)"
    },
}


def output_limit(body_bytes: int, ratio: float, most: int) -> int:
    """Most bytes of lines a request with a `body_bytes` (decompressed) body may produce:
    `ratio` x the body, at least OUTPUT_FLOOR_BYTES, at most `most` (itself >= the floor)."""
    return max(OUTPUT_FLOOR_BYTES, min(int(body_bytes * ratio), most))


def _status(
    http: int, message: str, encoding: Encoding, *, retry_after: int | None = None
) -> Response:
    """An OTLP error answer: a google.rpc.Status in the request's encoding."""
    status = status_message(_GRPC_CODE.get(http, code_pb2.UNKNOWN), message)
    headers: dict[str, str] = {}
    if retry_after is not None:
        info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=retry_after))
        status.details.add().Pack(info)
        headers["Retry-After"] = str(retry_after)
    return Response(
        encode(status, encoding), status_code=http, media_type=_MEDIA[encoding], headers=headers
    )


def otlp_router(service: Service, authorize: Callable[..., Any]) -> APIRouter:
    """The OTLP routes; `authorize` is the API's customer-or-admin bearer-token dependency."""
    router = APIRouter(tags=["ingest"])
    server = service.config.server
    max_body = int(server.max_body_bytes)  # ints once validated (ServerConfig._size)
    max_line = int(server.max_line_bytes)
    rejected_requests = service.metrics.ingest_rejected
    records = service.metrics.otlp_records

    def over_rate(customer_id: str, wait: float, encoding: Encoding) -> Response:
        rejected_requests.labels("rate_limited").inc()
        message = (
            f"customer {customer_id!r} is over its ingest rate; nothing was kept; send slower "
            "or ask for a higher ingest_rate_bytes / ingest_rate_lines"
        )
        return _status(429, message, encoding, retry_after=int(retry_after_header(wait)))

    def spool_full(exc: SpoolFull, encoding: Encoding) -> Response:
        rejected_requests.labels("spool_full").inc()
        retry = max(1, round(exc.retry_after))
        message = f"{exc.message}; nothing of this request was kept"
        return _status(429, message, encoding, retry_after=retry)

    @router.post(
        "/v1/otlp/{customer_id}/{name}/v1/logs",
        summary="OTLP/HTTP logs: one JSON line per LogRecord; 200 only once they are durable.",
        response_class=Response,
        responses=_RESPONSES,
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def otlp_logs(
        customer_id: str, name: str, request: Request, _: Any = Depends(authorize)
    ) -> Response:
        received = time.time_ns()
        try:
            encoding = encoding_of(request.headers.get("content-type", ""))
        except UnsupportedContentType as exc:
            rejected_requests.labels("bad_content_type").inc()
            return _status(415, f"{exc.message}; {exc.fix}", "json")
        try:
            service.endpoint(customer_id, name)
        except UnknownEndpoint as exc:
            return _status(404, f"{exc.message} {exc.fix or ''}".strip(), encoding)
        wait = service.ingest_wait(customer_id)
        if wait > 0:  # refused before reading the body, as /v1/ingest does
            return over_rate(customer_id, wait, encoding)
        full = quota_refusal_unread(service, request, customer_id, max_body)
        if full is not None:
            return spool_full(full, encoding)
        try:
            raw = await read_raw(request, max_body, fix=SPLIT_FIX)
        except BodyRefused as exc:
            rejected_requests.labels(exc.reason).inc()
            return _status(exc.status, f"{exc.message}; {exc.fix}", encoding)
        content_encoding = request.headers.get("content-encoding", "")
        gzipped = is_gzip(request)
        heavy = gzipped or len(raw) > NORMALIZE_INLINE_BYTES

        def convert(body: bytes) -> tuple[Converted, Normalized]:
            converted = to_lines(
                decode_request(body, encoding),
                max_line_bytes=max_line,
                received_nanos=received,
                max_output_bytes=output_limit(
                    len(body), server.otlp_max_output_ratio, int(server.otlp_max_output_bytes)
                ),
                max_records=server.otlp_max_records,
            )
            data = converted.data
            converted.lines.clear()  # the joined copy is all that is needed from here on
            return converted, normalize(data, max_line_bytes=max_line)

        # Gzip and large bodies take the customer's heavy slot (as on /v1/ingest): one tenant's
        # flood queues behind itself; decoding always runs in a thread, off the event loop.
        async with service.heavy_slot(customer_id) if heavy else contextlib.nullcontext():
            try:
                if gzipped:
                    body = await asyncio.to_thread(
                        decode_body, raw, content_encoding, max_body, fix=SPLIT_FIX
                    )
                else:
                    body = decode_body(raw, content_encoding, max_body, fix=SPLIT_FIX)
            except BodyRefused as exc:
                rejected_requests.labels(exc.reason).inc()
                return _status(exc.status, f"{exc.message}; {exc.fix}", encoding)
            del raw
            wait = service.ingest_wait(customer_id, len(body))
            if wait > 0:
                return over_rate(customer_id, wait, encoding)
            try:
                converted, norm = await asyncio.to_thread(convert, body)
            except TooBig as exc:
                rejected_requests.labels("too_large").inc()
                return _status(413, f"{exc.message}; nothing was kept; {exc.fix}", encoding)
            except BadOtlpBody as exc:
                rejected_requests.labels("bad_otlp").inc()
                return _status(400, str(exc), encoding)
        extra = len(norm.data) - len(body)
        del body
        limits = service.customer_limits.get(customer_id)
        if extra > 0 and limits is not None and limits.ingest_rate_bytes:
            service.ingest_bytes_buckets.get(customer_id, limits.ingest_rate_bytes).charge(extra)
        service.charge_lines(customer_id, norm.lines)
        if norm.lines:
            try:
                await service.ingest(
                    customer_id, name, norm.data, norm.lines, "otlp", normalized=True
                )
            except (SpoolError, OSError) as exc:
                refusal = storage_failed(service, exc, customer_id, name)
                if refusal is not None:  # 503 even for a full disk: exporters retry that
                    message = f"{refusal.message}; {refusal.fix}"
                    return _status(503, message, encoding, retry_after=refusal.retry_after)
                if not isinstance(exc, SpoolFull):
                    raise
                return spool_full(exc, encoding)
        if norm.lines:
            records.labels(customer_id, name, "accepted").inc(norm.lines)
        if converted.rejected:
            records.labels(customer_id, name, "rejected").inc(converted.rejected)
        return Response(encode(export_response(converted), encoding), media_type=_MEDIA[encoding])

    return router
