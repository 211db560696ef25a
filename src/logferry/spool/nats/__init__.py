"""The NATS JetStream spool backend (issue 29): many ingest and delivery processes, no single
machine or disk. See docs/architecture.md, "The NATS backend".

`NatsBackend` (one per process) owns the connection, the streams and KV buckets and endpoint
ownership; `NatsBackend.provider` is the `SpoolProvider`, its spools are `NatsSpool`s.
"""

from logferry.spool.nats.backend import NatsBackend
from logferry.spool.nats.errors import NatsUnavailable, SpoolFenced
from logferry.spool.nats.journal import EndpointJournal
from logferry.spool.nats.provider import NatsSpoolProvider
from logferry.spool.nats.settings import NatsSpoolSettings
from logferry.spool.nats.spool import NatsSpool

__all__ = [
    "EndpointJournal",
    "NatsBackend",
    "NatsSpool",
    "NatsSpoolProvider",
    "NatsSpoolSettings",
    "NatsUnavailable",
    "SpoolFenced",
]
