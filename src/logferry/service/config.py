"""`logferry.toml`: the service's configuration, validated with errors that name the key path.

Secrets never live in the file: tokens come from an environment variable (`*_env`) or a file
(`*_file`) — the file is meant to be committed to a repository, the secrets are not.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from logferry.aws.names import validate_account_id, validate_region
from logferry.aws.sts_broker import DEFAULT_STS_REGIONS, MAX_DURATION, MIN_DURATION
from logferry.errors import InputError
from logferry.ingest.syslog import SyslogListenerConfig
from logferry.netaddr import parse_listen
from logferry.service.config_spool import SpoolConfig  # `[spool]`: local or NATS
from logferry.spool.size import parse_size


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class VendorConfig(_Strict):
    name: str = Field("logferry", min_length=1, max_length=32, description="Shown in CloudTrail.")
    account_id: str | None = Field(
        None,
        description="Expected vendor account. `serve` reads the real one from "
        "sts:GetCallerIdentity and refuses to start when this is set and differs.",
    )
    external_id_mode: Literal["customer_id", "generated"] = "customer_id"
    sts_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_STS_REGIONS))
    sts_endpoints: dict[str, str] = Field(default_factory=dict)
    session_duration_seconds: int = Field(3600, ge=MIN_DURATION, le=MAX_DURATION)
    source_identity: str | None = Field(
        None,
        min_length=2,
        max_length=64,
        pattern=r"^[\w+=,.@-]+$",
        description="Sent as SourceIdentity with every AssumeRole (shows in the customer's "
        "CloudTrail; their trust policy must allow sts:SetSourceIdentity).",
    )

    @field_validator("account_id")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        return None if value is None else validate_account_id(value)

    @field_validator("sts_regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('give at least one STS region, e.g. ["us-east-1"]')
        return [validate_region(r) for r in value]

    @field_validator("sts_endpoints")
    @classmethod
    def _endpoints(cls, value: dict[str, str]) -> dict[str, str]:
        for region, url in value.items():
            validate_region(region)
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{region} = {url!r}: give an http:// or https:// URL")
        return value


class AwsConfig(_Strict):
    endpoint_url: str | None = None
    """Every AWS service at one URL (the emulator); unset for real AWS."""
    allow_http_domain: bool = False
    """Accept `http://` in an S3 endpoint's `domain` (an emulator on loopback); off: https only."""
    allow_private_domain: bool = False
    """Let an S3 endpoint's `domain` reach loopback, private and link-local addresses (an
    emulator); off: refused when written as such and checked again at every connection
    (docs/security.md, "S3 domain")."""


class TlsConfig(_Strict):
    """`[server.tls]`: HTTPS on the HTTP port (API, ingest, console), the syslog TLS floor."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = Field(
        None, description="CA bundle client certificates must chain to (needed by client_auth)."
    )
    client_auth: Literal["none", "optional", "required"] = Field(
        "none",
        description='"required": only clients with a certificate from ca_file connect; '
        '"optional": a certificate that is sent must chain to ca_file.',
    )

    @model_validator(mode="after")
    def _ca_for_client_auth(self) -> TlsConfig:
        if self.client_auth != "none" and self.ca_file is None:
            raise ValueError(f"client_auth = {self.client_auth!r} needs ca_file")
        return self


class ServerConfig(_Strict):
    listen: str = "127.0.0.1:8080"
    # HTTP listener limits (service/listener_limits.py, docs/security.md "HTTP listener limits")
    head_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A request head (request line + headers) must be complete this long after "
        "the connection opened or the previous response ended; else the connection is closed "
        "(408 when part of a head had arrived).",
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A request body that sends no bytes for this long is cut: 408 and close.",
    )
    max_connections: int = Field(
        4096, ge=1, le=1_000_000, description="Open HTTP connections; more are closed at once."
    )
    max_connections_per_source: int = Field(
        256,
        ge=0,
        description="Open HTTP connections from one client address; more are closed at once "
        "(counted). 0 = no limit (behind a load balancer every connection shares its address).",
    )
    max_body_bytes_in_flight: int | str = Field(
        "128MiB",
        description="Request-body bytes held across all requests at once (Content-Length is "
        "reserved when the head arrives, chunked bodies count as they arrive); over it: 503 + "
        "Retry-After before the body is read. 0 = no limit.",
    )
    max_body_bytes_in_flight_per_source: int | str = Field(
        "32MiB",
        description="One client address's share of max_body_bytes_in_flight (so one address "
        "cannot hold all of it); over it: 503 + Retry-After. 0 = no share (behind a load "
        "balancer every request comes from its address).",
    )
    tls: TlsConfig | None = None
    max_body_bytes: int | str = "16MiB"
    max_line_bytes: int | str = "256KiB"
    shutdown_flush_seconds: float = Field(20.0, ge=0, le=600)
    idle_flush_seconds: float = Field(
        0.0,
        ge=0,
        description="S3: also close a file after this many seconds without new lines "
        "(0 = only at the period's end, as Fastly does).",
    )
    delivery_threads: int = Field(8, ge=1, le=256)
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="auto = uvloop when installed (a faster event loop: fewer CPU cycles per "
        "request and per socket read), else asyncio's own.",
    )
    http_parser: Literal["auto", "httptools", "h11"] = Field(
        "auto",
        description="auto = httptools (C) when installed, else h11 (pure Python). Both refuse "
        "a request head that grows past 64 KiB (httptools: 431, h11: 400).",
    )
    activation_threads: int = Field(
        4,
        ge=1,
        le=256,
        description="Threads that make, open and (first time) probe an endpoint's sink: the "
        "AWS client, crash recovery, the write probe. Bounds how much of a burst of first "
        "activations (a restart, many new customers) runs at once, so acknowledgements and "
        "steady delivery keep their share of the CPU.",
    )
    aws_io_threads: int = Field(
        64,
        ge=1,
        le=1024,
        description="Threads for AWS calls kept in flight (parallel S3 parts, several "
        "PutRecords per endpoint); each sink bounds its own share.",
    )
    upload_memory_bytes: int | str = Field(
        "64MiB",
        description="Process-wide budget of S3 upload bodies (multipart parts, PutObject) in "
        "flight, shared by every endpoint; at least 16MiB (two parts). A sink that finds no "
        "room stops reading its spool until a call finishes, holding no delivery thread.",
    )
    verify_on_change: bool = True
    verify_per_minute: float = Field(
        6.0,
        gt=0,
        le=600,
        description="POST .../verify calls allowed per customer per minute (each costs up to "
        "6 AssumeRole calls); over it: 429 + Retry-After.",
    )
    docs: bool = Field(
        False,
        description="Serve Swagger UI at /docs (it loads its script from a CDN, so it is blank "
        "offline, and it needs no token); /openapi.json is served either way.",
    )
    # OTLP ingest bounds (docs/security.md, "every ingest path x limit").
    otlp_max_output_ratio: float = Field(
        16.0,
        ge=1,
        le=64,
        description="OTLP: the JSON lines one request may produce, as a multiple of its "
        "(decompressed) body, at least 4 MiB and at most otlp_max_output_bytes; each line "
        "repeats its resource's attributes, so a small request could otherwise ask for "
        "gigabytes. Over it: 413, nothing kept.",
    )
    otlp_max_output_bytes: int | str = Field(
        "64MiB",
        description="OTLP: the most bytes of JSON lines one request may produce, whatever its "
        "body (bounds serve's memory per request; at least 4 MiB). Over it: 413, nothing kept.",
    )
    otlp_max_records: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="OTLP: most LogRecords in one request (each costs ~15 us to convert). "
        "Over it: 413, nothing kept.",
    )

    @field_validator(
        "max_body_bytes",
        "max_line_bytes",
        "otlp_max_output_bytes",
        "max_body_bytes_in_flight",
        "max_body_bytes_in_flight_per_source",
    )
    @classmethod
    def _size(cls, value: int | str) -> int:
        return parse_size(value)

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> ServerConfig:
        body = int(self.max_body_bytes)
        for name in ("max_body_bytes_in_flight", "max_body_bytes_in_flight_per_source"):
            budget = int(getattr(self, name))
            if 0 < budget < body:
                raise ValueError(
                    f"{name} ({budget}) is below max_body_bytes ({body}): the largest "
                    "allowed request could never be taken; raise it (or 0 = no limit)"
                )
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("upload_memory_bytes")
    @classmethod
    def _upload_memory(cls, value: int | str) -> int:
        size = parse_size(value)
        if size < 16 * 1024 * 1024:
            raise ValueError(
                f"must be at least 16MiB (two 8 MiB S3 parts), got {size} bytes; "
                'e.g. upload_memory_bytes = "64MiB"'
            )
        return size


class AuthConfig(_Strict):
    admin_token_env: str | None = "LOGFERRY_ADMIN_TOKEN"
    admin_token_file: Path | None = None
    metrics_token_env: str | None = None
    """Optional read-only token for GET /metrics (a scraper need not hold the admin token)."""
    metrics_public: bool = False
    """Serve /metrics without a token (it lists customer ids and endpoint names)."""

    def metrics_token(self) -> str | None:
        return (os.environ.get(self.metrics_token_env) or None) if self.metrics_token_env else None

    def admin_token(self) -> str | None:
        if self.admin_token_file is not None:
            try:
                token = self.admin_token_file.read_text().strip()
            except OSError as exc:
                raise InputError(
                    "auth.admin_token_file", f"cannot read {self.admin_token_file}: {exc}"
                ) from None
            return token or None
        if self.admin_token_env:
            return os.environ.get(self.admin_token_env) or None
        return None


class StaticEndpoint(BaseModel):
    """An endpoint in the file: `type` plus the Fastly fields (validated by the sink's model)."""

    model_config = ConfigDict(extra="allow")
    type: str
    name: str

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        # The destinations are whatever the sink registry holds (built-ins and plugins).
        from logferry.sinks.registry import FACTORIES

        if value not in FACTORIES:
            raise ValueError(
                f"unknown endpoint type {value!r}; one of: {', '.join(sorted(FACTORIES))}"
            )
        return value


class CustomerLimits(_Strict):
    """A tenant's own limits, checked before the service-wide ones (None: no own limit)."""

    spool_max_bytes: int | str | None = Field(
        None, description='This customer\'s spool quota, e.g. "64MiB"; over it: 429.'
    )
    ingest_rate_bytes: int | str | None = Field(
        None, description='Ingest bytes per second, e.g. "1MiB"; over it: 429 + Retry-After.'
    )
    ingest_rate_lines: float | None = Field(
        None, gt=0, description="Ingest lines per second; over it: 429 + Retry-After."
    )

    @field_validator("spool_max_bytes", "ingest_rate_bytes")
    @classmethod
    def _size(cls, value: int | str | None) -> int | None:
        if value is None:
            return None
        size = parse_size(value)
        if size <= 0:
            raise ValueError("must be > 0 (leave it out for no limit)")
        return size

    def limits(self) -> dict[str, Any]:
        """The fields that were given (for the store)."""
        return {k: getattr(self, k) for k in self.model_fields_set if k in _LIMIT_FIELDS}


_LIMIT_FIELDS = ("spool_max_bytes", "ingest_rate_bytes", "ingest_rate_lines")


class StaticCustomer(CustomerLimits):
    id: str
    external_id: str | None = None
    token_env: str | None = None
    token_file: Path | None = None
    endpoints: list[StaticEndpoint] = Field(default_factory=list)

    def limits(self) -> dict[str, Any]:
        """Config is the source of truth for static customers: unset fields clear the limit."""
        return {k: getattr(self, k) for k in _LIMIT_FIELDS}


class StateConfig(_Strict):
    db: Path | None = None
    """SQLite file for customers, endpoints, tokens, status; default `<spool.dir>/logferry.db`."""


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class ServiceConfig(_Strict):
    vendor: VendorConfig = Field(default_factory=VendorConfig)
    aws: AwsConfig = Field(default_factory=AwsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    listeners: list[SyslogListenerConfig] = Field(default_factory=list)
    customers: list[StaticCustomer] = Field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.state.db or (self.spool.dir / "logferry.db")


def split_listen(value: str) -> tuple[str, int]:
    """ "HOST:PORT" or "[v6]:PORT" → (host, port): the syslog listeners' parser, so port 99999
    or an unbracketed IPv6 address is refused here too."""
    return parse_listen(value, example="127.0.0.1:8080")


ServeRole = Literal["all", "ingest", "deliver"]
SERVE_ROLES: tuple[ServeRole, ...] = ("all", "ingest", "deliver")
"""`logferry serve --role`: all (ingest + delivery, the default), ingest only, delivery only."""


def role_problem(cfg: ServiceConfig, role: str) -> ConfigProblem | None:
    """`--role ingest|deliver` splits one service over several processes that share a spool:
    only the NATS backend is shared, so the split needs backend = "nats"."""
    if role not in SERVE_ROLES:
        return ConfigProblem("--role", f"{role!r} is not a role: one of {', '.join(SERVE_ROLES)}")
    if role != "all" and cfg.spool.backend != "nats":
        return ConfigProblem(
            "--role",
            f"--role {role} needs a spool every process shares, but spool.backend is "
            f"{cfg.spool.backend!r} (one machine's disk)",
            'Set [spool] backend = "nats" (docs/scale-out.md), or run with --role all.',
        )
    return None


def node_id(cfg: ServiceConfig) -> str:
    """This process's name in NATS ownership records: `spool.node_id`, else host-port."""
    if cfg.spool.node_id:
        return cfg.spool.node_id
    import socket

    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48] or "node"
    return f"{host}-{split_listen(cfg.server.listen)[1]}"


class ConfigProblem(NamedTuple):
    """One thing wrong with a configuration: the TOML key path, what is wrong, the fix."""

    where: str
    message: str
    fix: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + (f" Fix: {self.fix}" if self.fix else "")


class ConfigInvalid(InputError):
    """A configuration with every problem listed (exit 2); `problems` for `--check --json`."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid configuration:", *(f"  {p}" for p in problems)]
        super().__init__("--config", "\n".join(lines))


def validation_problems(exc: ValidationError) -> list[ConfigProblem]:
    """Pydantic's errors as problems, each with the TOML key path and what is allowed."""
    problems = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see README 'Configuration')"
        problems.append(ConfigProblem(path, message))
    return problems


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each with the TOML key path, what is wrong and what is allowed."""
    lines = [f"{source}: invalid configuration:"]
    lines += [f"  {p.where}: {p.message}" for p in validation_problems(exc)]
    return "\n".join(lines)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> ServiceConfig:
    """Read and validate `path` (or defaults); raise InputError with every problem listed."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "(defaults)"
    if path is not None:
        try:
            raw = tomllib.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise InputError("--config", f"{path} does not exist.") from None
        except UnicodeDecodeError as exc:
            raise InputError(
                "--config",
                f"{path} is not UTF-8 (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                "TOML files must be UTF-8: re-save it as UTF-8.",
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError("--config", f"{path} is not valid TOML: {exc}.") from None
        except RecursionError:  # tomllib recurses once per nesting level
            raise InputError(
                "--config", f"{path} nests arrays or tables too deeply to be a configuration."
            ) from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigInvalid(source, validation_problems(exc)) from None
