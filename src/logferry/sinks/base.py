"""The one interface the delivery worker drives, whatever the destination.

A sink turns spool chunks into writes at one destination (S3 files, Kinesis records, …). The
worker never asks which kind it has: it reads chunks from the spool, `feed`s them, calls `pump`
for time-driven work, and commits the spool up to `durable`. Adding a destination is one new
module that implements `Sink` plus one line in `sinks.registry`.

Contract, in positions (see `logferry.spool`: line-boundary byte offsets):

- `open()` finishes or resumes whatever a crash left behind (S3: the journaled multipart
  upload) and returns the position to feed from; it is never below the spool's committed
  position for data the sink has not journaled.
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

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from logferry.sinks.backoff import Backoff
from logferry.spool.chunk import Chunk


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
    kind: str

    def open(self) -> int: ...

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


RETRY_POLICY = Backoff(base=2.0, cap=30.0)
"""The worker's backoff after a transient failure (full jitter, capped: an outage is noticed
to be over within half a minute)."""
SETUP_RETRY_POLICY = Backoff(base=2.0, cap=300.0)
"""After a customer-setup error: slower, since only the customer can fix it (a successful
`verify` wakes the worker at once)."""
