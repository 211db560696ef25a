"""The HTTP surface on one port: ingest, management API (OpenAPI at /openapi.json), probes, metrics.

FastAPI because the management API is model-driven (pydantic bodies, 422 per-field errors and an
OpenAPI document for free); ingest reads the raw body stream itself so a large body is never
parsed twice and the 413 limit is enforced while reading, not after. `logferry serve` answers the
ingest route in plain ASGI in front of this app (service/ingest_route.py: a small request's CPU).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from logferry import __version__
from logferry.aws.policies import trust_policy
from logferry.service.config import CustomerLimits
from logferry.service.console_api import CONSOLE_DIR, console_router
from logferry.service.endpoints import (
    FieldError,
    check_customer_id,
    check_endpoint_name,
    endpoint_document,
    parse_endpoint,
)
from logferry.service.ingest_route import (
    IngestResult,
    Principal,
    authenticate,
    check_owner,
    ingest_request,
    problem,
    too_many,
)
from logferry.service.logs import log
from logferry.service.otlp import otlp_router
from logferry.service.runtime import EndpointConflict, Service, UnknownEndpoint
from logferry.service.store import ConfigToken, ExternalIdTaken
from logferry.service.timestamps import rfc3339, shape_times

logger = logging.getLogger("logferry.api")


class CustomerBody(CustomerLimits):
    model_config = ConfigDict(extra="forbid")
    external_id: str | None = Field(
        None,
        description="Override the external ID (default: per vendor.external_id_mode). "
        "2-1224 characters of letters, digits and _+=,.@:/-",
        min_length=2,
        max_length=1224,
        pattern=r"^[\w+=,.@:/-]+$",
    )


class CustomerOut(BaseModel):
    id: str
    external_id: str
    created: str = Field(description="RFC 3339 UTC, e.g. 2026-11-30T05:01:02.123Z")
    spool_max_bytes: int | None = Field(None, description="This customer's spool quota.")
    ingest_rate_bytes: float | None = None
    ingest_rate_lines: float | None = None
    endpoints: list[str] = []
    trust_policies: dict[str, Any] = Field(
        default_factory=dict,
        description="The trust policy the customer's role needs, per destination type.",
    )
    trust_policy_hint: str = ""
    vendor_account: str = Field("", description="The AWS account the role must trust.")


DOCS_CDN = "https://cdn.jsdelivr.net"


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI at /docs (server.docs = true). FastAPI's page loads Swagger UI from a CDN and
    boots it with one inline script: this page's own CSP allows exactly that CDN and that script
    (by hash), instead of the strict policy every other answer gets."""
    import base64
    import hashlib
    import re

    from fastapi.openapi.docs import get_swagger_ui_html

    page = get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="logferry")
    html = bytes(page.body).decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    )
    csp = (
        f"default-src 'none'; script-src {DOCS_CDN} {hashes}; style-src {DOCS_CDN}; "
        "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(html, media_type="text/html", headers={"Content-Security-Policy": csp})


class TokenOut(BaseModel):
    id: str
    token: str = Field(description="Shown once; only its hash is stored.")


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="logferry",
        version=__version__,
        description="Deliver customers' log lines into their own AWS accounts (S3, Kinesis) "
        "through a cross-account IAM role with an external ID.",
        docs_url=None,  # off unless server.docs (see _mount_docs); /openapi.json stays
        redoc_url=None,
    )
    app.state.service = service
    if service.config.server.docs:
        _mount_docs(app)

    @app.exception_handler(FieldError)
    async def _field_error(_: Request, exc: FieldError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(EndpointConflict)
    async def _conflict(_: Request, exc: EndpointConflict) -> JSONResponse:
        return problem(409, exc.message, exc.fix)

    @app.exception_handler(UnknownEndpoint)
    async def _unknown(_: Request, exc: UnknownEndpoint) -> JSONResponse:
        return problem(404, exc.message, exc.fix)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": [{k: e[k] for k in ("loc", "msg", "type")} for e in exc.errors()]},
            status_code=422,
        )

    async def principal(request: Request) -> Principal:
        return await authenticate(service, request.headers.get("authorization", ""))

    async def admin(who: Principal = Depends(principal)) -> Principal:
        if not who.admin:
            raise HTTPException(403, "this API needs the admin token")
        return who

    async def customer_or_admin(customer_id: str, who: Principal = Depends(principal)) -> Principal:
        check_owner(who, customer_id)
        return who

    # ------------------------------------------------------------------ probes and metrics

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> Response:
        if not service.ready:
            return JSONResponse(
                {"status": "starting" if not service.stopping else "stopping"}, status_code=503
            )
        return JSONResponse({"status": "ready"})

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

    @app.get(
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

    # ------------------------------------------------------------------ ingest

    @app.post(
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

    app.include_router(otlp_router(service, customer_or_admin))

    # ------------------------------------------------------------------ customers

    def _customer_out(customer_id: str) -> CustomerOut:
        """Reads SQLite: call it through asyncio.to_thread."""
        record = service.store.get_customer(customer_id)
        if record is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        names = sorted(n for (c, n) in service.endpoints if c == customer_id)
        hint = (
            f"logferry role create --external-id {record.external_id} --vendor-account "
            f"{service.config.vendor.account_id} (--bucket B | --stream-arn ARN)"
        )
        vendor = service.config.vendor.account_id
        policies = {
            kind: trust_policy(kind, record.external_id, vendor) for kind in ("s3", "kinesis")
        }
        return CustomerOut(
            spool_max_bytes=record.spool_max_bytes,
            ingest_rate_bytes=record.ingest_rate_bytes,
            ingest_rate_lines=record.ingest_rate_lines,
            trust_policies=policies,
            id=record.id,
            external_id=record.external_id,
            created=rfc3339(record.created),
            endpoints=names,
            trust_policy_hint=hint,
            vendor_account=vendor,
        )

    @app.put("/v1/customers/{customer_id}", response_model=CustomerOut, tags=["customers"])
    async def put_customer(
        customer_id: str, body: CustomerBody | None = Body(None), _: Principal = Depends(admin)
    ) -> Any:
        check_customer_id(customer_id)
        limits = body.limits() if body else {}
        try:
            record, new = await asyncio.to_thread(
                service.put_customer, customer_id, body.external_id if body else None, limits
            )
        except ExternalIdTaken as exc:
            return problem(
                409,
                str(exc),
                "choose another external_id (or leave it out to get a fresh one)",
            )
        out = await asyncio.to_thread(_customer_out, record.id)
        return JSONResponse(out.model_dump(), status_code=201 if new else 200)

    @app.get("/v1/customers", tags=["customers"])
    async def list_customers(_: Principal = Depends(admin)) -> list[CustomerOut]:
        def listing() -> list[CustomerOut]:
            return [_customer_out(c.id) for c in service.store.list_customers()]

        return await asyncio.to_thread(listing)

    @app.get("/v1/customers/{customer_id}", response_model=CustomerOut, tags=["customers"])
    async def get_customer(customer_id: str, _: Principal = Depends(customer_or_admin)) -> Any:
        return await asyncio.to_thread(_customer_out, customer_id)

    @app.delete("/v1/customers/{customer_id}", status_code=204, tags=["customers"])
    async def delete_customer(customer_id: str, _: Principal = Depends(admin)) -> Response:
        if await asyncio.to_thread(service.store.get_customer, customer_id) is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        await service.delete_customer(customer_id)
        return Response(status_code=204)

    @app.post(
        "/v1/customers/{customer_id}/tokens",
        status_code=201,
        response_model=TokenOut,
        tags=["customers"],
    )
    async def issue_token(customer_id: str, _: Principal = Depends(admin)) -> Any:
        if await asyncio.to_thread(service.store.get_customer, customer_id) is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        token_id, token = await asyncio.to_thread(service.store.issue_token, customer_id)
        return TokenOut(id=token_id, token=token)

    @app.get("/v1/customers/{customer_id}/tokens", tags=["customers"])
    async def list_tokens(customer_id: str, _: Principal = Depends(admin)) -> list[dict[str, Any]]:
        return shape_times(await asyncio.to_thread(service.store.list_tokens, customer_id))

    @app.delete(
        "/v1/customers/{customer_id}/tokens/{token_id}", status_code=204, tags=["customers"]
    )
    async def revoke_token(
        customer_id: str, token_id: str, _: Principal = Depends(admin)
    ) -> Response:
        try:
            revoked = await asyncio.to_thread(service.store.revoke_token, customer_id, token_id)
        except ConfigToken:
            # The config is the truth for its tokens: a revocation here would come undone at
            # the next start (reconcile_static_tokens), so it is refused rather than faked.
            return problem(
                409,
                f"this token comes from the config ([[customers]] id={customer_id}): "
                "remove or rotate it there",
                "change the customer's token_env / token_file (or remove it) in the config "
                "file and restart or reload `logferry serve`; the old token stops working then",
            )
        if not revoked:
            raise HTTPException(404, f"no active token {token_id!r} for {customer_id!r}")
        return Response(status_code=204)

    # ------------------------------------------------------------------ endpoints

    @app.put(
        "/v1/customers/{customer_id}/endpoints/{name}",
        tags=["endpoints"],
        summary="Create or replace an endpoint (admin, or the customer's own token); runs the role "
        "check first; only the admin may skip it with verify=false.",
    )
    async def put_endpoint(
        customer_id: str,
        name: str,
        body: dict[str, Any] = Body(
            ...,
            examples=[
                {
                    "type": "s3",
                    "bucket_name": "my-logs",
                    "path": "cdn/",
                    "iam_role": "arn:aws:iam::123456789012:role/logferry-s3-logging",
                    "period": 300,
                    "gzip_level": 3,
                }
            ],
        ),
        verify: bool = Query(
            True, description="Run `role check` before accepting (only the admin may skip it)."
        ),
        who: Principal = Depends(customer_or_admin),
    ) -> Any:
        if not who.admin and not verify:
            raise HTTPException(403, "only the admin token may skip the role check (verify=false)")
        check_customer_id(customer_id)
        check_endpoint_name(name)
        if await asyncio.to_thread(service.store.get_customer, customer_id) is None:
            raise HTTPException(
                404, f"no customer {customer_id!r}: PUT /v1/customers/{customer_id} first"
            )
        type_, model = parse_endpoint(name, body, **service.endpoint_rules)
        if not who.admin:  # a customer's own change runs the role check: rate-limited
            wait = service.verify_wait(customer_id)
            if wait > 0:
                return too_many(
                    f"customer {customer_id!r} ran the role check too often "
                    f"(server.verify_per_minute = {service.config.server.verify_per_minute:g})",
                    wait,
                    "each check assumes the role in every STS region",
                )
        report = None
        if (verify and service.config.server.verify_on_change) or not who.admin:
            report = await asyncio.to_thread(service.verify, customer_id, type_, model)
            if not report.ok:
                return problem(
                    422,
                    f"the role check failed for {model.iam_role}: {report.summary()}",
                    "fix the role (see `logferry role check`), or retry with ?verify=false",
                    report=report.as_json(),
                )
        record, new = service.put_endpoint(customer_id, name, type_, model)
        if report is not None:
            service.remember_verified(record, report)
        log(
            logger,
            logging.INFO,
            "endpoint saved",
            customer=customer_id,
            endpoint=name,
            type=type_,
            new=new,
        )
        return JSONResponse(endpoint_document(type_, model), status_code=201 if new else 200)

    @app.get("/v1/customers/{customer_id}/endpoints", tags=["endpoints"])
    async def list_endpoints(
        customer_id: str, _: Principal = Depends(customer_or_admin)
    ) -> list[dict[str, Any]]:
        return [
            endpoint_document(record.type, model)
            for (c, _n), (record, model) in sorted(service.endpoints.items())
            if c == customer_id
        ]

    @app.get("/v1/customers/{customer_id}/endpoints/{name}", tags=["endpoints"])
    async def get_endpoint(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> dict[str, Any]:
        record, model = service.endpoint(customer_id, name)
        return endpoint_document(record.type, model)

    @app.delete("/v1/customers/{customer_id}/endpoints/{name}", status_code=204, tags=["endpoints"])
    async def delete_endpoint(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> Response:
        if not await service.delete_endpoint(customer_id, name):
            raise HTTPException(404, f"customer {customer_id!r} has no endpoint {name!r}")
        return Response(status_code=204)

    @app.post("/v1/customers/{customer_id}/endpoints/{name}/verify", tags=["endpoints"])
    async def verify_endpoint(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> Any:
        record, model = service.endpoint(customer_id, name)
        wait = service.verify_wait(customer_id)
        if wait > 0:
            return too_many(
                f"customer {customer_id!r} called verify too often "
                f"(server.verify_per_minute = {service.config.server.verify_per_minute:g})",
                wait,
                "each verify assumes the role in every STS region",
            )
        report = await asyncio.to_thread(service.verify, customer_id, record.type, model)
        if report.ok:
            service.broker.forget(model.iam_role)
            service.remember_verified(record, report)
            service.worker(customer_id, name).notify()  # retry now if it was in error
        return report.as_json()

    @app.get("/v1/customers/{customer_id}/endpoints/{name}/status", tags=["endpoints"])
    async def endpoint_status(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> dict[str, Any]:
        # On the loop: a 404 for an unknown endpoint, or its worker made here, not in the thread.
        if (customer_id, name) not in service.invalid:
            service.worker(customer_id, name)
        return shape_times(await asyncio.to_thread(service.endpoint_status, customer_id, name))

    app.include_router(console_router(service, principal, admin, customer_or_admin))

    @app.get("/console", include_in_schema=False)
    async def console_redirect() -> Response:
        return RedirectResponse("/console/", status_code=308)

    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
    return app
