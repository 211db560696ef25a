"""SIGHUP: re-read the config file and apply what can change without a restart.

The new file is validated exactly as at start-up (`load_config` + `config_check.check_config`);
when anything is wrong, every problem is logged and the running configuration keeps serving, as
Vector's `--watch-config` and Fluent Bit's hot reload do. Otherwise the difference is applied
through the same public `Service` methods the management API and the start-up reconciliation use:

- `[[customers]]`: new customers are created, limits follow the file, the file's tokens are the
  only live config tokens (a removed or rotated one stops working at once), endpoints that are
  new or changed are put (unchanged ones are left alone: no worker is reconfigured for nothing).
  A customer or endpoint removed from the file keeps its stored record and its accepted lines
  (a restart does the same: the state database, not the file, is the record); its config tokens
  are revoked, and the log says how to delete it (`DELETE` via the API or `logferry admin`).
- `[[listeners]]`: removed or changed listeners stop, new or changed ones start.
- Anything else (listen address, spool, TLS, vendor, auth, ...) is logged as "restart needed".
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logferry.errors import InputError, LogferryError
from logferry.ingest.syslog import SyslogListenerConfig, SyslogServer
from logferry.service.config import ConfigInvalid, ConfigProblem, ServiceConfig, load_config
from logferry.service.config_check import check_config
from logferry.service.endpoints import parse_endpoint
from logferry.service.logs import log

if TYPE_CHECKING:
    from logferry.service.runtime import Service

logger = logging.getLogger("logferry.reload")

LIVE_SECTIONS = ("customers", "listeners")
"""Top-level config keys a reload applies; every other difference needs a restart."""


def install_sighup(
    service: Service, path: Path | None, overrides: dict[str, Any] | None
) -> Callable[[], object]:
    """Reload on SIGHUP (one at a time, in order); returns the function that uninstalls it."""
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def reload_once() -> None:
        async with lock:
            try:
                await reload_config(service, path, overrides)
            except Exception:  # a reload must never take the running service down
                logger.exception("configuration reload failed; the running configuration stays")

    def on_sighup() -> None:
        task = loop.create_task(reload_once(), name="config-reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread: no signals
        log(logger, logging.WARNING, "SIGHUP reload unavailable (serve not in the main thread)")
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)


async def reload_config(
    service: Service, path: Path | None, overrides: dict[str, Any] | None = None
) -> bool:
    """Validate the file and apply it; False (and every problem logged) when it is invalid."""
    if path is None:
        log(logger, logging.WARNING, "SIGHUP: no --config file to re-read; nothing reloaded")
        return False
    log(logger, logging.INFO, "SIGHUP: re-reading the configuration", config=str(path))
    problems = await asyncio.to_thread(_validate, service, path, overrides)
    if isinstance(problems, list):
        for problem in problems:
            log(
                logger,
                logging.ERROR,
                "configuration reload refused; the running configuration stays",
                where=problem.where,
                problem=problem.message,
                fix=problem.fix,
            )
        return False
    if service.stopping:
        return False  # shutting down: starting listeners now would race `Service.stop`
    new = problems
    running = service.config
    for key in _restart_needed(running, new):
        log(
            logger,
            logging.WARNING,
            "setting changed in the file: restart needed to apply it",
            key=key,
        )
    failures = await _apply_customers(service, running, new)
    failures += await _apply_listeners(service, new.listeners)
    running.customers = new.customers
    running.listeners = new.listeners
    log(
        logger,
        logging.INFO if not failures else logging.ERROR,
        "configuration reloaded" if not failures else "configuration reloaded with errors",
        config=str(path),
        customers=len(new.customers),
        listeners=len(service.listeners),
        errors=failures,
    )
    return not failures


def _validate(
    service: Service, path: Path, overrides: dict[str, Any] | None
) -> ServiceConfig | list[ConfigProblem]:
    """The new config, or its problems (file I/O and certificate loading: off the loop)."""
    try:
        new = load_config(path, overrides)
    except ConfigInvalid as exc:
        return exc.problems
    except InputError as exc:
        return [ConfigProblem(exc.where, exc.message, exc.fix)]
    # The spool directory is not re-checked: it cannot change without a restart anyway.
    problems = check_config(new, service.store, spool=False)
    return problems or new


def _restart_needed(running: ServiceConfig, new: ServiceConfig) -> list[str]:
    """Dotted keys outside LIVE_SECTIONS whose value differs."""
    old_doc = running.model_dump(mode="json", exclude=set(LIVE_SECTIONS))
    new_doc = new.model_dump(mode="json", exclude=set(LIVE_SECTIONS))
    return sorted(_differences(old_doc, new_doc, ""))


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


# ------------------------------------------------------------------------------ customers


async def _apply_customers(service: Service, running: ServiceConfig, new: ServiceConfig) -> int:
    """Customers, limits, tokens and endpoints as the file says; the count of failures."""
    failures = 0
    wanted: dict[str, list[str]] = {}
    for customer in new.customers:
        try:
            service.put_customer(customer.id, customer.external_id, customer.limits())
        except Exception as exc:  # ExternalIdTaken after the check: a concurrent API call
            failures += _failed(f"customers[{customer.id}]", exc)
            continue
        token = _token(customer)
        wanted[customer.id] = [token] if token else []
        for endpoint in customer.endpoints:
            key = (customer.id, endpoint.name)
            try:
                type_, model = parse_endpoint(
                    endpoint.name, endpoint.model_dump(), **service.endpoint_rules
                )
                current = service.endpoints.get(key)
                if current is not None and current[0].type == type_ and current[1] == model:
                    continue
                service.put_endpoint(customer.id, endpoint.name, type_, model)
                log(
                    logger,
                    logging.INFO,
                    "endpoint added" if current is None else "endpoint changed",
                    customer=customer.id,
                    endpoint=endpoint.name,
                )
            except Exception as exc:  # EndpointConflict: a type change with lines pending
                failures += _failed(f"customers[{customer.id}].endpoints[{endpoint.name}]", exc)
    revoked = await asyncio.to_thread(service.store.reconcile_static_tokens, wanted)
    if revoked:
        log(logger, logging.INFO, "static tokens no longer in the config revoked", count=revoked)
    _log_removed(running, new)
    return failures


def _token(customer: Any) -> str | None:
    """The customer's config token (validated readable by check_config)."""
    if customer.token_env:
        return os.environ.get(customer.token_env) or None
    if customer.token_file:
        return customer.token_file.read_text().strip() or None
    return None


def _log_removed(running: ServiceConfig, new: ServiceConfig) -> None:
    """What left the file stays stored with its accepted lines: deleting is explicit."""
    kept = {c.id: {e.name for e in c.endpoints} for c in new.customers}
    for customer in running.customers:
        if customer.id not in kept:
            log(
                logger,
                logging.WARNING,
                "customer removed from the config: its config tokens are revoked; it stays "
                "stored with its endpoints and accepted lines",
                customer=customer.id,
                fix=f"logferry admin customers delete {customer.id} (DELETE "
                f"/v1/customers/{customer.id}) removes it and drops its lines",
            )
            continue
        for endpoint in customer.endpoints:
            if endpoint.name not in kept[customer.id]:
                log(
                    logger,
                    logging.WARNING,
                    "endpoint removed from the config: it stays stored and keeps delivering",
                    customer=customer.id,
                    endpoint=endpoint.name,
                    fix=f"logferry admin endpoints delete {customer.id} {endpoint.name} "
                    "removes it and drops its lines",
                )


def _failed(where: str, exc: Exception) -> int:
    message = exc.message if isinstance(exc, LogferryError) else str(exc)
    fix = exc.fix if isinstance(exc, LogferryError) else None
    log(logger, logging.ERROR, "reload could not apply", where=where, problem=message, fix=fix)
    return 1


# ------------------------------------------------------------------------------ listeners


async def _apply_listeners(service: Service, wanted: list[SyslogListenerConfig]) -> int:
    """Stop listeners that left (or changed), then start new ones; the count of failures."""
    want = {_identity(c): c for c in wanted}
    for server in list(service.listeners):
        if _identity(server.config) not in want:
            await server.stop()
            service.listeners.remove(server)
            log(logger, logging.INFO, "syslog listener stopped", listener=server.config.label)
    have = {_identity(s.config) for s in service.listeners}
    failures = 0
    for identity, config in want.items():
        if identity in have:
            continue
        server = SyslogServer(
            config,
            _deliver(service, config.customer_id, config.endpoint),
            endpoint_exists=_exists(service, config.customer_id, config.endpoint),
        )
        try:
            await server.start()
        except InputError as exc:
            failures += _failed(exc.where, exc)
            continue
        service.listeners.append(server)
        log(logger, logging.INFO, "syslog listener started", listener=config.label)
    return failures


def _identity(config: SyslogListenerConfig) -> str:
    return config.model_dump_json()


def _deliver(service: Service, customer_id: str, name: str) -> Any:
    async def deliver(data: bytes, lines: int) -> None:
        # SyslogServer calls this with `normalize`'s output only.
        await service.ingest(customer_id, name, data, lines, "syslog", normalized=True)

    return deliver


def _exists(service: Service, customer_id: str, name: str) -> Callable[[], bool]:
    return lambda: (customer_id, name) in service.endpoints
