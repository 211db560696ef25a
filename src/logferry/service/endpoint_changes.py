"""Creating, changing and deleting endpoints of the running service, so that no accepted
line is stranded and nothing is left half-done at a destination (part of
`service.runtime.Service`). SQLite writes run on a thread when called from the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from logferry.errors import InputError, LogferryError
from logferry.service.endpoint_table import EndpointKey, EndpointTable
from logferry.service.endpoints import EndpointModel, endpoint_document
from logferry.service.logs import log
from logferry.sinks.base import SinkContext
from logferry.sinks.registry import factory

if TYPE_CHECKING:
    from pathlib import Path

    from logferry.aws.clients import AwsTarget
    from logferry.aws.sts_broker import CredentialBroker
    from logferry.service.records import EndpointRecord
    from logferry.service.registry import StateStore
    from logferry.service.worker import EndpointWorker
    from logferry.spool.base import SpoolProvider
    from logferry.spool.nats.backend import NatsBackend

logger = logging.getLogger("logferry.service")


class UnknownEndpoint(InputError):
    pass


class EndpointConflict(InputError):
    """The change would strand accepted lines (HTTP 409): deliver them first."""


class EndpointChanges:
    store: StateStore
    spools: SpoolProvider
    broker: CredentialBroker
    aws_target: AwsTarget
    state_dir: Path
    endpoints: EndpointTable
    invalid: dict[EndpointKey, tuple[EndpointRecord, str]]
    workers: dict[EndpointKey, EndpointWorker]
    _uid_customer: dict[str, str]
    _background: set[asyncio.Task[Any]]
    _endpoint_writes: asyncio.Lock
    backend: NatsBackend | None

    if TYPE_CHECKING:  # provided by the class this is part of

        def worker(self, customer_id: str, name: str) -> EndpointWorker: ...

        def _forget_tenant(self, customer_id: str) -> None: ...

        def _sync_endpoint_keys(self) -> None: ...

    def _has_state(self, type_: str, uid: str) -> bool:
        """The destination kept durable state for this endpoint (e.g. an open upload)."""
        sink_factory = factory(type_)
        return sink_factory.durable_state and sink_factory.state_dir(self.state_dir, uid).exists()

    async def delete_customer(self, customer_id: str) -> None:
        for key in [k for k in self.endpoints if k[0] == customer_id]:
            await self._retire(key)
        for uid in await asyncio.to_thread(self.store.delete_customer, customer_id):
            await asyncio.to_thread(self.spools.drop, uid)
        self._forget_tenant(customer_id)

    async def save_endpoint(
        self, customer_id: str, name: str, type_: str, model: EndpointModel
    ) -> tuple[EndpointRecord, bool]:
        """`put_endpoint` for the event loop: the SQLite write runs on a thread, and endpoint
        writes are serialised so each sees the one before it applied."""
        async with self._endpoint_writes:
            document = self._check_change(customer_id, name, type_, model)
            record, new = await asyncio.to_thread(
                self.store.put_endpoint, customer_id, name, type_, document
            )
            self._apply_endpoint(record, model)
        return record, new

    def put_endpoint(
        self, customer_id: str, name: str, type_: str, model: EndpointModel
    ) -> tuple[EndpointRecord, bool]:
        """Create or change an endpoint, blocking on SQLite: for start-up and tools; the API's
        routes use `save_endpoint`."""
        document = self._check_change(customer_id, name, type_, model)
        record, new = self.store.put_endpoint(customer_id, name, type_, document)
        self._apply_endpoint(record, model)
        return record, new

    def put_endpoints(
        self, items: list[tuple[str, str, str, EndpointModel]]
    ) -> list[tuple[EndpointRecord, bool]]:
        """`put_endpoint` for many `(customer_id, name, type, model)` (start-up: the config's
        endpoints), written in one registry batch."""
        documents = [
            (customer_id, name, type_, self._check_change(customer_id, name, type_, model))
            for customer_id, name, type_, model in items
        ]
        results = self.store.put_endpoints(documents)
        for (record, _), item in zip(results, items, strict=True):
            self._apply_endpoint(record, item[3])
        return results

    def _check_change(
        self, customer_id: str, name: str, type_: str, model: EndpointModel
    ) -> dict[str, Any]:
        """Refuse a change that would strand accepted lines; the document to store."""
        document = endpoint_document(type_, model)
        document.pop("type")
        key = (customer_id, name)
        old = self.endpoints.get(key)
        broken = self.invalid.get(key)
        old_type = old[0].type if old else broken[0].type if broken else None
        if old_type is not None and old_type != type_ and self._has_pending(key):
            raise EndpointConflict(
                "endpoint",
                f"endpoint {name!r} of customer {customer_id!r} still has accepted lines pending "
                f"for its {old_type} destination; changing its type now would strand them.",
                fix=f"Wait until GET /v1/customers/{customer_id}/endpoints/{name}/status shows "
                "0 pending lines (or DELETE the endpoint to drop them), then change its type.",
            )
        return document

    def _apply_endpoint(self, record: EndpointRecord, model: EndpointModel) -> None:
        """Serve the stored endpoint: retire an old incarnation, reconfigure a running worker."""
        customer_id, name = record.customer_id, record.name
        key = (customer_id, name)
        old = self.endpoints.get(key)
        broken = self.invalid.get(key)
        self._uid_customer[record.uid_prefix] = customer_id
        if broken is not None:
            self.invalid.pop(key, None)
            if broken[0].uid_prefix != record.uid_prefix:
                self._drop_later(broken[0].uid_prefix)
        if old is not None and old[0].uid_prefix != record.uid_prefix:
            # Another type: a new incarnation. Retire the old one (abort its open upload).
            self.endpoints.pop(key, None)
            worker = self.workers.pop(key, None)
            asyncio.get_running_loop().create_task(self._retire(key, old, worker))
        self.endpoints[key] = (record, model)
        self._sync_endpoint_keys()  # NATS: ownership is decided over the endpoints that exist
        worker = self.workers.get(key)
        if worker is not None:
            worker.reconfigure(record, model)
        elif broken is not None and broken[0].uid_prefix == record.uid_prefix:
            self.worker(customer_id, name).notify()  # deliver what it kept while invalid

    def _has_pending(self, key: EndpointKey) -> bool:
        worker = self.workers.get(key)
        if worker is None and key in self.endpoints:
            worker = self.worker(*key)
        if worker is not None:
            return worker.has_pending()
        record = self.invalid[key][0]
        spool = self.spools.get(record.uid_prefix)
        return bool(spool is not None and spool.pending_bytes > 0)

    def _drop_later(self, uid: str) -> None:
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.spools.drop, uid))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def delete_endpoint(self, customer_id: str, name: str) -> bool:
        key = (customer_id, name)
        broken = self.invalid.pop(key, None)
        if broken is not None:
            await asyncio.to_thread(self.spools.drop, broken[0].uid_prefix)
            await asyncio.to_thread(self.store.delete_endpoint, customer_id, name)
            return True
        if key not in self.endpoints:
            return False
        await self._retire(key)
        await asyncio.to_thread(self.store.delete_endpoint, customer_id, name)
        return True

    async def _retire(
        self,
        key: EndpointKey,
        entry: tuple[EndpointRecord, EndpointModel] | None = None,
        worker: EndpointWorker | None = None,
    ) -> None:
        """Stop delivery, abort an open multipart upload, drop the spool: nothing half-done."""
        entry = entry or self.endpoints.pop(key, None)
        self._sync_endpoint_keys()
        worker = worker or self.workers.pop(key, None)
        if worker is not None:
            await worker.halt()
        if entry is None:
            return
        record, model = entry
        await asyncio.to_thread(self._discard, record, model)
        await asyncio.to_thread(self.spools.drop, record.uid_prefix)

    def _discard(self, record: EndpointRecord, model: EndpointModel) -> None:
        """Leave nothing half-done at the destination (e.g. an open upload): the factory's
        sink, built for the endpoint's kept state, discards it."""
        sink_factory = factory(record.type)
        # NATS: the journal lives in the endpoint's KV record (whichever node owned it).
        journal = None
        if self.backend is not None and sink_factory.durable_state:
            journal = self.backend.journal(record.uid_prefix)
            state = sink_factory.state_dir(self.state_dir, record.uid_prefix)
            unfinished = sink_factory.has_unfinished_state(state, journal)  # incl. upload notes
            if not unfinished and not self._has_state(record.type, record.uid_prefix):
                return
        elif not self._has_state(record.type, record.uid_prefix):
            return
        state = sink_factory.state_dir(self.state_dir, record.uid_prefix)
        customer = self.store.get_customer(record.customer_id)
        try:
            if customer is None:  # fail closed: never guess an external ID
                raise LogferryError(f"customer {record.customer_id!r} has no record")
            clients = self.broker.clients(
                model.iam_role,
                customer.external_id,
                customer_id=record.customer_id,
                target=sink_factory.target(model, self.aws_target),
            )
            context = SinkContext(state, record.uid_prefix, threading.Event(), journal=journal)
            sink_factory.build(model, clients, context).discard()
        except LogferryError as exc:
            log(
                logger,
                logging.ERROR,
                "could not clean up a deleted endpoint at its destination",
                customer=record.customer_id,
                endpoint=record.name,
                error=str(exc),
                fix=exc.fix,
            )
