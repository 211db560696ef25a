"""The records of the registry (customers, endpoints, tokens) and its errors, shared by both
stores: SQLite (`store.py`, the local backend) and NATS KV (`registry_kv.py`)."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any

from logferry.errors import LogferryError

CUSTOMER_LIMITS = ("spool_max_bytes", "ingest_rate_bytes", "ingest_rate_lines")
ERRORS_KEPT = 100
TOKEN_PREFIX = "lft"
STATIC_TOKEN_PREFIX = "static-"
"""Token ids of the config's tokens ([[customers]] token_env / token_file)."""


@dataclass(frozen=True)
class CustomerRecord:
    id: str
    external_id: str
    created: float
    spool_max_bytes: int | None = None
    ingest_rate_bytes: float | None = None
    ingest_rate_lines: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CustomerRecord:
        return cls(
            row["id"],
            row["external_id"],
            row["created"],
            row["spool_max_bytes"],
            row["ingest_rate_bytes"],
            row["ingest_rate_lines"],
        )


class ExternalIdTaken(LogferryError):
    """The external ID belongs (or belonged, before a delete) to a customer: never reuse it."""

    def __init__(self, external_id: str, owner: str, deleted: bool) -> None:
        state = "a deleted customer" if deleted else "customer"
        super().__init__(
            f"external ID {external_id!r} is already bound to {state} {owner!r}; "
            "external IDs are unique and never reused"
        )
        self.external_id = external_id
        self.owner = owner
        self.deleted = deleted


class ConfigToken(LogferryError):
    """The token comes from the config file ([[customers]] token_env / token_file): the config
    is its truth, so only the config can revoke (rotate or remove) it."""


@dataclass(frozen=True)
class EndpointRecord:
    customer_id: str
    name: str
    type: str
    config: dict[str, Any]
    uid_prefix: str
    created: float
    updated: float


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret (SHA-256: tokens are random, so no salt or KDF)."""
    return hashlib.sha256(secret.encode()).hexdigest()
