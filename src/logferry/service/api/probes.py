"""Probes and metrics: /healthz, /readyz (no token) and /metrics (admin or metrics token)."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from logferry.service.runtime import Service


def probes_router(service: Service) -> APIRouter:
    """The routes a load balancer and a Prometheus scraper call."""
    router = APIRouter()

    @router.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["probes"])
    async def readyz() -> Response:
        if not service.ready:
            return JSONResponse(
                {"status": "starting" if not service.stopping else "stopping"}, status_code=503
            )
        if not service.connected:  # NATS unreachable: ingest would answer 503 anyway
            return JSONResponse({"status": "nats_unreachable"}, status_code=503)
        return JSONResponse({"status": "ready", "role": service.role})

    def metrics_allowed(request: Request) -> bool:
        if service.config.auth.metrics_public:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not token.isascii():
            return False
        return any(
            secret and hmac.compare_digest(token.encode(), secret.encode())
            for secret in (service.admin_token, service.metrics_token)
        )

    @router.get(
        "/metrics",
        tags=["probes"],
        response_class=PlainTextResponse,
        summary="Prometheus metrics; needs the admin token (or auth.metrics_token_env's token).",
    )
    async def metrics(request: Request) -> Response:
        if not metrics_allowed(request):
            return JSONResponse(
                {
                    "error": "/metrics needs the admin token or the metrics token",
                    "fix": "scrape with 'Authorization: Bearer <token>' "
                    "(auth.metrics_token_env gives scrapers a token of their own)",
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        text = await asyncio.to_thread(service.metrics.render)
        return Response(text, media_type="text/plain; version=0.0.4")

    return router
