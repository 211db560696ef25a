"""`create_app`: the FastAPI app, its error handlers, and the routers in their fixed order."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from logferry import __version__
from logferry.service.api.auth import auth_for
from logferry.service.api.customers import customers_router
from logferry.service.api.endpoints import endpoints_router
from logferry.service.api.ingest import ingest_router
from logferry.service.api.probes import probes_router
from logferry.service.api.sts import sts_router
from logferry.service.api.tokens import tokens_router
from logferry.service.console_api import CONSOLE_DIR, console_router
from logferry.service.endpoints import FieldError
from logferry.service.ingest_route import problem
from logferry.service.otlp import otlp_router
from logferry.service.registry_kv_mirror import RegistryUnavailable
from logferry.service.runtime import EndpointConflict, Service, UnknownEndpoint

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


def _error_handlers(app: FastAPI) -> None:
    """Errors raised anywhere in a route, answered as the API documents them."""

    @app.exception_handler(FieldError)
    async def _field_error(_: Request, exc: FieldError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(EndpointConflict)
    async def _conflict(_: Request, exc: EndpointConflict) -> JSONResponse:
        return problem(409, exc.message, exc.fix)

    @app.exception_handler(UnknownEndpoint)
    async def _unknown(_: Request, exc: UnknownEndpoint) -> JSONResponse:
        return problem(404, exc.message, exc.fix)

    @app.exception_handler(RegistryUnavailable)
    async def _registry_down(_: Request, exc: RegistryUnavailable) -> JSONResponse:
        # NATS unreachable or no quorum: a transient refusal, like ingest's 503 (never a 500)
        response = problem(503, exc.message, exc.fix, retry_after=exc.retry_after)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": [{k: e[k] for k in ("loc", "msg", "type")} for e in exc.errors()]},
            status_code=422,
        )


def create_app(service: Service) -> FastAPI:
    """The whole HTTP app for `service`; route order is the OpenAPI document's order."""
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
    _error_handlers(app)
    auth = auth_for(service)
    app.include_router(probes_router(service))
    app.include_router(ingest_router(service, auth))
    app.include_router(otlp_router(service, auth.customer_or_admin))
    app.include_router(customers_router(service, auth))
    app.include_router(tokens_router(service, auth))
    app.include_router(endpoints_router(service, auth))
    app.include_router(console_router(service, auth.principal, auth.admin, auth.customer_or_admin))
    app.include_router(sts_router(service, auth))

    @app.get("/console", include_in_schema=False)
    async def console_redirect() -> Response:
        return RedirectResponse("/console/", status_code=308)

    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
    return app
