"""OTLP/HTTP logs ingest: `POST /v1/otlp/{customer_id}/{name}/v1/logs`.

An OpenTelemetry exporter's base endpoint is `http://HOST/v1/otlp/{customer_id}/{name}` (the
exporter appends `/v1/logs`). Each LogRecord becomes one JSON line (logferry.ingest.otlp) that
takes the same path as /v1/ingest: the same body limits and gzip handling, the same line rules,
the same spool append, durable before the 200. Answers follow the OTLP/HTTP specification:
200 + ExportLogsServiceResponse in the request's encoding (partial_success when records were
dropped), 429 + Retry-After when the spool is full (retryable), 400 for an undecodable body
and 413 over the limit (not retryable), each error with a google.rpc.Status body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2

from logferry.ingest.lines import normalize
from logferry.ingest.otlp import (
    JSON_TYPE,
    PROTOBUF_TYPE,
    BadOtlpBody,
    Converted,
    Encoding,
    UnsupportedContentType,
    decode_request,
    encode,
    encoding_of,
    export_response,
    status_message,
    to_lines,
)
from logferry.service.ingest_body import BodyRefused, read_body
from logferry.service.runtime import Service, UnknownEndpoint
from logferry.spool import SpoolFull

_MEDIA = {"protobuf": PROTOBUF_TYPE, "json": JSON_TYPE}
_GRPC_CODE = {
    400: code_pb2.INVALID_ARGUMENT,
    404: code_pb2.NOT_FOUND,
    413: code_pb2.INVALID_ARGUMENT,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
}
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
    400: {"description": "the body is not an ExportLogsServiceRequest (google.rpc.Status)"},
    404: {"description": "no such endpoint (google.rpc.Status)"},
    413: {"description": "body over the limit (google.rpc.Status)"},
    415: {"description": "Content-Type is not application/x-protobuf or application/json"},
    429: {"description": "spool full: retry after Retry-After seconds (google.rpc.Status)"},
}


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
    max_body = service.config.server.max_body_bytes
    max_line = service.config.server.max_line_bytes
    rejected_requests = service.metrics.ingest_rejected
    records = service.metrics.otlp_records

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
        try:
            body = await read_body(request, max_body, fix=SPLIT_FIX)
        except BodyRefused as exc:
            rejected_requests.labels(exc.reason).inc()
            return _status(exc.status, f"{exc.message}; {exc.fix}", encoding)

        def convert() -> Converted:
            return to_lines(
                decode_request(body, encoding), max_line_bytes=max_line, received_nanos=received
            )

        try:  # a 16 MiB request is ~1 s of parsing: keep it off the event loop
            converted = await asyncio.to_thread(convert)
        except BadOtlpBody as exc:
            rejected_requests.labels("bad_otlp").inc()
            return _status(400, str(exc), encoding)
        norm = normalize(converted.data, max_line_bytes=max_line)
        if norm.lines:
            try:
                await service.ingest(
                    customer_id, name, norm.data, norm.lines, "otlp", normalized=True
                )
            except SpoolFull as exc:
                rejected_requests.labels("spool_full").inc()
                retry = max(1, round(exc.retry_after))
                message = "the spool is full; nothing of this request was kept"
                return _status(429, message, encoding, retry_after=retry)
        if norm.lines:
            records.labels(customer_id, name, "accepted").inc(norm.lines)
        if converted.rejected:
            records.labels(customer_id, name, "rejected").inc(converted.rejected)
        return Response(encode(export_response(converted), encoding), media_type=_MEDIA[encoding])

    return router
