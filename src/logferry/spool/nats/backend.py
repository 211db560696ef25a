"""`NatsBackend`: one per process; the NATS connection, the streams and KV buckets, ownership.

Why a thread of its own: nats-py is asyncio, and its callers are several loops (the service's,
each syslog listener's) and the delivery threads. One loop on one thread holds the connection
(reconnecting forever with backoff); callers hand coroutines over with `run` and wait on the
future (`append` awaits it with `asyncio.wrap_future`, blocking calls `.result()`).

Start-up is explicit and fails clearly: no server reachable, a server whose max_payload is too
small, or streams that cannot be created raise `NatsUnavailable` naming the fix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from logferry.spool.nats.errors import NatsUnavailable
from logferry.spool.nats.ownership import Ownership
from logferry.spool.nats.settings import HEADER_HEADROOM, NatsSpoolSettings
from logferry.spool.nats.wakeup import ParkedWatch

if TYPE_CHECKING:
    from logferry.spool.nats.journal import EndpointJournal
    from logferry.spool.nats.provider import NatsSpoolProvider

log = logging.getLogger(__name__)
T = TypeVar("T")

STREAM_EXISTS_DIFFERENT = 10058
START_RETRY_SECONDS = 30.0
"""How long `start` keeps retrying stream creation while a fresh cluster elects its leaders."""
QUORUM_FAILURES = 2
"""JetStream probes in a row without an answer before this node reports not ready (one miss
is a leader election)."""


class NatsBackend:
    """One per process: the connection, the streams and KV buckets, ownership."""

    def __init__(
        self,
        settings: NatsSpoolSettings,
        *,
        node_id: str,
        deliver: bool,
        scratch_dir: Path,
    ) -> None:
        if not node_id or any(c in node_id for c in " .*>:"):
            raise ValueError(f"node_id {node_id!r} must be non-empty, without spaces . * > :")
        self.settings = settings
        self.node_id = node_id
        self.deliver = deliver
        self.scratch_dir = Path(scratch_dir)
        self.boot = secrets.token_hex(4)
        """Part of every request id: a restarted node with the same id never reuses one."""
        self._requests = 0
        self._req_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"nats-backend-{node_id}", daemon=True
        )
        self._thread.start()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kvs: dict[str, KeyValue] = {}
        self._closed = False
        self._quorum = True
        """False while JetStream does not answer (no meta leader: a majority of servers gone)."""
        self.service_loop: asyncio.AbstractEventLoop | None = None
        self.ownership = Ownership(self)
        self.parked_watch = ParkedWatch(self)
        from logferry.spool.nats.provider import NatsSpoolProvider

        self._provider = NatsSpoolProvider(self)

    # -- plumbing ----------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the backend's loop, from any thread; the caller waits on the future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Blocking `run` for delivery threads (never call it on the backend's own loop);
        no answer within `timeout` is NatsUnavailable (a SpoolError, as callers expect)."""
        future = self.run(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NatsUnavailable(f"NATS did not answer within {timeout}s") from None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise NatsUnavailable("the NATS backend is not started")
        return self._js

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise NatsUnavailable("the NATS backend is not started")
        return self._nc

    @property
    def connected(self) -> bool:
        """True while the connection is up and JetStream answers (/readyz; ingest refuses with
        503 at once otherwise): an open socket to the one server left of three is not enough."""
        nc = self._nc
        return nc is not None and nc.is_connected and not self._closed and self._quorum

    def next_request_id(self) -> str:
        with self._req_lock:
            self._requests += 1
            return f"{self.node_id}:{self.boot}-{self._requests}"

    @property
    def provider(self) -> NatsSpoolProvider:
        return self._provider

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, ensure the streams and KV buckets, start ownership (deliver nodes)."""
        self.service_loop = asyncio.get_running_loop()
        await asyncio.wrap_future(self.run(self._start()))

    async def _start(self) -> None:
        s = self.settings
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=s.urls,
                    connect_timeout=s.connect_timeout_seconds,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    name=f"logferry-{self.node_id}",
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                ),
                timeout=s.connect_timeout_seconds * max(1, len(s.urls)) + 1,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise NatsUnavailable(
                f"cannot connect to NATS at {s.nats_url}: {str(exc) or type(exc).__name__}",
                fix="Start nats-server with JetStream (docs/architecture.md, 'The NATS "
                "backend') or correct spool.nats_url.",
            ) from exc
        need = s.max_message_bytes + HEADER_HEADROOM
        if self._nc.max_payload < need:
            await self._nc.close()
            raise NatsUnavailable(
                f"the NATS server's max_payload is {self._nc.max_payload} bytes; spool "
                f"messages need {need} (max_message_bytes {s.max_message_bytes} + headers)",
                fix="Raise max_payload in nats-server.conf or lower spool.max_message_bytes.",
            )
        self._js = self._nc.jetstream(timeout=s.connect_timeout_seconds)
        deadline = time.monotonic() + START_RETRY_SECONDS
        for shard in range(s.shards):
            await self._retry(functools.partial(self._ensure_stream, shard), deadline)
        await self._retry(lambda: self.kv(s.endpoints_bucket), deadline)
        await self._retry(lambda: self.kv(s.nodes_bucket, ttl=s.lease_seconds), deadline)
        await self.ownership.start()
        self._loop.create_task(self._watch_quorum())
        if self.deliver:
            self._loop.create_task(self.parked_watch.run())

    async def _watch_quorum(self) -> None:
        """Ask JetStream for the account's info every heartbeat: only a meta leader answers,
        so QUORUM_FAILURES misses mean no majority (issue 30: /readyz stayed true and every
        request waited append_timeout_seconds for its 503 with 2 of 3 servers gone)."""
        misses = 0
        while not self._closed:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            nc = self._nc
            if nc is None or not nc.is_connected:
                continue
            try:
                await self.js.account_info()
            except (TimeoutError, nats.errors.Error) as exc:
                misses += 1
                if misses >= QUORUM_FAILURES and self._quorum:
                    self._quorum = False
                    log.warning(
                        "nats %s: JetStream does not answer, not ready: %r", self.node_id, exc
                    )
                continue
            misses = 0
            if not self._quorum:
                self._quorum = True
                log.warning("nats %s: JetStream answers again, ready", self.node_id)

    async def _retry(self, make: Callable[[], Coroutine[Any, Any, Any]], deadline: float) -> None:
        while True:
            try:
                await make()
                return
            except (TimeoutError, nats.errors.Error) as exc:
                if time.monotonic() > deadline:
                    raise NatsUnavailable(
                        f"JetStream at {self.settings.nats_url} did not create the spool's "
                        f"streams/buckets: {exc!r}",
                        fix="Check that every NATS node runs with JetStream enabled and that "
                        "a majority of spool.replicas nodes are up.",
                    ) from exc
                await asyncio.sleep(0.5)

    def stream_config(self, shard: int) -> StreamConfig:
        s = self.settings
        return StreamConfig(
            name=s.stream_name(shard),
            subjects=[f"{s.subject_root}.{shard:02d}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            discard=DiscardPolicy.NEW,
            max_bytes=s.shard_max_bytes,
            allow_direct=True,
            allow_atomic=True,  # a multi-part append is one atomic batch (publish.py)
            duplicate_window=s.duplicate_window_seconds,
            max_msg_size=s.max_message_bytes + HEADER_HEADROOM,
        )

    async def _ensure_stream(self, shard: int) -> None:
        config = self.stream_config(shard)
        try:
            await self.js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != STREAM_EXISTS_DIFFERENT:
                raise
            await self.js.update_stream(config)  # limits or replicas changed in the config

    async def kv(self, bucket: str, *, history: int = 1, ttl: float | None = None) -> KeyValue:
        """The KV bucket `bucket` (created with the spool's replicas on first use)."""
        found = self._kvs.get(bucket)
        if found is not None:
            return found
        config = KeyValueConfig(
            bucket=bucket,
            history=history,
            ttl=ttl,
            replicas=self.settings.replicas,
            storage=StorageType.FILE,
        )
        try:
            kv = await self.js.create_key_value(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != STREAM_EXISTS_DIFFERENT:
                raise
            kv = await self.js.key_value(bucket)
            if ttl is not None:
                await self._retune_ttl(bucket, ttl)
        self._kvs[bucket] = kv
        return kv

    async def _retune_ttl(self, bucket: str, ttl: float) -> None:
        """A bucket made with another TTL (lease_seconds changed): heartbeats that outlive
        the lease would only delay takeovers, but ones that expire before it would let a
        node take over from an owner that still holds its lease, so the TTL follows."""
        info = await self.js.stream_info(f"KV_{bucket}")
        if info.config.max_age is not None and abs(info.config.max_age - ttl) < 1e-3:
            return
        config = info.config
        config.max_age = ttl
        if config.duplicate_window > ttl:
            config.duplicate_window = ttl
        await self.js.update_stream(config)
        log.warning("KV bucket %s: TTL set to %gs (spool.lease_seconds)", bucket, ttl)

    async def close(self) -> None:
        """Release owned endpoints (so others take over at once), close spools and connection."""
        if self._closed:
            return
        try:
            await asyncio.wrap_future(self.run(self._close()))
        finally:
            await asyncio.wrap_future(self.run(_cancel_others()))
            self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)

    async def _close(self) -> None:
        await self.ownership.stop(release=True)
        await self._provider.close_async()
        self._closed = True
        if self._nc is not None and not self._nc.is_closed:
            # Nothing is left to flush (every append awaited its ack); close, not drain,
            # whose per-subscription tasks would outlive the loop. With the server gone the
            # client writes what it buffered (heartbeats) to the lost connection and raises
            # ConnectionResetError: nothing acknowledged is in that buffer.
            with contextlib.suppress(TimeoutError, OSError, nats.errors.Error):
                await asyncio.wait_for(self._nc.close(), 5)

    async def _on_error(self, exc: Exception) -> None:
        if self._closed:
            return
        log.warning("nats %s: %s", self.node_id, exc)

    async def _on_disconnect(self) -> None:
        if self._closed:
            return
        log.warning("nats %s: disconnected, reconnecting", self.node_id)

    async def _on_reconnect(self) -> None:
        log.warning("nats %s: reconnected", self.node_id)

    # -- ownership ---------------------------------------------------------------------------

    def owned(self) -> frozenset[str]:
        """Endpoint keys this node owns now (empty once its lease may have expired)."""
        return self.ownership.owned()

    def holds(self, key: str) -> bool:
        """True while this node owns `key` and its lease cannot have expired by its own clock
        (check it before every write to the customer's account)."""
        return self.ownership.holds(key)

    async def rebalance(self) -> None:
        """One ownership round now (from the service loop): start-up takes its endpoints
        without waiting for the first heartbeat."""
        await asyncio.wrap_future(self.run(self.ownership.balance()))

    def on_ownership(self, callback: Callable[[str, bool], None]) -> None:
        """callback(key, owned) on the service loop when this node gains or loses a key."""
        self.ownership.callbacks.append(callback)

    def set_endpoints(self, keys: Iterable[str]) -> None:
        """The endpoint keys that exist (from the registry); ownership is decided over these."""
        self.ownership.set_endpoints(keys)

    def journal(self, key: str) -> EndpointJournal:
        from logferry.spool.nats.journal import EndpointJournal

        return EndpointJournal(self, key)

    def node_stats(self) -> dict[str, float]:
        """Owned endpoints, takeovers, KV conflicts, the cursor lag of owned endpoints."""
        stats = self.ownership.stats()
        lag_bytes = lag_lines = lag_seconds = 0.0
        parked = 0
        now = time.time()
        for key in self.owned():
            spool = self._provider.peek(key)
            if spool is None:
                continue
            parked += spool.parked
            lag_bytes += spool.pending_bytes
            lag_lines += spool.pending_lines
            first = spool.first_pending_accepted_at()
            if first is not None:
                lag_seconds = max(lag_seconds, now - first)
        stats.update(
            cursor_lag_bytes=lag_bytes,
            cursor_lag_lines=lag_lines,
            cursor_lag_seconds_max=lag_seconds,
            connected=1.0 if self.connected else 0.0,
            parked_endpoints=float(parked),
            parked_wakeups_total=float(self.parked_watch.wakeups),
        )
        return stats


async def _cancel_others() -> None:
    """Tasks nats-py leaves behind (an ordered consumer's checks) end with the loop."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
