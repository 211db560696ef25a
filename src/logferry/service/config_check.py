"""Everything a configuration needs beyond its schema, checked before anything listens.

`load_config` checks each key's shape; this module checks what the file refers to and what the
service would otherwise find only while starting (inside the server's lifespan, where a problem
used to end as "cannot listen" and exit 1): files (token files, TLS certificates and keys, the
admin token file, the spool directory), endpoint bodies, listeners naming a missing endpoint, an
external ID already bound in the state database. `serve`, `serve --check` and a SIGHUP reload
call `check_config` alike, so the three can never disagree (README "Checking and reloading").
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from logferry.errors import InputError
from logferry.service.config import (
    ConfigInvalid,
    ConfigProblem,
    ServiceConfig,
    role_problem,
    split_listen,
)
from logferry.service.endpoints import (
    FieldError,
    check_customer_id,
    check_endpoint_name,
    parse_endpoint,
)
from logferry.service.store import Store
from logferry.tls import ClientAuth, server_ssl_context


class KnownState(Protocol):
    """What the state database already holds (`Store` is one)."""

    def get_customer(self, customer_id: str) -> object | None: ...

    def external_id_bound(self, external_id: str) -> bool: ...

    def get_endpoint(self, customer_id: str, name: str) -> object | None: ...


@contextmanager
def existing_state(cfg: ServiceConfig) -> Iterator[Store | None]:
    """The state database when it exists (None before the first start): never created here.
    None with backend = "nats": the registry lives in NATS KV, which `--check` does not
    contact (the running service checks external IDs there when it applies the file)."""
    if cfg.spool.backend == "nats" or not cfg.db_path.is_file():
        yield None
        return
    store = Store(cfg.db_path)
    try:
        yield store
    finally:
        store.close()


def check_config(
    cfg: ServiceConfig, state: KnownState | None, *, spool: bool = True, role: str = "all"
) -> list[ConfigProblem]:
    """Every problem of `cfg` that its schema cannot see, each with its key path (`role`:
    `serve --role`, which must fit `spool.backend`)."""
    problems: list[ConfigProblem] = []
    wrong_role = role_problem(cfg, role)
    if wrong_role is not None:
        problems.append(wrong_role)
    problems += _files(cfg, spool=spool)
    problems += _customers(cfg, state)
    problems += _listeners(cfg, state)
    problems += _nats_batches(cfg)
    return problems


def _nats_batches(cfg: ServiceConfig) -> list[ConfigProblem]:
    """On NATS one request is one atomic batch (spool/nats/publish.py): the server caps a
    batch at 1,000 messages, so the largest body must fit in that many."""
    if cfg.spool.backend != "nats":
        return []
    from logferry.spool.nats.publish import MAX_BATCH_MESSAGES, most_parts
    from logferry.spool.nats.settings import NatsSpoolSettings

    body = int(cfg.server.max_body_bytes)
    message = NatsSpoolSettings.model_fields["max_message_bytes"].default
    if most_parts(body, message) <= MAX_BATCH_MESSAGES:
        return []
    largest = (MAX_BATCH_MESSAGES - 1) // 2 * message
    return [
        ConfigProblem(
            "server.max_body_bytes",
            f'{body} bytes is too large for spool.backend = "nats": a request is stored as one '
            f"JetStream atomic batch, at most {MAX_BATCH_MESSAGES} messages of {message} bytes",
            f"Lower it to {largest} bytes or less (the default, 16MiB, fits).",
        )
    ]


def raise_if_invalid(source: str, problems: list[ConfigProblem]) -> None:
    if problems:
        raise ConfigInvalid(source, problems)


# ------------------------------------------------------------------------------ files


def _files(cfg: ServiceConfig, *, spool: bool) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    tls = cfg.server.tls
    if tls is not None:
        problems += _tls("server.tls", tls.cert_file, tls.key_file, tls.ca_file, tls.client_auth)
    for i, listener in enumerate(cfg.listeners):
        if listener.tls is not None:
            t = listener.tls
            problems += _tls(
                f"listeners.{i}.tls", t.cert_file, t.key_file, t.ca_file, t.client_auth
            )
    if cfg.auth.admin_token_file is not None:
        problem = _readable_token("auth.admin_token_file", cfg.auth.admin_token_file)
        if problem is not None:
            problems.append(problem)
    if spool:
        problem = _writable_dir("spool.dir", cfg.spool.dir)
        if problem is not None:
            problems.append(problem)
    return problems


def _tls(
    where: str, cert: Path, key: Path, ca: Path | None, auth: ClientAuth
) -> list[ConfigProblem]:
    """Load it exactly as serving will (`logferry.tls.server_ssl_context`)."""
    try:
        server_ssl_context(where, cert, key, ca, auth)
    except InputError as exc:
        return [ConfigProblem(exc.where, exc.message, exc.fix)]
    return []


def _readable_token(where: str, path: Path) -> ConfigProblem | None:
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return ConfigProblem(where, f"cannot read {path}: {exc}", "Point it at a readable file.")
    if not token:
        return ConfigProblem(where, f"{path} is empty", "Write the token into the file.")
    return None


def _writable_dir(where: str, path: Path) -> ConfigProblem | None:
    """The directory, or the nearest parent that exists (serve creates the rest), is writable."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return ConfigProblem(where, f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        return ConfigProblem(
            where,
            f"{probe} is not writable by this user",
            "Give the service's user write access or pick another directory.",
        )
    return None


# ------------------------------------------------------------------------------ customers


def _customers(cfg: ServiceConfig, state: KnownState | None) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    ids = Counter(c.id for c in cfg.customers)
    external_ids = Counter(c.external_id for c in cfg.customers if c.external_id)
    rules = {
        "allow_http_domain": cfg.aws.allow_http_domain,
        "allow_private_domain": cfg.aws.allow_private_domain,
    }
    for i, customer in enumerate(cfg.customers):
        where = f"customers.{i}"
        try:
            check_customer_id(customer.id)
        except FieldError as exc:
            problems.append(ConfigProblem(f"{where}.id", exc.errors[0]["msg"]))
        if ids[customer.id] > 1:
            problems.append(ConfigProblem(f"{where}.id", f"{customer.id!r} is defined twice"))
        if customer.token_env and customer.token_file:
            problems.append(
                ConfigProblem(f"{where}.token_file", "give token_env or token_file, not both")
            )
        elif customer.token_file is not None:
            problem = _readable_token(f"{where}.token_file", customer.token_file)
            if problem is not None:
                problems.append(problem)
        if customer.external_id:
            if external_ids[customer.external_id] > 1:
                problems.append(
                    ConfigProblem(
                        f"{where}.external_id",
                        f"{customer.external_id!r} is given to more than one customer",
                        "External IDs are unique: give each customer its own.",
                    )
                )
            problems += _external_id_free(
                f"{where}.external_id", customer.id, customer.external_id, state
            )
        names = Counter(e.name for e in customer.endpoints)
        for j, endpoint in enumerate(customer.endpoints):
            at = f"{where}.endpoints.{j}"
            if names[endpoint.name] > 1:
                problems.append(ConfigProblem(f"{at}.name", f"{endpoint.name!r} is defined twice"))
            problems += _endpoint(at, endpoint.name, endpoint.model_dump(), rules)
    return problems


def _external_id_free(
    where: str, customer_id: str, external_id: str, state: KnownState | None
) -> list[ConfigProblem]:
    """A new customer's external ID must never have been bound (deleted customers' too)."""
    if state is None or state.get_customer(customer_id) is not None:
        return []
    if not state.external_id_bound(external_id):
        return []
    return [
        ConfigProblem(
            where,
            f"{external_id!r} is already bound to another (possibly deleted) customer; "
            "external IDs are unique and never reused",
            "Give this customer a new external ID (and its role a matching trust policy).",
        )
    ]


def _endpoint(
    where: str, name: str, body: dict[str, object], rules: dict[str, bool]
) -> list[ConfigProblem]:
    try:
        check_endpoint_name(name)
        parse_endpoint(name, body, **rules)
    except FieldError as exc:
        out = []
        for error in exc.errors:
            loc = [str(p) for p in error["loc"] if p not in ("body", "path")]
            out.append(ConfigProblem(".".join([where, *loc]), str(error["msg"])))
        return out
    except InputError as exc:
        return [ConfigProblem(f"{where}.{exc.where}", exc.message, exc.fix)]
    return []


# ------------------------------------------------------------------------------ listeners


def _listeners(cfg: ServiceConfig, state: KnownState | None) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    in_file = {(c.id, e.name) for c in cfg.customers for e in c.endpoints}
    http = _address(cfg.server.listen)
    seen: Counter[tuple[str, str, int]] = Counter(
        (lc.protocol, *_address(lc.listen)) for lc in cfg.listeners if lc.port != 0
    )
    # NATS: the registry is in KV, not read here; the service checks API-made endpoints there
    # once connected (a listener for one used to be refused before start, exit 2).
    registry_here = cfg.spool.backend != "nats"
    for i, lc in enumerate(cfg.listeners):
        key = (lc.customer_id, lc.endpoint)
        missing = state is None or state.get_endpoint(*key) is None
        if key not in in_file and registry_here and missing:
            problems.append(
                ConfigProblem(
                    f"listeners.{i}.endpoint",
                    f"names endpoint {lc.endpoint!r} of customer {lc.customer_id!r}, which "
                    "does not exist",
                    "Define it among that customer's endpoints in the file, or create it via "
                    "the API first.",
                )
            )
        address = _address(lc.listen)
        if lc.port != 0 and seen[(lc.protocol, *address)] > 1:
            problems.append(
                ConfigProblem(f"listeners.{i}.listen", f"{lc.protocol} {lc.listen} is used twice")
            )
        if lc.protocol == "tcp" and lc.port != 0 and address == http:
            problems.append(
                ConfigProblem(
                    f"listeners.{i}.listen", f"{lc.listen} is server.listen (the HTTP port)"
                )
            )
    return problems


def _address(listen: str) -> tuple[str, int]:
    host, port = split_listen(listen)
    return host.lower(), port
