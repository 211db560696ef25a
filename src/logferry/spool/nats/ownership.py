"""Ownership of endpoints among delivery nodes, and every write to an endpoint's KV record.

Why this shape (issue 29): no durable consumer per endpoint. Each delivery node puts a heartbeat
into the `<prefix>_nodes` bucket, whose TTL (max age) is `lease_seconds`; rendezvous hashing
with bounded loads over the live nodes (`wire.balanced_owners`) names each endpoint's owner,
which takes the endpoint's record (`<prefix>_endpoints`, key = the endpoint key) by
compare-and-set, bumping `epoch`. Every later
record write (cursor, journal, backlog, release) is `update(last=revision)` from the revision
this node wrote last, so a node that lost the record (a takeover while it was paused) fails
its next write: `SpoolFenced`.

Lease by the node's own clock: a heartbeat sent at monotonic time t cannot expire on the server
before t + lease. The node therefore stops owning at t + lease - heartbeat (callback(key,
False), `holds()` false) *before* anyone can see its heartbeat gone; the check runs before the
renewal, so a node resumed after SIGSTOP gives everything up before it writes again.

Record: {"owner", "epoch", "cursor": {"seq","skip","pos","line","accepted_at"}, "journal",
"backlog": {"bytes","lines"}, and while an upload's ID waits for the journal, "uploads"}; the
owner field is "" once released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from logferry.spool.nats.errors import NatsUnavailable, SpoolFenced
from logferry.spool.nats.wire import balanced_owners, decode_key, encode_key

if TYPE_CHECKING:
    from logferry.spool.nats.backend import NatsBackend

log = logging.getLogger(__name__)

Doc = dict[str, Any]


def new_record(owner: str) -> Doc:
    return {
        "owner": owner,
        "epoch": 1,
        "cursor": {"seq": 1, "skip": 0, "pos": 0, "line": 0, "accepted_at": 0.0},
        "journal": None,
        "backlog": {"bytes": 0, "lines": 0},
    }


class Ownership:
    """Heartbeats, the live set, takeovers and releases, and the CAS record writes."""

    def __init__(self, backend: NatsBackend) -> None:
        self.backend = backend
        self.callbacks: list[Callable[[str, bool], None]] = []
        self.records: dict[str, tuple[int, Doc]] = {}
        """Latest record of every endpoint (the watcher's view; may lag a write)."""
        self._mine: dict[str, tuple[int, Doc]] = {}
        """Records this node owns: the revision and document it wrote last."""
        self._endpoints: frozenset[str] = frozenset()
        self._assignment: tuple[frozenset[str], list[str], dict[str, str]] | None = None
        self._renewed = float("-inf")
        self._live: list[str] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.takeovers = 0
        self.conflicts = 0
        self.records_ready = asyncio.Event()

    # -- views (any thread) ------------------------------------------------------------------

    def lease_valid(self) -> bool:
        s = self.backend.settings
        return time.monotonic() < self._renewed + s.lease_seconds - s.heartbeat_seconds

    def owned(self) -> frozenset[str]:
        return frozenset(self._mine) if self.lease_valid() else frozenset()

    def holds(self, key: str) -> bool:
        return key in self._mine and self.lease_valid()

    def record(self, key: str) -> Doc | None:
        mine = self._mine.get(key)
        if mine is not None:
            return mine[1]
        found = self.records.get(key)
        return found[1] if found else None

    def set_endpoints(self, keys: Iterable[str]) -> None:
        self._endpoints = frozenset(keys)

    def stats(self) -> dict[str, float]:
        return {
            "owned_endpoints": float(len(self.owned())),
            "takeovers_total": float(self.takeovers),
            "kv_conflicts_total": float(self.conflicts),
            "live_nodes": float(len(self._live)),
        }

    # -- lifetime (backend loop) -------------------------------------------------------------

    async def _kv(self) -> KeyValue:
        return await self.backend.kv(self.backend.settings.endpoints_bucket)

    async def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.records_ready.wait(), 10)
        await self.tick()
        self._tasks.append(asyncio.get_running_loop().create_task(self._beat()))

    async def stop(self, *, release: bool) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if release:
            for key in list(self._mine):
                await self.release(key)
            if self.backend.deliver:
                nodes = await self.backend.kv(self.backend.settings.nodes_bucket)
                with contextlib.suppress(Exception):
                    await nodes.delete(encode_key(self.backend.node_id))

    async def _watch(self) -> None:
        """Keep `records` current (ingest nodes read the owner's backlog from it)."""
        while not self._stopping:
            try:
                kv = await self._kv()
                watcher = await kv.watchall()
                while not self._stopping:
                    entry = await watcher.updates(timeout=3600)  # type: ignore[no-untyped-call]
                    if entry is None:
                        self.records_ready.set()
                        continue
                    key = decode_key(entry.key)
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self.records.pop(key, None)
                    else:
                        self.records[key] = (entry.revision, json.loads(entry.value))
                    self.backend.provider.record_changed(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("nats %s: endpoint watcher restarts: %r", self.backend.node_id, exc)
                await asyncio.sleep(1)

    async def _beat(self) -> None:
        """Heartbeats keep their cadence; balancing (KV writes per endpoint, possibly many)
        runs beside them, one round at a time."""
        balancing: asyncio.Task[None] | None = None
        while not self._stopping:
            await asyncio.sleep(self.backend.settings.heartbeat_seconds)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("nats %s: heartbeat failed: %r", self.backend.node_id, exc)
            if balancing is None or balancing.done():
                balancing = asyncio.get_running_loop().create_task(self._balance_logged())

    async def _balance_logged(self) -> None:
        try:
            await self.balance()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("nats %s: ownership round failed: %r", self.backend.node_id, exc)

    # -- the tick ----------------------------------------------------------------------------

    async def tick(self) -> None:
        """One heartbeat and one balancing round (start-up; later they run apart)."""
        await self.beat()
        await self.balance()

    async def beat(self) -> None:
        """Check the lease (before renewing it), renew it, list the live delivery nodes."""
        if not self.backend.deliver:
            return
        if self._mine and not self.lease_valid():
            self._lose_all("its lease may have expired (no heartbeat renewed in time)")
        s = self.backend.settings
        sent = time.monotonic()
        try:
            nodes = await self.backend.kv(s.nodes_bucket)
            beat = json.dumps({"t": time.time()}).encode()
            await self.backend.js.publish(
                f"$KV.{s.nodes_bucket}.{encode_key(self.backend.node_id)}",
                beat,
                timeout=max(s.heartbeat_seconds, 1.0),
            )
            self._renewed = sent
            try:
                live = sorted(decode_key(k) for k in await nodes.keys())
            except nats.js.errors.NoKeysError:
                live = []
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("nats %s: heartbeat failed: %r", self.backend.node_id, exc)
            return
        if self.backend.node_id not in live:
            live.append(self.backend.node_id)
        self._live = live

    async def balance(self) -> None:
        """Take the endpoints this node wins, release the ones it no longer wins, publish
        backlogs; on every node, refresh the shared budget from the streams."""
        if self.backend.deliver and self.lease_valid():
            owners = self._owners(list(self._live))
            jobs = []
            for key in sorted(self._endpoints | set(self._mine)):
                want = owners.get(key) == self.backend.node_id
                if want and key not in self._mine:
                    jobs.append(self._take(key))
                elif not want and key in self._mine:
                    why = "rebalanced to another node" if key in self._endpoints else "gone"
                    self._lose(key, why)
                    jobs.append(self.release(key))
            await _bounded(jobs)
            await self._publish_backlogs()
        await self.backend.provider.refresh_usage()

    def _owners(self, live: list[str]) -> dict[str, str]:
        """Every endpoint's owner among `live` (`balanced_owners`), computed again only when
        the endpoint set or the live set changed."""
        if self._assignment is None or self._assignment[:2] != (self._endpoints, live):
            self._assignment = (self._endpoints, live, balanced_owners(self._endpoints, live))
        return self._assignment[2]

    async def _take(self, key: str) -> None:
        async with self._lock(key):
            if key in self._mine or not self.lease_valid():
                return
            kv = await self._kv()
            current = self.records.get(key)
            try:
                if current is None:
                    doc = new_record(self.backend.node_id)
                    rev = await kv.create(encode_key(key), json.dumps(doc).encode())
                else:
                    rev0, old = current
                    owner = old.get("owner") or ""
                    if owner and owner != self.backend.node_id and owner in self._live:
                        return  # its holder releases it when it sees us
                    doc = dict(old, owner=self.backend.node_id, epoch=int(old["epoch"]) + 1)
                    rev = await kv.update(encode_key(key), json.dumps(doc).encode(), last=rev0)
                    if owner != self.backend.node_id:
                        self.takeovers += 1  # held or released by another node
            except nats.js.errors.KeyWrongLastSequenceError:
                self.conflicts += 1
                return
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("nats %s: take %s failed: %r", self.backend.node_id, key, exc)
                return
            self._mine[key] = (rev, doc)
            self.records[key] = (rev, doc)
        log.info("nats %s: owns %s (epoch %s)", self.backend.node_id, key, doc["epoch"])
        self._notify(key, True)

    async def release(self, key: str) -> None:
        """Give the record up (owner "") so the next owner need not wait for a lease."""
        self._lose(key, None)
        async with self._lock(key):
            current = self.records.get(key)
            if current is None or current[1].get("owner") != self.backend.node_id:
                return
            rev, doc = current
            with contextlib.suppress(Exception):
                kv = await self._kv()
                new = dict(doc, owner="")
                rev2 = await kv.update(encode_key(key), json.dumps(new).encode(), last=rev)
                self.records[key] = (rev2, new)

    def _lose(self, key: str, why: str | None) -> None:
        if self._mine.pop(key, None) is not None:
            if why:
                level = logging.INFO if why.startswith(("rebalanced", "gone")) else logging.WARNING
                log.log(level, "nats %s: stops owning %s: %s", self.backend.node_id, key, why)
            self._notify(key, False)

    def _lose_all(self, why: str) -> None:
        for key in list(self._mine):
            self._lose(key, why)

    def _notify(self, key: str, owned: bool) -> None:
        self.backend.provider.ownership_changed(key, owned)
        loop = self.backend.service_loop
        for callback in self.callbacks:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(callback, key, owned)
            else:
                callback(key, owned)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # -- record writes (CAS) -----------------------------------------------------------------

    async def write(self, key: str, change: Callable[[Doc], None]) -> Doc:
        """Apply `change` to this node's record of `key` and store it by compare-and-set.

        SpoolFenced when this node does not own `key` (or its lease may have expired) or the
        record moved on (another owner); NatsUnavailable when NATS did not answer and the
        record shows the write did not land."""
        async with self._lock(key):
            mine = self._mine.get(key)
            if mine is None or not self.lease_valid():
                raise SpoolFenced(f"node {self.backend.node_id} does not own endpoint {key}")
            rev, doc = mine
            new = json.loads(json.dumps(doc))
            change(new)
            kv = await self._kv()
            payload = json.dumps(new).encode()
            try:
                rev2 = await kv.update(encode_key(key), payload, last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                self.conflicts += 1
                self._lose(key, "its record was changed by another node")
                raise SpoolFenced(
                    f"endpoint {key}: record changed by another node (epoch {doc['epoch']} "
                    "is stale)"
                ) from None
            except (TimeoutError, nats.errors.Error) as exc:
                rev2 = await self._settle(key, kv, rev, new, exc)
            self._mine[key] = (rev2, new)
            self.records[key] = (rev2, new)
            result: Doc = new
            return result

    async def _settle(self, key: str, kv: KeyValue, rev: int, new: Doc, exc: Exception) -> int:
        """A write without an answer may have landed: read the record back to know."""
        try:
            entry = await kv.get(encode_key(key))
        except (TimeoutError, nats.errors.Error):
            raise NatsUnavailable(f"endpoint {key}: record write unanswered: {exc!r}") from exc
        if entry.revision is None or entry.revision == rev:
            raise NatsUnavailable(f"endpoint {key}: record write failed: {exc!r}") from exc
        if entry.value and json.loads(entry.value) == new:
            return int(entry.revision)
        self.conflicts += 1
        self._lose(key, "its record was changed by another node")
        raise SpoolFenced(f"endpoint {key}: record changed by another node") from exc

    async def _publish_backlogs(self) -> None:
        """The owner's pending bytes/lines, so ingest-only nodes can enforce quotas."""
        jobs = []
        for key, (_, doc) in list(self._mine.items()):
            spool = self.backend.provider.peek(key)
            if spool is None or not spool.following:
                continue
            backlog = {"bytes": spool.pending_bytes, "lines": spool.pending_lines}
            if doc.get("backlog") != backlog:
                jobs.append(self._publish_backlog(key, backlog))
        await _bounded(jobs)

    async def _publish_backlog(self, key: str, backlog: dict[str, int]) -> None:
        with contextlib.suppress(SpoolFenced, NatsUnavailable):
            await self.write(key, _setter("backlog", backlog))


def _setter(field: str, value: Any) -> Callable[[Doc], None]:
    """A record change that sets one field."""

    def change(doc: Doc) -> None:
        doc[field] = value

    return change


ROUND_CONCURRENCY = 32
"""KV writes in flight at once in one ownership round (takeovers at start, backlogs)."""


async def _bounded(jobs: list[Coroutine[Any, Any, None]]) -> None:
    sem = asyncio.Semaphore(ROUND_CONCURRENCY)

    async def one(job: Coroutine[Any, Any, None]) -> None:
        async with sem:
            await job

    await asyncio.gather(*(one(job) for job in jobs))
