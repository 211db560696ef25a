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
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from logferry.errors import LogferryError
from logferry.service.registry import ChangeKind, RegistryListener
from logferry.service.store import (
    CUSTOMER_LIMITS,
    STATIC_TOKEN_PREFIX,
    TOKEN_PREFIX,
    ConfigToken,
    CustomerRecord,
    EndpointRecord,
    ExternalIdTaken,
    Store,
)

logger = logging.getLogger("logferry.registry")

T = TypeVar("T")
CALL_TIMEOUT = 10.0
"""A registry write waits this long for NATS (a leader election takes 5–7 s)."""
BUCKETS = ("customers", "xids", "tokens", "endpoints")
START_RETRY_SECONDS = 30.0
"""How long start-up retries making the buckets while a fresh cluster elects its leaders."""


class RegistryUnavailable(LogferryError):
    """NATS did not answer a registry read or write in time."""


def _enc(text: str) -> str:
    """A KV key for any string (KV keys allow only [-/_=.a-zA-Z0-9])."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _dec(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _endpoint_key(customer_id: str, name: str) -> str:
    return f"{_enc(customer_id)}.{_enc(name)}"


class KvRegistry:
    """`service.registry.StateStore` over NATS KV (registry) + this node's SQLite (stats)."""

    def __init__(
        self,
        servers: list[str],
        *,
        prefix: str,
        replicas: int,
        local: Store,
        connect_timeout: float = 5.0,
        name: str = "logferry-registry",
    ) -> None:
        self.servers = servers
        self.prefix = prefix
        self.replicas = replicas
        self.local = local
        self.connect_timeout = connect_timeout
        self.name = name
        self._customers: dict[str, tuple[CustomerRecord, int]] = {}
        self._xids: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self._endpoints: dict[tuple[str, str], tuple[EndpointRecord, int]] = {}
        self._revisions: dict[tuple[str, str], int] = {}
        self._mirror_lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, RegistryListener]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="registry", daemon=True)
        self._nc: Any = None
        self._kv: dict[str, Any] = {}
        self._watchers: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        """Connect, make the buckets, load the mirror (blocking; raises RegistryUnavailable)."""
        self._thread.start()
        try:
            self._call(
                self._start(), timeout=self.connect_timeout + START_RETRY_SECONDS + CALL_TIMEOUT
            )
        except BaseException:
            self.close()
            raise

    async def _start(self) -> None:
        import nats
        import nats.errors
        from nats.js.errors import BucketNotFoundError

        self._nc = await self._connect(nats)
        js = self._nc.jetstream(timeout=CALL_TIMEOUT / 2)
        deadline = time.monotonic() + START_RETRY_SECONDS
        for short in BUCKETS:
            bucket = f"{self.prefix}_reg_{short}"
            while True:
                # A fresh cluster elects its leaders, and other nodes create the same buckets
                # at the same time: retry until the deadline, as the spool backend does.
                try:
                    try:
                        kv = await js.key_value(bucket)
                    except BucketNotFoundError:
                        kv = await js.create_key_value(
                            bucket=bucket, history=1, replicas=self.replicas
                        )
                    break
                except (TimeoutError, nats.errors.Error) as exc:
                    if time.monotonic() > deadline:
                        raise RegistryUnavailable(
                            f"cannot create or open the registry bucket {bucket}: {exc!r}",
                            fix="check that the NATS servers form a cluster with JetStream on "
                            "(spool.replicas needs that many servers)",
                        ) from exc
                    await asyncio.sleep(0.5)
            self._kv[short] = kv
        loaded = []
        for short in BUCKETS:
            ready: asyncio.Future[None] = self._loop.create_future()
            watcher = await self._kv[short].watchall()
            self._watchers.append(watcher)
            self._tasks.append(self._loop.create_task(self._watch(short, watcher, ready)))
            loaded.append(ready)
        await asyncio.gather(*loaded)

    async def _connect(self, nats: Any) -> Any:
        """The first connection, within connect_timeout (nats-py would retry it forever)."""
        try:
            return await asyncio.wait_for(
                nats.connect(
                    servers=self.servers,
                    name=self.name,
                    connect_timeout=max(1, int(self.connect_timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=self._quiet,
                    disconnected_cb=self._quiet_cb,
                    reconnected_cb=self._quiet_cb,
                    closed_cb=self._quiet_cb,
                ),
                timeout=self.connect_timeout + 2,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise RegistryUnavailable(
                f"cannot connect to the NATS servers ({', '.join(self.servers)}): {exc!r}",
                fix="check that nats-server runs and spool.nats_url points at it",
            ) from exc

    async def _quiet(self, exc: Exception) -> None:
        logger.debug("registry connection: %s", exc)

    async def _quiet_cb(self) -> None:
        return None

    def close(self) -> None:
        """Stop watching and disconnect; then close this node's SQLite."""
        if self._thread.is_alive():
            try:
                self._call(self._close(), timeout=5)
            except Exception:  # closing anyway
                logger.debug("registry close", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self.local.close()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    @property
    def connected(self) -> bool:
        return bool(self._nc is not None and self._nc.is_connected)

    def listen(self, callback: RegistryListener) -> None:
        """`callback(kind, key, record | None)` on the caller's (running) loop for every change
        the watch sees, this node's own writes included."""
        self._listeners.append((asyncio.get_running_loop(), callback))

    # ------------------------------------------------------------------ plumbing

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, TimeoutError):
            future.cancel()
            raise RegistryUnavailable(
                f"the NATS servers ({', '.join(self.servers)}) did not answer a registry "
                f"call within {timeout:g} s",
                fix="check that nats-server runs and spool.nats_url points at it; retry",
            ) from None
        except LogferryError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("nats"):
                raise RegistryUnavailable(
                    f"registry call failed: {type(exc).__name__}: {exc}",
                    fix="check the NATS servers (spool.nats_url); retry",
                ) from exc
            raise

    async def _watch(self, short: str, watcher: Any, ready: asyncio.Future[None]) -> None:
        from nats.js.kv import StopIterSentinel

        while True:
            entry = await watcher.updates(timeout=None)
            if entry is None:
                if not ready.done():
                    ready.set_result(None)
                continue
            if isinstance(entry, StopIterSentinel):
                return
            deleted = entry.operation in ("DEL", "PURGE")
            value = None if deleted or not entry.value else json.loads(entry.value)
            change = self._apply(short, entry.key, value, entry.revision)
            if change is not None:
                self._notify(*change)
            if entry.delta == 0 and not ready.done():
                ready.set_result(None)

    def _apply(
        self, short: str, key: str, doc: dict[str, Any] | None, revision: int
    ) -> tuple[ChangeKind, Any, Any] | None:
        """Put one KV entry into the mirror (older revisions than the one held are ignored)."""
        with self._mirror_lock:
            if self._revisions.get((short, key), 0) > revision:
                return None
            self._revisions[(short, key)] = revision
            if short == "customers":
                customer_id = _dec(key)
                if doc is None:
                    self._customers.pop(customer_id, None)
                    return ("customer", customer_id, None)
                record = CustomerRecord(**doc)
                self._customers[customer_id] = (record, revision)
                return ("customer", customer_id, record)
            if short == "xids":
                if doc is None:
                    self._xids.pop(_dec(key), None)
                else:
                    self._xids[_dec(key)] = doc
                return None
            if short == "tokens":
                if doc is None:
                    self._tokens.pop(key, None)
                else:
                    self._tokens[key] = doc
                return ("token", key, doc)
            cid, _, name = key.partition(".")
            ekey = (_dec(cid), _dec(name))
            if doc is None:
                self._endpoints.pop(ekey, None)
                return ("endpoint", ekey, None)
            endpoint = EndpointRecord(**doc)
            self._endpoints[ekey] = (endpoint, revision)
            return ("endpoint", ekey, endpoint)

    def _notify(self, kind: ChangeKind, key: Any, record: Any) -> None:
        for loop, callback in self._listeners:
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback, kind, key, record)

    async def _get(self, short: str, key: str) -> tuple[dict[str, Any] | None, int]:
        """The current value and revision (revision of the tombstone for a deleted key)."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self._kv[short].get(key)
        except (KeyNotFoundError, KeyDeletedError) as exc:
            deleted = getattr(exc, "entry", None)
            return None, deleted.revision if deleted is not None else 0
        return json.loads(entry.value), entry.revision

    async def _cas(
        self,
        short: str,
        key: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    ) -> tuple[dict[str, Any] | None, int]:
        """Read, change, write with `update(last=revision)`; again on a conflict. `change`
        returns the new document, or None to leave the key as it is."""
        from nats.js.errors import KeyWrongLastSequenceError

        for _ in range(50):
            doc, revision = await self._get(short, key)
            new = change(doc)
            if new is None:
                return doc, revision
            try:
                written = await self._kv[short].update(key, json.dumps(new).encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            self._apply(short, key, new, written)
            return new, written
        raise RegistryUnavailable(f"registry key {short}/{key} kept changing; retry")

    async def _scan(self, short: str) -> list[tuple[str, dict[str, Any]]]:
        """Every live key of a bucket with its value, read from KV now."""
        watcher = await self._kv[short].watchall(ignore_deletes=True)
        found = []
        try:
            while True:
                entry = await watcher.updates(timeout=CALL_TIMEOUT / 2)
                if entry is None:
                    break
                if entry.value:
                    found.append((entry.key, json.loads(entry.value)))
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()
        return found

    async def _delete(self, short: str, key: str) -> None:
        await self._kv[short].delete(key)
        _, tombstone = await self._get(short, key)  # the delete's own revision
        change = self._apply(short, key, None, tombstone)
        if change is not None:
            self._notify(*change)

    # ------------------------------------------------------------------ customers

    def put_customer(
        self, customer_id: str, external_id: str, limits: dict[str, Any] | None = None
    ) -> tuple[CustomerRecord, bool]:
        return self._call(self._put_customer(customer_id, external_id, limits or {}))

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
            "secret_hash": _hash(secret),
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
        for customer_id, tokens in wanted.items():
            for token in tokens:
                token_id = STATIC_TOKEN_PREFIX + _hash(token)[:12]
                keep.add(token_id)

                def live(
                    old: dict[str, Any] | None, cid: str = customer_id, secret: str = token
                ) -> dict[str, Any] | None:
                    if old is None:
                        return {
                            "customer_id": cid,
                            "secret_hash": _hash(secret),
                            "created": now,
                            "revoked": None,
                        }
                    if old["customer_id"] != cid or old["revoked"] is None:
                        return None
                    return {**old, "revoked": None}

                await self._cas("tokens", token_id, live)
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
            token_id, secret = STATIC_TOKEN_PREFIX + _hash(token)[:12], token
        with self._mirror_lock:
            found = self._tokens.get(token_id)
        if found is None or found["revoked"] is not None:
            return None
        if not hmac.compare_digest(found["secret_hash"], _hash(secret)):
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

        doc, _ = self._call(self._cas("endpoints", _endpoint_key(customer_id, name), put))
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
