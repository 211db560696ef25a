"""The seam between the delivery worker and a destination: `Sink` and `SinkFactory`.

A sink turns spool chunks into writes at one destination (S3 files, Kinesis records, …). The
worker never asks which kind it has: it reads chunks from the spool, `feed`s them, calls `pump`
for time-driven work, and commits the spool up to `durable`. Everything else that differs per
destination — the endpoint model, whether data is read lazily, where durable state lives, the
AWS target, the role check, how a lost range is reported — is the destination's `SinkFactory`.
Adding a destination is one module with a `Sink` and a `SinkFactory` plus one line in
`sinks.registry` (or, for tests and extensions, `LOGFERRY_SINK_PLUGINS`; see the registry).

Contract, in positions (see `logferry.spool`: line-boundary byte offsets):

- `open(committed)` finishes or resumes whatever a crash left behind (S3: the journaled
  multipart upload), given the spool's committed position (data below it is gone), and returns
  the position to feed from; it is never below `committed` for data the sink has not journaled.
- `feed(chunk)` hands over chunks in spool order; bytes below the resume position are skipped.
  It may do work (compress, upload a full part) but never *waits*: pacing, throttling and
  retry backoff are returned by `pump` as a delay, so the worker can wait asynchronously
  without holding a delivery thread other customers need.
- `pump(caught_up=…)` does whatever is due (close a file whose period ended, send one
  PutRecords call) and returns when to be called again: 0.0 = more is ready now, a positive
  number of seconds, or None = nothing due until new data or `flush`.
- `flush()` asks for everything fed to be written as soon as possible (shutdown, a changed
  endpoint, spool pressure); the worker keeps pumping until `holds_data()` is False.
- `durable` is the position below which every line is at the destination (or in a journaled
  part that `open()` will complete); the worker commits the spool there after every step.
- Errors: `SetupError` (the customer must fix something; never retried blindly) and
  `TransientError` (retried by the worker with one shared backoff policy, on top of botocore's
  own retries). After any exception the worker calls `open()` again before feeding more and
  re-feeds from the position it returns: nothing held only in memory is trusted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from logferry.sinks.backoff import Backoff
from logferry.spool.chunk import Chunk
from logferry.spool.errors import SpoolFenced

if TYPE_CHECKING:
    from logferry.aws.clients import AwsClients, AwsTarget
    from logferry.aws.role_check import Report
    from logferry.aws.sts_broker import CredentialBroker
    from logferry.sinks.endpoint_base import EndpointBase
    from logferry.sinks.s3_journal import JournalDocuments, JournalStore

ModelClass: TypeAlias = "type[EndpointBase]"
"""An endpoint model class (a name of its own: `SinkFactory.type` shadows `type` in the class)."""


@dataclass
class SinkCounters:
    """Cumulative counters a worker turns into metrics and status (deltas between calls)."""

    units: int = 0
    """Writes at the destination: S3 objects completed, Kinesis PutRecords calls."""
    records: int = 0
    """Kinesis records accepted (0 for S3)."""
    retries: int = 0
    """Records or calls sent again after a transient failure inside the sink."""


@runtime_checkable
class Sink(Protocol):
    """What the worker drives (see the module docstring for the contract)."""

    kind: str

    def open(self, committed: int) -> int: ...

    def feed(self, chunk: Chunk) -> None: ...

    def wants_data(self) -> bool:
        """False while the sink holds as much unsent data as it should (backpressure)."""
        ...

    def pump(self, *, caught_up: bool) -> float | None: ...

    def flush(self) -> None: ...

    @property
    def durable(self) -> int: ...

    def committed(self, position: int) -> None:
        """The worker persisted its spool commit up to `position`."""
        ...

    def holds_data(self) -> bool:
        """Data was fed that is not durable yet (an open file, unsent records)."""
        ...

    def healthcheck(self) -> None:
        """Prove with the customer's role that writes work (raises SetupError with the fix)."""
        ...

    def discard(self) -> None:
        """The endpoint is being deleted: leave nothing half-done at the destination."""
        ...

    def counters(self) -> SinkCounters: ...

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SinkContext:
    """What every sink may need besides its endpoint model and clients."""

    state_dir: Path
    """This endpoint incarnation's private directory (`SinkFactory.state_dir`)."""
    uid_prefix: str
    stop: threading.Event
    wake: Callable[[], None] = field(default=lambda: None)
    """Thread-safe: call when an AWS call the sink left in flight has finished, so the worker
    pumps again at once instead of waiting for its next timer."""
    io_executor: Executor | None = None
    """The service's shared pool for AWS calls that only wait on the network. A sink may keep
    several calls in flight here (bounded per sink) and must never block a delivery thread
    waiting for them in `pump`; None = make every call inline (tools and tests)."""
    holds: Callable[[], bool] | None = None
    """None: this node always delivers the endpoint (the local backend). NATS: True while this
    node owns it and its lease cannot have expired by its own clock. A sink asks it right
    before every call to the destination (each attempt) and raises `SpoolFenced` instead of
    sending once it is False, so a node resumed after a pause (SIGSTOP, a long GC, a frozen
    VM) sends nothing more. A call already on the wire when the node paused still ends;
    `s3.recovery` makes sure such a late part cannot land in a file (see `recover`)."""
    journal: JournalStore | JournalDocuments | None = None
    """Where a sink with durable state keeps it: None = files under `state_dir` (the local
    backend); else a store shared by the nodes that may own the endpoint (the NATS backend's
    `EndpointJournal`: one JSON document, saved compare-and-set), `state_dir` being scratch."""


def check_holds(holds: Callable[[], bool] | None, call: str, target: str) -> None:
    """Right before a call to the destination: SpoolFenced unless this node still holds the
    endpoint (`SinkContext.holds`)."""
    if holds is not None and not holds():
        raise SpoolFenced(
            f"{call} to {target} not sent: this node no longer owns the endpoint (another "
            "node took it over, or this node's lease may have expired while it was paused)"
        )


@dataclass(frozen=True)
class LostRange:
    """Lines the destination lost after the spool had released them (never silent)."""

    start: int
    end: int
    why: str
    fix: str


@runtime_checkable
class SinkFactory(Protocol):
    """Everything destination-specific the service needs, so it never names a destination.

    Endpoint models derive from `EndpointBase` (`name`, `iam_role`): the worker assumes the
    customer's role for every destination.
    """

    type: str
    """The endpoint body's `type` this factory serves (the registry key)."""

    @property
    def model(self) -> ModelClass:
        """The pydantic model that validates endpoint bodies of this type."""
        ...

    unit: str
    """What `SinkCounters.units` counts, as status names it ("objects" or "calls")."""
    lazy: bool
    """Data is batched over a period: new data need not be read before the batch is due."""
    durable_state: bool
    """The sink keeps state in `state_dir` that must be resumed after a restart."""

    def configure(self, server: Any) -> None:
        """Take process-wide settings from the service's `[server]` config (once, at start)."""
        ...

    def state_dir(self, root: Path, uid_prefix: str) -> Path:
        """This endpoint incarnation's private directory under the service's state root."""
        ...

    def has_unfinished_state(self, state_dir: Path, journal: Any = None) -> bool:
        """The sink's durable state describes work the destination has not finished (data
        still pending, or an upload to complete or abort): `journal` when the sink is given a
        shared one (`SinkContext.journal`, NATS), else `state_dir`."""
        ...

    def period(self, model: Any) -> float:
        """Seconds the sink may hold a line by design (the lag budget before it is late)."""
        ...

    def target(self, model: Any, base: AwsTarget) -> AwsTarget:
        """Where this endpoint's AWS calls go (e.g. an S3-compatible `domain`)."""
        ...

    def build(self, model: Any, clients: AwsClients, ctx: SinkContext) -> Sink: ...

    def verify(
        self,
        model: Any,
        *,
        broker: CredentialBroker,
        external_id: str,
        customer_id: str,
        aws_target: AwsTarget,
    ) -> Report:
        """The role check for this endpoint: assume the role, probe the write it needs."""
        ...

    def lost_ranges(self, sink: Sink) -> Sequence[LostRange]:
        """Every range `sink` reported lost so far, in order (the worker shows new ones)."""
        ...


class BaseSinkFactory:
    """Defaults for a destination without durable state, lazy reads or a lag period."""

    type: str
    model: ModelClass
    unit: str = "calls"
    lazy: bool = False
    durable_state: bool = False

    def configure(self, server: Any) -> None:
        pass

    def state_dir(self, root: Path, uid_prefix: str) -> Path:
        return root / self.type / uid_prefix

    def has_unfinished_state(self, state_dir: Path, journal: Any = None) -> bool:
        return False

    def period(self, model: Any) -> float:
        return 0.0

    def target(self, model: Any, base: AwsTarget) -> AwsTarget:
        return base

    def lost_ranges(self, sink: Sink) -> Sequence[LostRange]:
        return ()


RETRY_POLICY = Backoff(base=2.0, cap=30.0, jitter="equal")
"""The worker's backoff after a transient failure (capped: an outage is noticed to be over
within half a minute; "equal" jitter: failing endpoints spread out, but a retry is never
immediate)."""
SETUP_RETRY_POLICY = Backoff(base=2.0, cap=300.0, jitter="equal")
"""After a customer-setup error: slower, since only the customer can fix it (a successful
`verify` wakes the worker at once)."""
