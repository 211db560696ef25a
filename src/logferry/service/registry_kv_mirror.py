"""The NATS side of the KV registry (`registry_kv.KvRegistry`): connection, buckets, mirror, CAS.

See `registry_kv` for why the registry lives in KV and how nodes see each other's changes.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from logferry.errors import LogferryError
from logferry.service.records import CustomerRecord, EndpointRecord
from logferry.service.registry import ChangeKind, RegistryListener
from logferry.service.store import Store

logger = logging.getLogger("logferry.registry")

T = TypeVar("T")
CALL_TIMEOUT = 10.0
"""A registry write waits this long for NATS (a leader election takes 5–7 s)."""
BUCKETS = ("customers", "xids", "tokens", "endpoints")
START_RETRY_SECONDS = 30.0
"""How long start-up retries making the buckets while a fresh cluster elects its leaders."""


RETRY_AFTER_SECONDS = 5
"""The Retry-After a refused registry call suggests (a reconnect or an election takes 5–7 s)."""


class RegistryUnavailable(LogferryError):
    """NATS did not answer a registry read or write in time, or the node has no connection:
    nothing was written. The API answers 503 + Retry-After (`retry_after` seconds)."""

    def __init__(
        self, message: str, *, fix: str | None = None, retry_after: int = RETRY_AFTER_SECONDS
    ) -> None:
        super().__init__(message, fix=fix)
        self.retry_after = retry_after


def _enc(text: str) -> str:
    """A KV key for any string (KV keys allow only [-/_=.a-zA-Z0-9])."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _dec(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


def _endpoint_key(customer_id: str, name: str) -> str:
    return f"{_enc(customer_id)}.{_enc(name)}"


class KvMirror:
    """The registry's NATS side: its own connection, thread and loop, the buckets, the in-memory
    mirror kept current by watches, and the read/compare-and-set/delete primitives `KvRegistry`
    builds every registry operation from."""

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
                self._start(),
                timeout=self.connect_timeout + START_RETRY_SECONDS + CALL_TIMEOUT,
                connected=False,
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
                self._call(self._close(), timeout=5, connected=False)
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

    def _call(
        self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT, *, connected: bool = True
    ) -> T:
        """Run `coro` on the registry's loop and wait. With `connected` (every registry call
        after start-up) a node without a NATS connection refuses at once: nats-py would buffer
        the request until the reconnect or the timeout, and the API caller would wait 10 s
        for an answer that is known now."""
        if connected and not self.connected:
            coro.close()
            raise RegistryUnavailable(
                f"the registry is unavailable: this node has no connection to the NATS "
                f"servers ({', '.join(self.servers)}); nothing was written",
                fix=f"retry after {RETRY_AFTER_SECONDS} s; if it persists, check that "
                "nats-server runs and spool.nats_url points at it",
            )
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, TimeoutError):
            future.cancel()
            raise RegistryUnavailable(
                f"the NATS servers ({', '.join(self.servers)}) did not answer a registry "
                f"call within {timeout:g} s; nothing was written",
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
