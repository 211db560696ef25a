"""`logferry serve`: the vendor service (HTTP ingest + management API + syslog + delivery)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from logferry.commands.common import cli_errors, err
from logferry.service.config import ServiceConfig, load_config, split_listen
from logferry.service.logs import log, setup_logging

if TYPE_CHECKING:
    from logferry.service.listener_limits import BodyBudget, ConnectionLimits

logger = logging.getLogger("logferry.serve")

SERVE_HELP = (
    "Run the vendor service: HTTP ingest, syslog listeners, the management API (OpenAPI at "
    "/openapi.json), /metrics, /healthz, /readyz, and delivery into customers' S3 buckets and "
    "Kinesis streams through their roles.\n\n"
    "Lines are acknowledged (202) only once durable in the spool; SIGTERM flushes open files "
    "within server.shutdown_flush_seconds and leaves the rest spooled for the next start.\n\n"
    "The vendor account is read from sts:GetCallerIdentity, failing over between "
    "vendor.sts_regions exactly as delivery's AssumeRole does (each region's outcome is logged; "
    "when all fail, exit 1 with one line per region and its fix); a configured "
    "vendor.account_id that differs exits 2. /metrics needs the admin token (or "
    "auth.metrics_token_env's). Per-customer "
    "spool_max_bytes, ingest_rate_bytes and ingest_rate_lines answer 429 for that customer only. "
    "Files are created 0600 (umask 077). See docs/security.md.\n\n"
    "\\[server.tls] makes the HTTP port speak HTTPS (a certificate that cannot be loaded exits "
    "2). Idle and slow connections are closed (server.head_timeout_seconds, "
    "body_timeout_seconds: 408), connections over server.max_connections(_per_source) are "
    "closed at once, and bodies over server.max_body_bytes_in_flight get 503 + Retry-After "
    "before they are read; see docs/security.md 'HTTP listener limits'.\n\n"
    "--local starts an embedded AWS emulator on loopback, provisions a demo customer exactly as "
    "the guide does (through `logferry role create`), creates an S3 and a Kinesis endpoint, and "
    "prints a token and a curl command to try it."
)
SERVE_EPILOG = (
    "Examples:\n\n"
    "  logferry serve --local\n\n"
    "  LOGFERRY_ADMIN_TOKEN=$(openssl rand -hex 24) logferry serve --config logferry.toml"
)


def serve_command(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML configuration file (see README 'Configuration')."
    ),
    local: bool = typer.Option(
        False, "--local", help="Zero-setup demo against an embedded AWS emulator."
    ),
    listen: str | None = typer.Option(None, "--listen", help="Override server.listen."),
    spool_dir: Path | None = typer.Option(None, "--spool-dir", help="Override spool.dir."),
) -> None:
    overrides: dict[str, Any] = {}
    if listen:
        overrides["server.listen"] = listen
    if spool_dir:
        overrides["spool.dir"] = str(spool_dir)
    with cli_errors():
        if local:
            from logferry.service.local_demo import run_local

            run_local(config, overrides)
            return
        cfg = load_config(config, overrides)
    run_service(cfg)


async def _check_vendor_account(cfg: ServiceConfig, service: Any) -> None:
    """The vendor account is whatever sts:GetCallerIdentity says, never a default.

    Customers are told to trust this account in their roles' trust policies; a wrong value
    would point them at a third party. A configured `vendor.account_id` that differs from the
    credentials' account is a misconfiguration: exit 2. No answer from STS: exit 1. The call
    fails over across `vendor.sts_regions` exactly as delivery's AssumeRole does (one shared
    loop in the broker); each region's outcome is logged, and printed with its fix on failure.
    """
    from logferry.errors import AwsError

    try:
        identity = await asyncio.to_thread(service.broker.caller_identity)
    except AwsError as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] cannot determine the vendor account: {escape(exc.message)}")
        attempts = getattr(exc, "attempts", None) or []
        for attempt in attempts:
            err.print(
                f"  {attempt.region}: {attempt.outcome} ({attempt.code}): "
                f"fix: {attempt.fix or 'see the AWS error message'}",
                markup=False,
            )
        if exc.fix and not attempts:
            err.print(f"  fix: {exc.fix}", markup=False)
        service.close_quietly()
        raise typer.Exit(1) from None
    for attempt in identity.attempts:
        if attempt.outcome != "ok":
            log(
                logger,
                logging.WARNING,
                "STS region failed at start-up; failed over",
                region=attempt.region,
                outcome=attempt.outcome,
                code=attempt.code,
                fix=attempt.fix,
            )
    tried = {a.region: a.outcome for a in identity.attempts}
    log(
        logger,
        logging.INFO,
        "STS regions at start-up",
        regions=" ".join(f"{r}={tried.get(r, 'not_tried')}" for r in service.broker.regions),
        answered_by=identity.region,
    )
    actual = identity.account
    expected = cfg.vendor.account_id
    if expected is not None and expected != actual:
        err.print(
            f"[bold red]error:[/] vendor.account_id is {expected} but the vendor credentials "
            f"belong to account {actual} (sts:GetCallerIdentity)."
        )
        err.print(
            "  fix: set vendor.account_id to the account of the credentials `logferry serve` "
            "runs with (or remove it), or run with that account's credentials."
        )
        service.close_quietly()
        raise typer.Exit(2)
    cfg.vendor.account_id = actual
    service.broker.vendor_account_id = actual
    log(logger, logging.INFO, "vendor account", account_id=actual)


class _Server:
    """uvicorn's Server, but SIGTERM/SIGINT end it cleanly (exit 0) instead of re-raising."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self._request_exit)
                try:
                    yield
                finally:
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(sig)

            def _request_exit(self) -> None:
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True

        return Server(config)


def run_service(cfg: ServiceConfig, *, on_ready: Any = None, credentials: Any = None) -> None:
    from logferry.service.http_protocol import loop_factory

    setup_logging(cfg.log.level, cfg.log.format)
    with asyncio.Runner(loop_factory=loop_factory(cfg.server.event_loop)) as runner:
        runner.run(serve_async(cfg, on_ready=on_ready, credentials=credentials))


async def serve_async(cfg: ServiceConfig, *, on_ready: Any = None, credentials: Any = None) -> None:
    import uvicorn

    from logferry.service.api import create_app
    from logferry.service.http_protocol import http_protocol, parser_name
    from logferry.service.ingest_route import IngestFastPath
    from logferry.service.listener_limits import BodyBudgetMiddleware
    from logferry.service.runtime import Service
    from logferry.service.security_headers import SecurityHeaders

    os.umask(0o077)  # spool segments, state, journals, the SQLite file: owner only (0600/0700)
    ssl_context = _server_ssl_context(cfg)  # a bad certificate exits 2 before anything starts
    service = Service(cfg, vendor_credentials=credentials)
    await _check_vendor_account(cfg, service)
    if service.admin_token is None:
        log(
            logger,
            logging.WARNING,
            "no admin token: the management API refuses every call",
            fix=f"set {cfg.auth.admin_token_env or 'auth.admin_token_file'}",
        )
    app = create_app(service)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await service.start()
        log(
            logger,
            logging.INFO,
            "logferry ready",
            listen=cfg.server.listen,
            endpoints=len(service.endpoints),
            pid=os.getpid(),
            event_loop="uvloop"
            if "uvloop" in type(asyncio.get_running_loop()).__module__
            else "asyncio",
            http_parser=parser_name(cfg.server.http_parser),
            scheme="https" if ssl_context else "http",
        )
        if on_ready is not None:
            await on_ready(service)
        try:
            yield
        finally:
            log(
                logger,
                logging.INFO,
                "shutting down: flushing open files",
                seconds=cfg.server.shutdown_flush_seconds,
            )
            await service.stop()
            log(logger, logging.INFO, "stopped")

    limits, budget = _listener_limits(cfg, service)
    http = http_protocol(cfg.server.http_parser, limits)
    app.router.lifespan_context = lifespan
    host, port = split_listen(cfg.server.listen)
    server = _Server(
        uvicorn.Config(
            SecurityHeaders(
                BodyBudgetMiddleware(
                    IngestFastPath(app, service),
                    budget,
                    cfg.server.max_body_bytes,
                    lambda reason: service.metrics.http_refused.labels(reason).inc(),
                )
            ),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=max(5, int(cfg.server.shutdown_flush_seconds) + 5),
            # The cap on connections is ConnectionLimits' (one over it is closed at once);
            # uvicorn's own would answer 503 to every request once it is reached.
            limit_concurrency=None,
            http=http,
            backlog=2048,
            h11_max_incomplete_event_size=64 * 1024,
            ssl_context_factory=(lambda *_: ssl_context) if ssl_context else None,
        )
    )
    service.accept_backlog.attach(
        lambda: [s for srv in getattr(server, "servers", ()) for s in (srv.sockets or ())]
    )
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        err.print(f"[bold red]error:[/] cannot listen on {cfg.server.listen}")
        raise typer.Exit(1) from exc
    finally:
        await limits.stop()


def _server_ssl_context(cfg: ServiceConfig) -> ssl.SSLContext | None:
    """`[server.tls]` as an SSLContext (the syslog listener's floor); exit 2 naming the key
    when a file cannot be loaded."""
    tls = cfg.server.tls
    if tls is None:
        return None
    from logferry.tls import server_ssl_context

    with cli_errors():
        return server_ssl_context(
            "server.tls", tls.cert_file, tls.key_file, tls.ca_file, tls.client_auth
        )
    return None  # pragma: no cover - cli_errors exits


def _listener_limits(cfg: ServiceConfig, service: Any) -> tuple[ConnectionLimits, BodyBudget]:
    """The HTTP listener's caps and time limits and its body budget, counted in /metrics."""
    from logferry.service.listener_limits import BodyBudget, ConnectionLimits, wire_metrics

    server, metrics = cfg.server, service.metrics
    limits = ConnectionLimits(
        head_timeout=server.head_timeout_seconds,
        body_timeout=server.body_timeout_seconds,
        max_connections=server.max_connections,
        max_per_source=server.max_connections_per_source,
        refused=lambda reason: metrics.http_refused.labels(reason).inc(),
        closed=lambda reason: metrics.http_closed.labels(reason).inc(),
    )
    budget = BodyBudget(
        int(server.max_body_bytes_in_flight), int(server.max_body_bytes_in_flight_per_source)
    )
    wire_metrics(metrics, limits, budget)
    return limits, budget
