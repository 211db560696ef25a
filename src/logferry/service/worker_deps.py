"""What a delivery worker may use of the running service: exactly this, nothing more.

Why a narrow object and not the `Service`: the worker's reach is visible in one place (a test
can build one without a service), and the service never has to hand out its internals.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logferry.aws.clients import AwsTarget
    from logferry.aws.sts_broker import CredentialBroker
    from logferry.service.accept_backlog import AcceptBacklog
    from logferry.service.fair_pool import FairPool
    from logferry.service.metrics import Metrics
    from logferry.service.records import CustomerRecord
    from logferry.service.worker_stats import StatsBook
    from logferry.spool.base import SpoolProvider


@dataclass(frozen=True)
class WorkerDeps:
    spools: SpoolProvider
    metrics: Metrics
    broker: CredentialBroker
    aws_target: AwsTarget
    state_root: Path
    """The service's state directory; each factory places its endpoints' state under it."""
    get_customer: Callable[[str], CustomerRecord | None]
    """A SQLite read (the customer's external ID): called on the loop, as before."""
    load_stats: Callable[[str], dict[str, Any]]
    save_stats: Callable[[str, dict[str, Any]], None]
    """Blocking: the worker calls it on a thread, never on the event loop."""
    add_error: Callable[[str, str, str, str | None, float], None]
    """Records an endpoint error without waiting for SQLite (any thread, the loop included)."""
    stats: StatsBook
    delivery_pool: FairPool
    sts_pool: Executor
    activation_pool: Executor
    io_pool: Executor
    accept_backlog: AcceptBacklog
    shutdown_flush_seconds: float
    idle_flush_seconds: float
    stopping: Callable[[], bool]
    may_run: Callable[[str], bool] = field(default=lambda _uid: True)
    """Whether this node delivers the endpoint (uid) now: always on the local backend; on
    NATS only an owner does (`--role ingest` never), so `notify` starts no task elsewhere."""
    holds: Callable[[str], bool] | None = None
    """NATS: whether this node still owns the endpoint (uid) by its lease clock; each sink
    asks it before every call to the destination (`SinkContext.holds`). None: always."""
    journal_for: Callable[[str], Any] | None = None
    """The endpoint's S3 journal store when it is not the local file (NATS: its KV record)."""
