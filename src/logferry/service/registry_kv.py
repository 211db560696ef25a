"""The registry in NATS KV (`[spool] backend = "nats"`): every node serves the same customers.

Why KV: ingest and delivery nodes must agree on each endpoint's `uid_prefix` (it names the
endpoint's stream subject and its S3 keys) and on who may send (tokens); one SQLite file per
node cannot. Four buckets (`<prefix>_reg_customers`, `_reg_xids`, `_reg_tokens`,
`_reg_endpoints`, replicated like the streams). Every write is a compare-and-set
(`create` / `update(last=revision)`), so two nodes creating the same endpoint end with one
`uid_prefix`, and an external ID is bound once, ever (tombstones kept in `_reg_xids`).

Every node watches the buckets and keeps a mirror in memory: reads never wait on the network
(a token lookup runs on every ingest request), and a change made on any node (new endpoint,
changed limits, deleted endpoint, revoked token) reaches the others in milliseconds through
`listen` callbacks on the service loop. A revoked token stops working on a node as soon as its
watch delivers the revocation.

The registry runs its own connection on its own thread and loop: its blocking methods are
called like SQLite's (from threads, and a few at start-up on the service loop), and a private
loop can never deadlock with the service's. Endpoint stats and errors stay in this node's
SQLite (`local`): they describe what this node did.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from logferry.service.records import (
    CUSTOMER_LIMITS,
    STATIC_TOKEN_PREFIX,
    TOKEN_PREFIX,
    ConfigToken,
    CustomerRecord,
    EndpointRecord,
    ExternalIdTaken,
    hash_secret,
)
from logferry.service.registry_kv_mirror import (
    BUCKETS,
    CALL_TIMEOUT,
    START_RETRY_SECONDS,
    KvMirror,
    RegistryUnavailable,
    _enc,
    _endpoint_key,
)

__all__ = ["BUCKETS", "CALL_TIMEOUT", "START_RETRY_SECONDS", "KvRegistry", "RegistryUnavailable"]

logger = logging.getLogger("logferry.registry")
T = TypeVar("T")


class KvRegistry(KvMirror):
    """`service.registry.StateStore` over NATS KV (registry) + this node's SQLite (stats)."""

    # ------------------------------------------------------------------ customers

    def put_customer(
        self, customer_id: str, external_id: str, limits: dict[str, Any] | None = None
    ) -> tuple[CustomerRecord, bool]:
        return self.put_customers([(customer_id, external_id, limits)])[0]

    def put_customers(
        self, items: list[tuple[str, str, dict[str, Any] | None]]
    ) -> list[tuple[CustomerRecord, bool]]:
        """`put_customer` for many: unchanged ones answered from the mirror (every node applies
        the whole config at start, and one read per customer made a restart with thousands
        slow), the others written PUTS_AT_ONCE at a time (see `put_endpoints`)."""
        results: list[tuple[CustomerRecord, bool] | None] = []
        todo: list[tuple[str, str, dict[str, Any]]] = []
        for customer_id, external_id, given in items:
            limits = {k: v for k, v in (given or {}).items() if k in CUSTOMER_LIMITS}
            with self._mirror_lock:
                found = self._customers.get(customer_id)
            if found is not None and all(getattr(found[0], k) == v for k, v in limits.items()):
                results.append((found[0], False))
            else:
                results.append(None)
                todo.append((customer_id, external_id, limits))
        if todo:
            written = iter(
                self._call(
                    _at_most(PUTS_AT_ONCE, [self._put_customer(*item) for item in todo]),
                    timeout=CALL_TIMEOUT + len(todo) * 0.05,
                )
            )
            results = [r if r is not None else next(written) for r in results]
        return [r for r in results if r is not None]

    async def _put_customer(
        self, customer_id: str, external_id: str, limits: dict[str, Any]
    ) -> tuple[CustomerRecord, bool]:
        limits = {k: v for k, v in limits.items() if k in CUSTOMER_LIMITS}
        ckey = _enc(customer_id)
        doc, _ = await self._get("customers", ckey)
        if doc is None:
            # Bind the external ID first (once, ever): a tombstone keeps a deleted one bound.
            def bind(bound: dict[str, Any] | None) -> dict[str, Any] | None:
                if bound is None:
                    return {"customer_id": customer_id, "created": time.time(), "deleted": None}
                if bound["customer_id"] == customer_id and bound["deleted"] is None:
                    return None  # a concurrent create of the same customer bound it
                raise ExternalIdTaken(
                    external_id, bound["customer_id"], bound["deleted"] is not None
                )

            await self._cas("xids", _enc(external_id), bind)
        created = [False]

        def put(old: dict[str, Any] | None) -> dict[str, Any] | None:
            created[0] = old is None
            if old is None:
                old = {"id": customer_id, "external_id": external_id, "created": time.time()}
            elif {**old, **limits} == old:
                return None  # unchanged (every node applies the same config at start)
            return {**old, **limits}

        new, _ = await self._cas("customers", ckey, put)
        assert new is not None
        return CustomerRecord(**new), created[0]

    def external_id_bound(self, external_id: str) -> bool:
        with self._mirror_lock:
            return external_id in self._xids

    def get_customer(self, customer_id: str) -> CustomerRecord | None:
        """Memory only (safe on the event loop)."""
        with self._mirror_lock:
            found = self._customers.get(customer_id)
        return found[0] if found else None

    def list_customers(self) -> list[CustomerRecord]:
        with self._mirror_lock:
            return sorted((r for r, _ in self._customers.values()), key=lambda r: r.id)

    def delete_customer(self, customer_id: str) -> list[str]:
        return self._call(self._delete_customer(customer_id))

    async def _delete_customer(self, customer_id: str) -> list[str]:
        # From KV, not the mirror: another node's latest writes may not have reached it yet.
        doc, _ = await self._get("customers", _enc(customer_id))
        record = CustomerRecord(**doc) if doc else None
        endpoints = [
            (e["customer_id"], e["name"])
            for _, e in await self._scan("endpoints")
            if e["customer_id"] == customer_id
        ]
        tokens = [k for k, t in await self._scan("tokens") if t["customer_id"] == customer_id]
        uids = []
        for key in endpoints:
            uid = await self._delete_endpoint(*key)
            if uid is not None:
                uids.append(uid)
        for token_id in tokens:
            await self._delete("tokens", token_id)
        if record is not None:

            def tombstone(bound: dict[str, Any] | None) -> dict[str, Any] | None:
                if bound is None or bound["deleted"] is not None:
                    return None
                return {**bound, "deleted": time.time()}

            await self._cas("xids", _enc(record.external_id), tombstone)
            await self._delete("customers", _enc(customer_id))
        for uid in uids:
            self.local.drop_endpoint_state(uid)
        return uids

    # ------------------------------------------------------------------ tokens

    def issue_token(self, customer_id: str) -> tuple[str, str]:
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        doc = {
            "customer_id": customer_id,
            "secret_hash": hash_secret(secret),
            "created": time.time(),
            "revoked": None,
        }

        async def create() -> None:
            revision = await self._kv["tokens"].create(token_id, json.dumps(doc).encode())
            self._apply("tokens", token_id, doc, revision)

        self._call(create())
        return token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def put_static_token(self, customer_id: str, token: str) -> None:
        self.reconcile_static_tokens({customer_id: [token]}, only=[customer_id])

    def reconcile_static_tokens(
        self, wanted: dict[str, list[str]], *, only: list[str] | None = None
    ) -> int:
        return self._call(self._reconcile(wanted, only))

    async def _reconcile(self, wanted: dict[str, list[str]], only: list[str] | None) -> int:
        now = time.time()
        keep: set[str] = set()
        writes: list[Coroutine[Any, Any, Any]] = []
        for customer_id, tokens in wanted.items():
            for token in tokens:
                token_id = STATIC_TOKEN_PREFIX + hash_secret(token)[:12]
                keep.add(token_id)
                with self._mirror_lock:
                    found = self._tokens.get(token_id)
                if found and found["customer_id"] == customer_id and found["revoked"] is None:
                    continue  # live in the mirror: no round trip (every node, every start)

                def live(
                    old: dict[str, Any] | None, cid: str = customer_id, secret: str = token
                ) -> dict[str, Any] | None:
                    if old is None:
                        return {
                            "customer_id": cid,
                            "secret_hash": hash_secret(secret),
                            "created": now,
                            "revoked": None,
                        }
                    if old["customer_id"] != cid or old["revoked"] is None:
                        return None
                    return {**old, "revoked": None}

                writes.append(self._cas("tokens", token_id, live))
        await _at_most(PUTS_AT_ONCE, writes)
        with self._mirror_lock:
            candidates = [
                (k, t["customer_id"])
                for k, t in self._tokens.items()
                if k.startswith(STATIC_TOKEN_PREFIX) and t["revoked"] is None
            ]
        revoked = 0
        for token_id, customer_id in candidates:
            if token_id in keep or (only is not None and customer_id not in only):
                continue
            await self._cas("tokens", token_id, _revoke(now))
            revoked += 1
        return revoked

    def cached_customer_for_token(self, token: str) -> str | None:
        """Memory only: the mirror is the registry, so this is the full answer."""
        return self.customer_for_token(token)

    def customer_for_token(self, token: str) -> str | None:
        parts = token.split("_", 2)
        if len(parts) == 3 and parts[0] == TOKEN_PREFIX:
            token_id, secret = parts[1], parts[2]
        else:
            token_id, secret = STATIC_TOKEN_PREFIX + hash_secret(token)[:12], token
        with self._mirror_lock:
            found = self._tokens.get(token_id)
        if found is None or found["revoked"] is not None:
            return None
        if not hmac.compare_digest(found["secret_hash"], hash_secret(secret)):
            return None
        return str(found["customer_id"])

    def list_tokens(self, customer_id: str) -> list[dict[str, Any]]:
        with self._mirror_lock:
            rows = [
                {"id": k, "created": t["created"], "revoked": t["revoked"]}
                for k, t in self._tokens.items()
                if t["customer_id"] == customer_id
            ]
        rows.sort(key=lambda r: r["created"])
        return [
            {**r, "source": "config" if r["id"].startswith(STATIC_TOKEN_PREFIX) else "api"}
            for r in rows
        ]

    def revoke_token(self, customer_id: str, token_id: str) -> bool:
        with self._mirror_lock:
            found = self._tokens.get(token_id)
        live = found is not None and found["customer_id"] == customer_id and not found["revoked"]
        if token_id.startswith(STATIC_TOKEN_PREFIX):
            if live:
                raise ConfigToken(
                    f"token {token_id} comes from the config",
                    fix="remove or rotate it in [[customers]] and reload",
                )
            return False
        if not live:
            return False
        doc, _ = self._call(self._cas("tokens", token_id, _revoke(time.time(), customer_id)))
        return bool(doc and doc["revoked"])

    # ------------------------------------------------------------------ endpoints

    def put_endpoint(
        self, customer_id: str, name: str, type_: str, config: dict[str, Any]
    ) -> tuple[EndpointRecord, bool]:
        """Create or replace; the uid prefix survives updates of the same type (CAS, so two
        nodes creating one endpoint at once agree on one uid)."""
        return self.put_endpoints([(customer_id, name, type_, config)])[0]

    def put_endpoints(
        self, items: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[tuple[EndpointRecord, bool]]:
        """`put_endpoint` for many: those unchanged in the mirror answered from memory (every
        node applies the whole config at start), the others written PUTS_AT_ONCE at a time
        (one after another, a first start with 2,000 endpoints waited 4,000 round trips)."""
        results: list[tuple[EndpointRecord, bool] | None] = []
        todo: list[int] = []
        for i, (customer_id, name, type_, config) in enumerate(items):
            with self._mirror_lock:
                found = self._endpoints.get((customer_id, name))
            if found is not None and found[0].type == type_ and found[0].config == config:
                results.append((found[0], False))  # unchanged: no round trip
            else:
                results.append(None)
                todo.append(i)
        if todo:
            written = self._call(
                _at_most(PUTS_AT_ONCE, [self._put_endpoint(*items[i]) for i in todo]),
                timeout=CALL_TIMEOUT + len(todo) * 0.05,
            )
            for i, result in zip(todo, written, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def _put_endpoint(
        self, customer_id: str, name: str, type_: str, config: dict[str, Any]
    ) -> tuple[EndpointRecord, bool]:
        created = [False]
        now = time.time()

        def put(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is not None and old["type"] == type_:
                created[0] = False
                if old["config"] == config:
                    return None  # unchanged: no write, no reconfiguration on every node
                return {**old, "config": config, "updated": now}
            created[0] = True
            return {
                "customer_id": customer_id,
                "name": name,
                "type": type_,
                "config": config,
                "uid_prefix": secrets.token_hex(6),
                "created": now,
                "updated": now,
            }

        doc, _ = await self._cas("endpoints", _endpoint_key(customer_id, name), put)
        assert doc is not None
        return EndpointRecord(**doc), created[0]

    def get_endpoint(self, customer_id: str, name: str) -> EndpointRecord | None:
        with self._mirror_lock:
            found = self._endpoints.get((customer_id, name))
        return found[0] if found else None

    def list_endpoints(self, customer_id: str | None = None) -> list[EndpointRecord]:
        with self._mirror_lock:
            records = [r for r, _ in self._endpoints.values()]
        if customer_id is None:
            return records
        return sorted((r for r in records if r.customer_id == customer_id), key=lambda r: r.name)

    def delete_endpoint(self, customer_id: str, name: str) -> str | None:
        return self._call(self._delete_endpoint(customer_id, name))

    async def _delete_endpoint(self, customer_id: str, name: str) -> str | None:
        record = self.get_endpoint(customer_id, name)
        if record is None:
            doc, _ = await self._get("endpoints", _endpoint_key(customer_id, name))
            if doc is None:
                return None
            record = EndpointRecord(**doc)
        await self._delete("endpoints", _endpoint_key(customer_id, name))
        self.local.drop_endpoint_state(record.uid_prefix)
        return record.uid_prefix

    # ------------------------------------------------------------------ node-local (SQLite)

    def save_stats(self, uid_prefix: str, stats: dict[str, Any]) -> None:
        self.local.save_stats(uid_prefix, stats)

    def save_stats_many(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        self.local.save_stats_many(rows)

    def load_stats(self, uid_prefix: str) -> dict[str, Any]:
        return self.local.load_stats(uid_prefix)

    def saved_stats(self) -> dict[str, str]:
        return self.local.saved_stats()

    def add_error(
        self, uid_prefix: str, code: str, message: str, fix: str | None, when: float | None = None
    ) -> None:
        self.local.add_error(uid_prefix, code, message, fix, when)

    def errors(self, uid_prefix: str) -> list[dict[str, Any]]:
        return self.local.errors(uid_prefix)


def _revoke(
    when: float, customer_id: str | None = None
) -> Callable[[dict[str, Any] | None], dict[str, Any] | None]:
    def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
        if old is None or old["revoked"] is not None:
            return None
        if customer_id is not None and old["customer_id"] != customer_id:
            return None
        return {**old, "revoked": when}

    return change


PUTS_AT_ONCE = 64
"""Registry writes one batch keeps in flight (each a KV read and a compare-and-set)."""


async def _at_most(limit: int, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `coros` with at most `limit` in flight; results in order, the first error raised
    once every one has finished (none is left running half-done)."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await coro

    outcomes = await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return cast("list[T]", outcomes)
