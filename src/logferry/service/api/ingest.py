"""POST /v1/ingest/{customer_id}/{name}: newline-delimited lines, 202 once durable."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from logferry.service.api.auth import Auth
from logferry.service.ingest_route import IngestResult, Principal, ingest_request
from logferry.service.runtime import Service


def ingest_router(service: Service, auth: Auth) -> APIRouter:
    """The ingest route as FastAPI sees it (`logferry serve` answers it in plain ASGI first)."""
    router = APIRouter()
    customer_or_admin = auth.customer_or_admin

    @router.post(
        "/v1/ingest/{customer_id}/{name}",
        status_code=202,
        response_model=IngestResult,
        tags=["ingest"],
        summary="Append newline-delimited log lines; 202 only once they are durable.",
        responses={
            413: {"description": "body over the limit"},
            429: {
                "description": "this customer's quota (spool_max_bytes), its ingest rate "
                "(ingest_rate_bytes / ingest_rate_lines) or the shared spool is at its limit; "
                "retry after Retry-After seconds"
            },
        },
    )
    async def ingest(
        customer_id: str,
        name: str,
        request: Request,
        who: Principal = Depends(customer_or_admin),
    ) -> Any:
        # Served by IngestFastPath in `logferry serve`; this route documents it and serves
        # anyone who mounts the FastAPI app alone.
        return await ingest_request(service, request, customer_id, name)

    return router
