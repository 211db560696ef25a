"""Scale-out wiring of the running service (`[spool] backend = "nats"`, `serve --role`); part of
`service.runtime.Service`. docs/scale-out.md tells the whole story; this module is the glue:

- **roles**: `all` ingests and delivers, `ingest` accepts and publishes and never runs a worker,
  `deliver` accepts no ingest (HTTP answers 503 naming the role; no syslog listeners) and runs
  workers only for the endpoints it owns;
- **ownership**: the backend decides (rendezvous hashing over live nodes, a KV compare-and-set
  per endpoint); a gained endpoint with lines starts its worker (an idle one only once lines
  come: a takeover may bring thousands), a lost one halts it at once (no flush: the new owner
  completes or aborts what the KV journal names);
- **registry watch**: a customer, endpoint or token changed on any node is applied here
  without a restart (`service.registry_kv`), and the backend learns the endpoint set.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logferry.service.config import ServeRole, ServiceConfig
from logferry.service.endpoints import stored_model
from logferry.service.logs import log
from logferry.sinks.registry import factory as sink_factory
from logferry.spool.errors import SpoolError

if TYPE_CHECKING:
    from logferry.service.endpoint_table import EndpointKey, EndpointTable
    from logferry.service.endpoints import EndpointModel
    from logferry.service.records import CustomerRecord, EndpointRecord
    from logferry.service.registry import StateStore
    from logferry.service.worker import EndpointWorker
    from logferry.spool.nats.backend import NatsBackend

logger = logging.getLogger("logferry.service")

KICK_SECONDS = 1.0
"""How often a delivery node looks for owned endpoints with lines and no running worker."""
OPENS_AT_ONCE = 64
"""Owned spools opened (their subject's tail read, their index started) at the same time."""


class IngestNotServed(SpoolError):
    """This node runs `--role deliver`: it takes no ingest (503, the sender retries elsewhere)."""


class ClusterNode:
    config: ServiceConfig
    role: ServeRole
    backend: NatsBackend | None
    store: StateStore
    endpoints: EndpointTable
    invalid: dict[EndpointKey, tuple[EndpointRecord, str]]
    state_dir: Path
    workers: dict[EndpointKey, EndpointWorker]
    _uid_customer: dict[str, str]
    _background: set[asyncio.Task[Any]]
    _opening: set[str]
    _opens_in_flight: asyncio.Semaphore | None = None
    _keys_sync_due = False

    if TYPE_CHECKING:  # provided by the class this is part of

        def worker(self, customer_id: str, name: str) -> EndpointWorker: ...

        def _apply_endpoint(self, record: EndpointRecord, model: EndpointModel) -> None: ...

        def _apply_limits(self, record: CustomerRecord) -> None: ...

        def _forget_tenant(self, customer_id: str) -> None: ...

    @property
    def ingests(self) -> bool:
        return self.role in ("all", "ingest")

    @property
    def delivers(self) -> bool:
        return self.role in ("all", "deliver")

    @property
    def connected(self) -> bool:
        """The shared spool is reachable (always on the local backend): /readyz."""
        return self.backend is None or self.backend.connected

    def may_run(self, uid: str) -> bool:
        """WorkerDeps.may_run: deliver this endpoint here, now?"""
        if not self.delivers:
            return False
        return self.backend is None or uid in self.backend.owned()

    def check_ingest(self) -> None:
        """Before an append: refuse at once what this node cannot acknowledge."""
        if not self.ingests:
            raise IngestNotServed(
                "this node runs `logferry serve --role deliver` and takes no ingest",
                fix="send to an ingest node (--role ingest or all)",
            )
        if self.backend is not None and not self.backend.connected:
            from logferry.spool.nats.errors import NatsUnavailable

            raise NatsUnavailable("the NATS servers are unreachable; nothing was acknowledged")

    # ------------------------------------------------------------------ ownership

    def _start_cluster(self) -> None:
        """After the registry is loaded: watch it, tell the backend the endpoints, follow
        ownership."""
        if self.backend is None:
            return
        listen = getattr(self.store, "listen", None)
        if listen is not None:
            listen(self._registry_changed)
        self.backend.on_ownership(self._ownership_changed)
        self._sync_endpoint_keys_now()  # before the first balancing round reads the set
        for uid in self.backend.owned():  # owned before the callback was attached
            self._ownership_changed(uid, True)
        if self.delivers:
            self._kick_task = asyncio.get_running_loop().create_task(
                self._kick_owned(), name="kick-owned"
            )

    async def _claim_owned(self) -> None:
        """Start-up, before serving: take this node's endpoints and index their subjects.

        Why: until then the status of an endpoint read the backlog its last owner published
        (at most one heartbeat old, so 0 after a kill -9 shortly after ingest) and reported
        nothing pending for lines a previous life left; and delivery waited for the first
        heartbeat. `open` follows the subject up to its last message."""
        if self.backend is None or not self.delivers:
            return
        await self.backend.rebalance()
        provider = self.backend.provider

        async def open_one(uid: str) -> None:
            async with self._open_gate():
                try:
                    await provider.open_async(uid)
                except SpoolError as exc:  # following goes on in the background; status lags
                    log(logger, logging.WARNING, "indexing an owned spool", uid=uid, error=str(exc))

        # Many at a time: one at a time, 2,000 endpoints took seconds of round trips.
        await asyncio.gather(
            *(open_one(uid) for uid in sorted(self.backend.owned()) if self._key_of(uid))
        )

    def _open_gate(self) -> asyncio.Semaphore:
        """Bounds the spools being opened at once (each one a few NATS requests)."""
        if self._opens_in_flight is None:
            self._opens_in_flight = asyncio.Semaphore(OPENS_AT_ONCE)
        return self._opens_in_flight

    def _stop_cluster(self) -> None:
        task = getattr(self, "_kick_task", None)
        if task is not None:
            task.cancel()

    async def _kick_owned(self) -> None:
        """Wake the worker of every owned endpoint whose spool holds undelivered lines.

        Why: a worker exits after IDLE_EXIT_SECONDS without data, and on the local backend the
        next ingest wakes it; here the lines arrive through another node, so nothing local
        would. The owner's spool follows its subject, so its counters are current and cheap."""
        assert self.backend is not None
        while True:
            await asyncio.sleep(KICK_SECONDS)
            try:
                for uid in self.backend.owned():
                    key = self._key_of(uid)
                    if key is None:
                        continue
                    worker = self.workers.get(key)
                    if worker is not None and worker.running:
                        continue
                    spool = self.backend.provider.peek(uid)
                    if spool is None:
                        self._open_owned(uid)
                    elif spool.end_offset > spool.committed_offset:
                        self.worker(*key).notify()
                    # (unfinished sink state is looked for once, when the endpoint is taken:
                    # `_ownership_changed` / `_open_owned`; this loop stays one peek each)
            except Exception:  # never let one endpoint stop the loop
                logger.exception("waking owned endpoints failed")

    def _sync_endpoint_keys(self) -> None:
        """Tell the backend which endpoints exist (ownership is decided over them), once per
        loop turn: a config of thousands applied at start, or another node's batch seen by the
        watch, made one pass over every endpoint per endpoint (quadratic) when it ran each time."""
        if self.backend is None or self._keys_sync_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tools): at once
            self._sync_endpoint_keys_now()
            return
        self._keys_sync_due = True
        loop.call_soon(self._sync_endpoint_keys_now)

    def _sync_endpoint_keys_now(self) -> None:
        self._keys_sync_due = False
        if self.backend is None:
            return
        keys = {record.uid_prefix for record, _ in self.endpoints.values()}
        keys |= {record.uid_prefix for record, _ in self.invalid.values()}
        self.backend.set_endpoints(keys)

    def _key_of(self, uid: str) -> EndpointKey | None:
        return self.endpoints.key_of(uid)

    def _ownership_changed(self, uid: str, owned: bool) -> None:
        key = self._key_of(uid)
        # A gain is logged at INFO by the backend ("owns <uid> (epoch N)"); here only at DEBUG:
        # a node taking 2,000 endpoints spent 0.4 s of its start on the loop writing these.
        level = logging.DEBUG if owned else logging.INFO
        if logger.isEnabledFor(level):
            log(logger, level, "ownership", uid=uid, owned=owned, endpoint=key)
        if key is None:
            return
        if owned:
            if self.delivers:
                spool = self.backend.provider.peek(uid) if self.backend is not None else None
                if spool is None:
                    self._open_owned(uid)
                elif spool.end_offset > spool.committed_offset or self._unfinished(uid, key):
                    self.worker(*key).notify()
                # else: `_kick_owned` starts the worker once lines are indexed (within a
                # second); an idle endpoint costs no worker, no AssumeRole, no sink.
            return
        worker = self.workers.pop(key, None)
        if worker is not None:
            self._in_background(worker.hand_over())

    def _open_owned(self, uid: str) -> None:
        """Open (follow) an owned endpoint's spool off the loop; start its worker if it holds
        lines. Until then `_kick_owned` leaves it alone; after, it watches the counters."""
        if uid in self._opening or self.backend is None:
            return
        self._opening.add(uid)
        backend = self.backend

        async def open_it() -> None:
            try:
                async with self._open_gate():
                    spool = await backend.provider.open_async(uid)
            except SpoolError as exc:  # `_kick_owned` tries again (the spool is still None)
                log(logger, logging.WARNING, "opening an owned spool", uid=uid, error=str(exc))
                return
            finally:
                self._opening.discard(uid)
            key = self._key_of(uid)
            if key is None or uid not in backend.owned():
                return
            if spool.end_offset > spool.committed_offset or self._unfinished(uid, key):
                self.worker(*key).notify()

        self._in_background(open_it())

    def _unfinished(self, uid: str, key: EndpointKey) -> bool:
        """The endpoint's record holds sink state a previous owner left to finish (an S3
        upload to complete or abort), read from this node's copy in memory. Why: such an
        endpoint needs its worker even with no line after the cursor; a dead owner's last
        parts may hold lines the spool has already released."""
        entry = self.endpoints.get(key)
        if entry is None or self.backend is None:
            return False
        record = entry[0]
        sinks = sink_factory(record.type)
        if not sinks.durable_state:
            return False
        state_dir = sinks.state_dir(self.state_dir, uid)
        return sinks.has_unfinished_state(state_dir, self.backend.journal(uid))

    def _in_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ registry changes

    def _registry_changed(self, kind: str, key: Any, record: Any) -> None:
        """A change seen by the KV watch (any node's, this one's included)."""
        try:
            if kind == "customer":
                if record is None:
                    self._forget_tenant(key)
                else:
                    self._apply_limits(record)
            elif kind == "endpoint":
                self._endpoint_changed(key, record)
        except Exception:  # one bad record must not stop the watch
            logger.exception("applying a registry change failed")

    def _endpoint_changed(self, key: EndpointKey, record: EndpointRecord | None) -> None:
        current = self.endpoints.get(key)
        if record is None:
            self.invalid.pop(key, None)
            if current is not None:
                self.endpoints.pop(key, None)
                worker = self.workers.pop(key, None)
                if worker is not None:  # the node that deleted it drops the spool
                    self._in_background(worker.halt())
            self._sync_endpoint_keys()
            return
        if current is not None and current[0] == record:
            self._sync_endpoint_keys()
            return  # this node's own write, already applied
        try:
            model = stored_model(record.type, record.name, record.config)
        except Exception as exc:
            self._uid_customer[record.uid_prefix] = record.customer_id
            self.invalid[key] = (record, str(exc) or type(exc).__name__)
            self._sync_endpoint_keys()
            return
        self._apply_endpoint(record, model)
        self._sync_endpoint_keys()
        if self.backend is not None and record.uid_prefix in self.backend.owned():
            self._ownership_changed(record.uid_prefix, True)
