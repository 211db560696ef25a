"""The registry: customers, hashed ingest tokens and endpoints, whatever stores them.

Why a protocol: with `[spool] backend = "local"` one process serves everything and the SQLite
`Store` is the registry; with `backend = "nats"` many processes serve the same customers, so the
registry lives in NATS KV (`service.registry_kv.KvRegistry`) and every node applies the others'
changes as they happen. `Registry` is exactly what the service, the API and the reload use of
the store for those three things; `StateStore` adds what stays node-local in SQLite under
`spool.dir` (endpoint stats and errors: counters and history of this node's deliveries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

from logferry.service.records import CustomerRecord, EndpointRecord

ChangeKind = Literal["customer", "endpoint", "token"]
RegistryListener = Callable[[ChangeKind, Any, Any], None]
"""`listener(kind, key, record_or_None)`: customer id / (customer id, name) / token id; None
when deleted. Called on the service's event loop (`KvRegistry.listen`)."""


@runtime_checkable
class Registry(Protocol):
    """Customers (with external-ID uniqueness, tombstones included), tokens, endpoints.

    Blocking methods: call them on a thread from the event loop, except the reads that are
    documented as memory-only in the implementation (`get_customer`, `cached_customer_for_token`).
    """

    # -- customers -------------------------------------------------------------------------
    def put_customer(
        self, customer_id: str, external_id: str, limits: dict[str, Any] | None = None
    ) -> tuple[CustomerRecord, bool]: ...

    def put_customers(
        self, items: list[tuple[str, str, dict[str, Any] | None]]
    ) -> list[tuple[CustomerRecord, bool]]: ...

    def external_id_bound(self, external_id: str) -> bool: ...

    def get_customer(self, customer_id: str) -> CustomerRecord | None: ...

    def list_customers(self) -> list[CustomerRecord]: ...

    def delete_customer(self, customer_id: str) -> list[str]: ...

    # -- tokens ------------------------------------------------------------------------------
    def issue_token(self, customer_id: str) -> tuple[str, str]: ...

    def put_static_token(self, customer_id: str, token: str) -> None: ...

    def reconcile_static_tokens(
        self, wanted: dict[str, list[str]], *, only: list[str] | None = None
    ) -> int: ...

    def cached_customer_for_token(self, token: str) -> str | None: ...

    def customer_for_token(self, token: str) -> str | None: ...

    def list_tokens(self, customer_id: str) -> list[dict[str, Any]]: ...

    def revoke_token(self, customer_id: str, token_id: str) -> bool: ...

    # -- endpoints ---------------------------------------------------------------------------
    def put_endpoint(
        self, customer_id: str, name: str, type_: str, config: dict[str, Any]
    ) -> tuple[EndpointRecord, bool]: ...

    def put_endpoints(
        self, items: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[tuple[EndpointRecord, bool]]: ...

    def get_endpoint(self, customer_id: str, name: str) -> EndpointRecord | None: ...

    def list_endpoints(self, customer_id: str | None = None) -> list[EndpointRecord]: ...

    def delete_endpoint(self, customer_id: str, name: str) -> str | None: ...


@runtime_checkable
class StateStore(Registry, Protocol):
    """The registry plus this node's endpoint stats and errors (SQLite under spool.dir)."""

    def save_stats(self, uid_prefix: str, stats: dict[str, Any]) -> None: ...

    def save_stats_many(self, rows: list[tuple[str, dict[str, Any]]]) -> None: ...

    def load_stats(self, uid_prefix: str) -> dict[str, Any]: ...

    def saved_stats(self) -> dict[str, str]: ...

    def add_error(
        self, uid_prefix: str, code: str, message: str, fix: str | None, when: float | None = None
    ) -> None: ...

    def errors(self, uid_prefix: str) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...
