"""Durable state of the service in SQLite: customers, ingest tokens, endpoints, status, errors.

SQLite because it is in the standard library, transactional and crash-safe (WAL), and this state
is small and written rarely compared with log data (which lives in the spool, not here).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from logferry.service.records import (
    CUSTOMER_LIMITS,
    ERRORS_KEPT,
    STATIC_TOKEN_PREFIX,
    TOKEN_PREFIX,
    ConfigToken,
    CustomerRecord,
    EndpointRecord,
    ExternalIdTaken,
    hash_secret,
)

__all__ = [
    "CUSTOMER_LIMITS",
    "ConfigToken",
    "CustomerRecord",
    "EndpointRecord",
    "ExternalIdTaken",
    "Store",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY,
    external_id TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS endpoints (
    customer_id TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    config TEXT NOT NULL,
    uid_prefix TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (customer_id, name)
);
CREATE TABLE IF NOT EXISTS endpoint_stats (
    uid_prefix TEXT PRIMARY KEY,
    stats TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoint_errors (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uid_prefix TEXT NOT NULL,
    time REAL NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    fix TEXT
);
CREATE INDEX IF NOT EXISTS endpoint_errors_by_endpoint ON endpoint_errors(uid_prefix, seq);
CREATE TABLE IF NOT EXISTS external_ids (
    external_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    created REAL NOT NULL,
    deleted REAL
);
"""
# Every external ID ever bound, kept after its customer is deleted (a tombstone): the old
# tenant's roles still trust it, so it must never be handed to anybody again.

_MIGRATIONS = (
    "ALTER TABLE customers ADD COLUMN spool_max_bytes INTEGER",
    "ALTER TABLE customers ADD COLUMN ingest_rate_bytes REAL",
    "ALTER TABLE customers ADD COLUMN ingest_rate_lines REAL",
)


class Store:
    """Thread-safe; every method is one short transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # never world-readable, even briefly
        os.close(fd)
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._token_cache: dict[str, str] = {}
        self._token_generation = 0
        """Changes around every token revocation: a lookup that overlapped one caches nothing."""
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(customers)")}
            for statement in _MIGRATIONS:
                if statement.split()[5] not in columns:
                    self._db.execute(statement)
            # Databases from before the tombstones: bind their customers' IDs now.
            self._db.execute(
                "INSERT OR IGNORE INTO external_ids(external_id, customer_id, created) "
                "SELECT external_id, id, created FROM customers"
            )

        # Reads go through their own connection: in WAL mode they never wait for a writer's
        # fsync (synchronous=FULL), and some run on the event loop (a first request's stats,
        # a customer lookup), where waiting behind a commit stalled every request.
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        self._reader.execute("PRAGMA query_only=ON")
        self._read_lock = threading.Lock()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader

    @contextmanager
    def _tokens_changing(self) -> Iterator[None]:
        """Forget cached tokens before and after a change: a lookup that read the old rows
        (on the reader connection, concurrently) cannot put them back."""
        self._token_generation += 1
        self._token_cache.clear()
        try:
            yield
        finally:
            self._token_generation += 1
            self._token_cache.clear()

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ customers

    def put_customer(
        self, customer_id: str, external_id: str, limits: dict[str, Any] | None = None
    ) -> tuple[CustomerRecord, bool]:
        """Create the customer if new (its external ID must never have been bound before); an
        existing one keeps its external ID and gets the `limits` given. Returns (rec, new)."""
        return self.put_customers([(customer_id, external_id, limits)])[0]

    def put_customers(
        self, items: list[tuple[str, str, dict[str, Any] | None]]
    ) -> list[tuple[CustomerRecord, bool]]:
        """`put_customer` for many `(customer_id, external_id, limits)` in one transaction
        (start-up applies the config's customers); an ExternalIdTaken writes none of them."""
        with self._tx() as db:
            return [self._put_customer(db, *item) for item in items]

    @staticmethod
    def _put_customer(
        db: sqlite3.Connection,
        customer_id: str,
        external_id: str,
        limits: dict[str, Any] | None,
    ) -> tuple[CustomerRecord, bool]:
        limits = {k: v for k, v in (limits or {}).items() if k in CUSTOMER_LIMITS}
        row = db.execute("SELECT * FROM customers WHERE id=?", (customer_id,)).fetchone()
        if row is not None:
            for key, value in limits.items():
                db.execute(f"UPDATE customers SET {key}=? WHERE id=?", (value, customer_id))
            row = db.execute("SELECT * FROM customers WHERE id=?", (customer_id,)).fetchone()
            return CustomerRecord.from_row(row), False
        bound = db.execute(
            "SELECT customer_id, deleted FROM external_ids WHERE external_id=?",
            (external_id,),
        ).fetchone()
        if bound is not None:
            raise ExternalIdTaken(external_id, bound["customer_id"], bound["deleted"] is not None)
        now = time.time()
        db.execute(
            "INSERT INTO customers(id, external_id, created) VALUES (?,?,?)",
            (customer_id, external_id, now),
        )
        db.execute(
            "INSERT INTO external_ids(external_id, customer_id, created) VALUES (?,?,?)",
            (external_id, customer_id, now),
        )
        for key, value in limits.items():
            db.execute(f"UPDATE customers SET {key}=? WHERE id=?", (value, customer_id))
        row = db.execute("SELECT * FROM customers WHERE id=?", (customer_id,)).fetchone()
        return CustomerRecord.from_row(row), True

    def external_id_bound(self, external_id: str) -> bool:
        """True if `external_id` was ever bound (live or tombstoned)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT 1 FROM external_ids WHERE external_id=?", (external_id,)
            ).fetchone()
        return row is not None

    def get_customer(self, customer_id: str) -> CustomerRecord | None:
        with self._reading() as db:
            row = db.execute("SELECT * FROM customers WHERE id=?", (customer_id,)).fetchone()
        return CustomerRecord.from_row(row) if row else None

    def list_customers(self) -> list[CustomerRecord]:
        with self._reading() as db:
            rows = db.execute("SELECT * FROM customers ORDER BY id").fetchall()
        return [CustomerRecord.from_row(r) for r in rows]

    def delete_customer(self, customer_id: str) -> list[str]:
        """Delete the customer, its tokens and endpoints; returns the endpoints' uid prefixes."""
        with self._tokens_changing(), self._tx() as db:
            uids = [
                r["uid_prefix"]
                for r in db.execute(
                    "SELECT uid_prefix FROM endpoints WHERE customer_id=?", (customer_id,)
                )
            ]
            db.execute(
                "UPDATE external_ids SET deleted=? WHERE customer_id=? AND deleted IS NULL",
                (time.time(), customer_id),
            )
            db.execute("DELETE FROM customers WHERE id=?", (customer_id,))
            for uid in uids:
                db.execute("DELETE FROM endpoint_stats WHERE uid_prefix=?", (uid,))
                db.execute("DELETE FROM endpoint_errors WHERE uid_prefix=?", (uid,))
            return uids

    # ------------------------------------------------------------------ tokens

    def issue_token(self, customer_id: str) -> tuple[str, str]:
        """A new ingest token, shown once; only its hash is stored. Returns (token_id, token)."""
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens(id, customer_id, secret_hash, created) VALUES (?,?,?,?)",
                (token_id, customer_id, hash_secret(secret), time.time()),
            )
        return token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def put_static_token(self, customer_id: str, token: str) -> None:
        """A token from the config file (env/file): stored hashed under a stable id."""
        self.reconcile_static_tokens({customer_id: [token]}, only=[customer_id])

    def reconcile_static_tokens(
        self, wanted: dict[str, list[str]], *, only: list[str] | None = None
    ) -> int:
        """Make the config's tokens the only live static tokens (of the customers in `only`,
        default all): removed or rotated ones are revoked, listed ones (re)activated.
        Returns how many were revoked."""
        now = time.time()
        keep: set[str] = set()
        with self._tokens_changing(), self._tx() as db:
            for customer_id, tokens in wanted.items():
                for token in tokens:
                    token_id = STATIC_TOKEN_PREFIX + hash_secret(token)[:12]
                    keep.add(token_id)
                    db.execute(
                        "INSERT INTO tokens(id, customer_id, secret_hash, created) "
                        "VALUES (?,?,?,?) ON CONFLICT(id) DO UPDATE SET revoked=NULL "
                        "WHERE tokens.customer_id=excluded.customer_id",
                        (token_id, customer_id, hash_secret(token), now),
                    )
            rows = db.execute(
                "SELECT id, customer_id FROM tokens WHERE id LIKE 'static-%' AND revoked IS NULL"
            ).fetchall()
            revoked = 0
            for row in rows:
                if row["id"] in keep or (only is not None and row["customer_id"] not in only):
                    continue
                db.execute("UPDATE tokens SET revoked=? WHERE id=?", (now, row["id"]))
                revoked += 1
        return revoked

    def cached_customer_for_token(self, token: str) -> str | None:
        """The customer of a token seen (valid) before; None means "ask customer_for_token"."""
        return self._token_cache.get(hash_secret(token))

    def customer_for_token(self, token: str) -> str | None:
        """The customer a token belongs to; valid tokens are cached in memory (by hash)."""
        key = hash_secret(token)
        cached = self._token_cache.get(key)
        if cached is not None:
            return cached
        generation = self._token_generation
        found = self._lookup_token(token)
        if found is not None and generation == self._token_generation:
            if len(self._token_cache) > 100_000:
                self._token_cache.clear()
            self._token_cache[key] = found
        return found

    def _lookup_token(self, token: str) -> str | None:
        parts = token.split("_", 2)
        with self._reading() as db:
            if len(parts) == 3 and parts[0] == TOKEN_PREFIX:
                row = db.execute(
                    "SELECT customer_id, secret_hash FROM tokens WHERE id=? AND revoked IS NULL",
                    (parts[1],),
                ).fetchone()
                if row and hmac.compare_digest(row["secret_hash"], hash_secret(parts[2])):
                    return str(row["customer_id"])
                return None
            row = db.execute(
                "SELECT customer_id, secret_hash FROM tokens WHERE id=? AND revoked IS NULL",
                (STATIC_TOKEN_PREFIX + hash_secret(token)[:12],),
            ).fetchone()
        if row and hmac.compare_digest(row["secret_hash"], hash_secret(token)):
            return str(row["customer_id"])
        return None

    def list_tokens(self, customer_id: str) -> list[dict[str, Any]]:
        """IDs and dates (never secrets); `source` says who may revoke: "config" or "api"."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT id, created, revoked FROM tokens WHERE customer_id=? ORDER BY created",
                (customer_id,),
            ).fetchall()
        return [
            {**dict(r), "source": "config" if r["id"].startswith(STATIC_TOKEN_PREFIX) else "api"}
            for r in rows
        ]

    def revoke_token(self, customer_id: str, token_id: str) -> bool:
        """Revoke an API-issued token; False if there is no such live token. Raises ConfigToken
        for a live token of the config (it would come back at the next start)."""
        if token_id.startswith(STATIC_TOKEN_PREFIX):
            with self._reading() as db:
                live = db.execute(
                    "SELECT 1 FROM tokens WHERE id=? AND customer_id=? AND revoked IS NULL",
                    (token_id, customer_id),
                ).fetchone()
            if live is not None:
                raise ConfigToken(
                    f"token {token_id} comes from the config",
                    fix="remove or rotate it in [[customers]] and reload",
                )
            return False
        with self._tokens_changing(), self._tx() as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked=? WHERE id=? AND customer_id=? AND revoked IS NULL",
                (time.time(), token_id, customer_id),
            )
            return cursor.rowcount > 0

    # ------------------------------------------------------------------ endpoints

    def put_endpoint(
        self, customer_id: str, name: str, type_: str, config: dict[str, Any]
    ) -> tuple[EndpointRecord, bool]:
        """Create or replace; the uid prefix (spool + S3 key identity) survives updates."""
        return self.put_endpoints([(customer_id, name, type_, config)])[0]

    def put_endpoints(
        self, items: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[tuple[EndpointRecord, bool]]:
        """`put_endpoint` for many `(customer_id, name, type, config)` in one transaction
        (start-up applies the config's endpoints: one commit each made thousands slow)."""
        now = time.time()
        with self._tx() as db:
            return [self._put_endpoint(db, now, *item) for item in items]

    @staticmethod
    def _put_endpoint(
        db: sqlite3.Connection,
        now: float,
        customer_id: str,
        name: str,
        type_: str,
        config: dict[str, Any],
    ) -> tuple[EndpointRecord, bool]:
        row = db.execute(
            "SELECT uid_prefix, created, type FROM endpoints WHERE customer_id=? AND name=?",
            (customer_id, name),
        ).fetchone()
        if row is not None and row["type"] == type_:
            uid, created, new = row["uid_prefix"], row["created"], False
            db.execute(
                "UPDATE endpoints SET config=?, updated=? WHERE customer_id=? AND name=?",
                (json.dumps(config), now, customer_id, name),
            )
        else:
            if row is not None:
                db.execute(
                    "DELETE FROM endpoints WHERE customer_id=? AND name=?", (customer_id, name)
                )
            uid, created, new = secrets.token_hex(6), now, True
            db.execute(
                "INSERT INTO endpoints(customer_id, name, type, config, uid_prefix, created,"
                " updated) VALUES (?,?,?,?,?,?,?)",
                (customer_id, name, type_, json.dumps(config), uid, now, now),
            )
        return EndpointRecord(customer_id, name, type_, config, uid, created, now), new

    def get_endpoint(self, customer_id: str, name: str) -> EndpointRecord | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT * FROM endpoints WHERE customer_id=? AND name=?", (customer_id, name)
            ).fetchone()
        return self._endpoint(row) if row else None

    def list_endpoints(self, customer_id: str | None = None) -> list[EndpointRecord]:
        with self._reading() as db:
            if customer_id is None:
                rows = db.execute("SELECT * FROM endpoints").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM endpoints WHERE customer_id=? ORDER BY name", (customer_id,)
                ).fetchall()
        return [self._endpoint(r) for r in rows]

    def delete_endpoint(self, customer_id: str, name: str) -> str | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT uid_prefix FROM endpoints WHERE customer_id=? AND name=?",
                (customer_id, name),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM endpoints WHERE customer_id=? AND name=?", (customer_id, name))
            db.execute("DELETE FROM endpoint_stats WHERE uid_prefix=?", (row["uid_prefix"],))
            db.execute("DELETE FROM endpoint_errors WHERE uid_prefix=?", (row["uid_prefix"],))
            return str(row["uid_prefix"])

    @staticmethod
    def _endpoint(row: sqlite3.Row) -> EndpointRecord:
        return EndpointRecord(
            row["customer_id"],
            row["name"],
            row["type"],
            json.loads(row["config"]),
            row["uid_prefix"],
            row["created"],
            row["updated"],
        )

    # ------------------------------------------------------------------ status

    def drop_endpoint_state(self, uid_prefix: str) -> None:
        """Forget an endpoint's stats and errors (its registry record is gone elsewhere)."""
        with self._tx() as db:
            db.execute("DELETE FROM endpoint_stats WHERE uid_prefix=?", (uid_prefix,))
            db.execute("DELETE FROM endpoint_errors WHERE uid_prefix=?", (uid_prefix,))

    def save_stats(self, uid_prefix: str, stats: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO endpoint_stats(uid_prefix, stats) VALUES (?,?) "
                "ON CONFLICT(uid_prefix) DO UPDATE SET stats=excluded.stats",
                (uid_prefix, json.dumps(stats)),
            )

    def save_stats_many(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Many endpoints' stats in one transaction (one fsync instead of one each)."""
        if not rows:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO endpoint_stats(uid_prefix, stats) VALUES (?,?) "
                "ON CONFLICT(uid_prefix) DO UPDATE SET stats=excluded.stats",
                [(uid, json.dumps(stats)) for uid, stats in rows],
            )

    def saved_stats(self) -> dict[str, str]:
        """Every endpoint's saved stats as stored (JSON text), in one query: read once at
        start so that no first request of an endpoint reads SQLite on the event loop."""
        with self._reading() as db:
            rows = db.execute("SELECT uid_prefix, stats FROM endpoint_stats").fetchall()
        return {row["uid_prefix"]: row["stats"] for row in rows}

    def load_stats(self, uid_prefix: str) -> dict[str, Any]:
        with self._reading() as db:
            row = db.execute(
                "SELECT stats FROM endpoint_stats WHERE uid_prefix=?", (uid_prefix,)
            ).fetchone()
        return json.loads(row["stats"]) if row else {}

    def add_error(
        self, uid_prefix: str, code: str, message: str, fix: str | None, when: float | None = None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO endpoint_errors(uid_prefix, time, code, message, fix) "
                "VALUES (?,?,?,?,?)",
                (uid_prefix, when or time.time(), code, message, fix),
            )
            db.execute(
                "DELETE FROM endpoint_errors WHERE uid_prefix=? AND seq NOT IN (SELECT seq FROM "
                "endpoint_errors WHERE uid_prefix=? ORDER BY seq DESC LIMIT ?)",
                (uid_prefix, uid_prefix, ERRORS_KEPT),
            )

    def errors(self, uid_prefix: str) -> list[dict[str, Any]]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT time, code, message, fix FROM endpoint_errors WHERE uid_prefix=? "
                "ORDER BY seq DESC LIMIT ?",
                (uid_prefix, ERRORS_KEPT),
            ).fetchall()
        return [dict(r) for r in rows]
