"""What the running service reports: one endpoint's status and the snapshot /metrics renders
(part of `service.runtime.Service`)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logferry.aws.sts_broker import CredentialBroker
    from logferry.ingest.syslog import SyslogServer
    from logferry.service.endpoints import EndpointModel
    from logferry.service.fair_pool import FairPool
    from logferry.service.records import EndpointRecord
    from logferry.service.registry import StateStore
    from logferry.service.worker import EndpointWorker
    from logferry.spool.base import SpoolProvider
    from logferry.spool.nats.backend import NatsBackend

from logferry.service.endpoint_table import EndpointKey, EndpointTable


class ServiceStatus:
    store: StateStore
    spools: SpoolProvider
    backend: NatsBackend | None
    broker: CredentialBroker
    delivery_executor: FairPool
    listeners: list[SyslogServer]
    endpoints: EndpointTable
    invalid: dict[EndpointKey, tuple[EndpointRecord, str]]
    workers: dict[EndpointKey, EndpointWorker]

    if TYPE_CHECKING:  # provided by the class this is part of

        def endpoint(self, customer_id: str, name: str) -> tuple[EndpointRecord, EndpointModel]: ...

        def worker(self, customer_id: str, name: str) -> EndpointWorker: ...

    def endpoint_status(self, customer_id: str, name: str) -> dict[str, Any]:
        broken = self.invalid.get((customer_id, name))
        if broken is not None:
            return self._invalid_status(*broken)
        record, _ = self.endpoint(customer_id, name)
        worker = self.worker(customer_id, name)
        status = worker.status()  # pending and delivered read together (spools.get opens it)
        status["errors"] = self.store.errors(record.uid_prefix)
        return status

    def _invalid_status(self, record: EndpointRecord, reason: str) -> dict[str, Any]:
        spool = self.spools.get(record.uid_prefix)
        return {
            "customer_id": record.customer_id,
            "name": record.name,
            "type": record.type,
            "state": "invalid",
            "reason": reason,
            "fix": "PUT the endpoint again with valid settings (its accepted lines are kept and "
            "delivered then), or DELETE it to drop them.",
            "lines": {"pending": spool.pending_lines if spool else 0},
            "bytes": {"pending": spool.pending_bytes if spool else 0},
            "errors": self.store.errors(record.uid_prefix),
        }

    def snapshot(self) -> dict[str, Any]:
        pending = {}
        lag = {}
        late = 0
        for key, worker in list(self.workers.items()):
            spool = self.spools.get(worker.record.uid_prefix)
            if spool is not None:
                pending[key] = (spool.pending_bytes, spool.pending_lines)
            if worker.running:
                # Lines not yet read count too (a lazy S3 file, a role that never worked):
                # one cached header read per spool, and /metrics renders off the event loop.
                age = worker.oldest_undelivered_age()
                lag[key] = 0.0 if age is None else age
                if age is not None and age > worker.lag_budget():
                    late += 1
        states: Counter[tuple[str, str]] = Counter()
        for key, (record, _) in list(self.endpoints.items()):
            found = self.workers.get(key)
            states[(record.type, found.state if found else "idle")] += 1
        return {
            "sts": dict(self.broker.outcomes),
            "regions": self.broker.region_health(),
            "pending": pending,
            "lag": lag,
            "late": late,
            "delivery_queue_wait": self.delivery_executor.oldest_wait(),
            "delivery_queued": self.delivery_executor.queued(),
            "disk": self.spools.total_bytes,
            "states": dict(states),
            "syslog": {
                f"{ln.config.protocol}://{ln.config.listen}": ln.counters for ln in self.listeners
            },
            "nats": self.backend.node_stats() if self.backend is not None else None,
        }
