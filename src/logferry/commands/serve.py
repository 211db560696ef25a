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
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.markup import escape

from logferry.commands.common import JsonOption, cli_errors, err, out, print_json
from logferry.errors import InputError
from logferry.service.config import ServiceConfig, load_config, split_listen
from logferry.service.logs import log, setup_logging

if TYPE_CHECKING:
    from logferry.service.config import ServeRole
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
    "--check validates the configuration and exits without serving: every key, the files it "
    "references (token files, TLS certificates and keys, the spool directory), endpoint "
    "bodies, listeners naming a missing endpoint, external IDs already bound in the state "
    'database. Exit 0 ("configuration OK") or 2 listing every problem with its key path '
    "(--json: one document). It makes no AWS call unless --aws is given (then the vendor "
    "account is read from STS as at start-up). `serve` runs the same checks before anything "
    "listens.\n\n"
    "SIGHUP re-reads --config and validates it the same way: when it is valid, \\[\\[customers]] "
    "(new customers, limits, token files, new or changed endpoints) and \\[\\[listeners]] change "
    "live; other settings are logged as 'restart needed'. When it is not, every problem is "
    "logged and the running configuration keeps serving. A customer or endpoint removed from "
    "the file loses its config tokens but keeps its accepted lines (delete it explicitly).\n\n"
    "--local starts an embedded AWS emulator on loopback, provisions a demo customer exactly as "
    "the guide does (through `logferry role create`), creates an S3 and a Kinesis endpoint, and "
    "prints a token and a curl command to try it."
)
SERVE_EPILOG = (
    "Examples:\n\n"
    "  logferry serve --local\n\n"
    "  logferry serve --check --config logferry.toml\n\n"
    "  kill -HUP $(pidof logferry)   # reload the config\n\n"
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
    check: bool = typer.Option(
        False,
        "--check",
        help="Validate the configuration (and the files it names) and exit: 0 or 2. No AWS calls.",
    ),
    aws: bool = typer.Option(
        False, "--aws", help="With --check: also read the vendor account from STS."
    ),
    role: str = typer.Option(
        "all",
        "--role",
        help="all (ingest + delivery), ingest (accept and publish, no delivery) or deliver "
        "(delivery of the endpoints this node owns, no ingest). ingest/deliver need [spool] "
        'backend = "nats" (docs/scale-out.md).',
        case_sensitive=False,
    ),
    as_json: bool = JsonOption,
) -> None:
    role = role.lower()
    overrides: dict[str, Any] = {}
    if listen:
        overrides["server.listen"] = listen
    if spool_dir:
        overrides["spool.dir"] = str(spool_dir)
    if check:
        run_check(config, overrides, aws=aws, as_json=as_json, role=role)
        return
    with cli_errors():
        if local:
            from logferry.service.local_demo import run_local

            run_local(config, overrides)
            return
        cfg = load_config(config, overrides)
        validate_before_start(cfg, str(config) if config else "(defaults)", role=role)
    run_service(cfg, config_path=config, overrides=overrides, role=role)


def run_check(
    path: Path | None, overrides: dict[str, Any], *, aws: bool, as_json: bool, role: str = "all"
) -> None:
    """`serve --check`: the start-up validation without starting; exit 0 or 2 (1: STS down)."""
    from logferry.service.config import ConfigInvalid, ConfigProblem
    from logferry.service.config_check import check_config, existing_state

    source = str(path) if path else "(defaults)"
    problems: list[ConfigProblem] = []
    exit_code = 2
    try:
        cfg = load_config(path, overrides)
    except ConfigInvalid as exc:
        problems = exc.problems
    except InputError as exc:
        problems = [ConfigProblem(exc.where, exc.message, exc.fix)]
    else:
        with existing_state(cfg) as state:
            problems = check_config(cfg, state, role=role)
        if aws and not problems:
            problems, exit_code = _check_sts(cfg)
    if as_json:
        print_json(
            {
                "ok": not problems,
                "config": source,
                "problems": [p._asdict() for p in problems],
            }
        )
    elif problems:
        err.print(f"[bold red]error:[/] {escape(source)}: invalid configuration:")
        for problem in problems:
            err.print(f"  {problem}", markup=False, highlight=False)
    else:
        out.print(f"configuration OK: {source}", highlight=False)
    if problems:
        raise typer.Exit(exit_code)


def _check_sts(cfg: ServiceConfig) -> tuple[list[Any], int]:
    """`--check --aws`: sts:GetCallerIdentity across vendor.sts_regions, as at start-up."""
    from logferry.aws.clients import AwsTarget
    from logferry.aws.sts_broker import CredentialBroker
    from logferry.errors import AwsError
    from logferry.service.config import ConfigProblem

    broker = CredentialBroker(
        vendor_name=cfg.vendor.name,
        vendor_account_id=cfg.vendor.account_id,
        regions=cfg.vendor.sts_regions,
        sts_endpoints=cfg.vendor.sts_endpoints,
        target=AwsTarget(
            endpoint_url=cfg.aws.endpoint_url, allow_private_domain=cfg.aws.allow_private_domain
        ),
        duration_seconds=cfg.vendor.session_duration_seconds,
        source_identity=cfg.vendor.source_identity,
    )
    try:
        identity = broker.caller_identity()
    except AwsError as exc:
        attempts = getattr(exc, "attempts", None) or []
        found = [
            ConfigProblem(f"vendor.sts_regions.{a.region}", f"{a.outcome} ({a.code})", a.fix)
            for a in attempts
        ] or [ConfigProblem("vendor.sts_regions", exc.message, exc.fix)]
        return found, 1
    expected = cfg.vendor.account_id
    if expected is not None and expected != identity.account:
        problem = ConfigProblem(
            "vendor.account_id",
            f"is {expected} but the vendor credentials belong to account {identity.account}",
            "Set it to the credentials' account (or remove it), or run with that account.",
        )
        return [problem], 2
    return [], 0


def validate_before_start(cfg: ServiceConfig, source: str, *, role: str = "all") -> None:
    """Everything `serve --check` checks, before anything starts: exit 2 listing each problem
    (a listener naming a missing endpoint, a token file, a taken external ID ... used to be
    found only once the HTTP port was open, and ended as "cannot listen", exit 1)."""
    from logferry.service.config_check import check_config, existing_state, raise_if_invalid

    with existing_state(cfg) as state:
        raise_if_invalid(source, check_config(cfg, state, role=role))


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


async def _connect_backend(cfg: ServiceConfig, service: Any) -> None:
    """`[spool] backend = "nats"`: connect and load the registry before anything listens;
    unreachable servers exit 1 with the fix (no half-started node takes traffic)."""
    from logferry.errors import LogferryError

    try:
        await service.connect()
    except LogferryError as exc:
        err.print(
            f"[bold red]error:[/] cannot use the NATS spool at {escape(cfg.spool.nats_url)}: "
            f"{escape(exc.message)}"
        )
        if exc.fix:
            err.print(f"  fix: {exc.fix}", markup=False)
        raise typer.Exit(1) from None
    if cfg.spool.backend != "nats":
        return
    log(
        logger,
        logging.INFO,
        "NATS spool connected",
        servers=cfg.spool.nats_url,
        node=getattr(service, "node_id", None),
        role=service.role,
    )


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


def run_service(
    cfg: ServiceConfig,
    *,
    on_ready: Any = None,
    credentials: Any = None,
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    role: str = "all",
) -> None:
    from logferry.service.http_protocol import loop_factory

    setup_logging(cfg.log.level, cfg.log.format)
    with asyncio.Runner(loop_factory=loop_factory(cfg.server.event_loop)) as runner:
        runner.run(
            serve_async(
                cfg,
                on_ready=on_ready,
                credentials=credentials,
                config_path=config_path,
                overrides=overrides,
                role=role,
            )
        )


async def serve_async(
    cfg: ServiceConfig,
    *,
    on_ready: Any = None,
    credentials: Any = None,
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    role: str = "all",
) -> None:
    import uvicorn

    from logferry.service.api import create_app
    from logferry.service.early_answer import CloseAfterEarlyAnswer
    from logferry.service.http_protocol import http_protocol, parser_name
    from logferry.service.ingest_route import IngestFastPath
    from logferry.service.listener_limits import BodyBudgetMiddleware
    from logferry.service.reload import install_sighup
    from logferry.service.runtime import Service
    from logferry.service.security_headers import SecurityHeaders

    os.umask(0o077)  # spool segments, state, journals, the SQLite file: owner only (0600/0700)
    ssl_context = _server_ssl_context(cfg)  # a bad certificate exits 2 before anything starts
    service = Service(cfg, vendor_credentials=credentials, role=cast("ServeRole", role))
    await _check_vendor_account(cfg, service)
    await _connect_backend(cfg, service)
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
        uninstall = install_sighup(service, config_path, overrides)
        try:
            yield
        finally:
            uninstall()
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
                CloseAfterEarlyAnswer(
                    BodyBudgetMiddleware(
                        IngestFastPath(app, service),
                        budget,
                        int(cfg.server.max_body_bytes),
                        lambda reason: service.metrics.http_refused.labels(reason).inc(),
                    )
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
