"""The spool seam: what ingest, the worker and the service use of a spool, whatever backs it.

Two protocols, each exactly the surface callers outside `spool/` use today (read off
`service/runtime.py`, `service/worker.py`, `service/ingest_route.py`, `service/otlp.py`, the
syslog listeners through `runtime.append`, and the sinks, which see only `Chunk`s):

- `Spool`: one endpoint's durable queue. Positions are the contract in `logferry.spool` (byte
  offsets at line boundaries, never reused); this module adds no second definition.
- `SpoolProvider`: every endpoint's spool under one backend (lazy open, drop, the byte budget
  that per-customer quotas layer over).

`LocalSpool` / `SpoolManager` (local disk, `log.py` / `manager.py`) implement them. A second
backend is one package that implements both (docs/architecture.md, "The spool"). For NATS JetStream
(issue 29): `append` publishes a request's messages and returns once every part is acknowledged
by a quorum; positions are computed deterministically from the subject's messages; `commit` is
the compare-and-set of the KV cursor, then a purge of the subject below it; `wait_for_data_async`
waits on the owner's ordered consumer; `quarantine` skips a message that cannot be decoded
(a broken continuation fragment) the same way. Errors are `SpoolError`s: `SpoolFull` (with
`retry_after`) over a limit, `SpoolClosed`/`SpoolBroken` when the spool cannot take data now,
`SpoolCorrupt` for damaged stored data; any other `SpoolError` (e.g. no quorum) is a 503 with
Retry-After at ingest. A position that is not a line boundary is the caller's bug: ValueError.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from logferry.spool.budget import SpoolBudget
from logferry.spool.chunk import Chunk
from logferry.spool.errors import Quarantined, SpoolCorrupt


@runtime_checkable
class Spool(Protocol):
    """One endpoint's durable queue: ingest appends, one delivery worker reads and commits.

    Blocking calls (`read`, `commit`, `quarantine`, `first_pending_accepted_at`, `close`) run
    on threads, never on the event loop; `append` and `wait_for_data_async` are the async API.
    The counters below are cheap reads (no I/O): /metrics and status read them for every
    endpoint.
    """

    @property
    def name(self) -> str:
        """The endpoint key the spool was opened for."""
        ...

    # -- ingest ------------------------------------------------------------------------------

    async def append(self, data: bytes, lines: int, *, normalized: bool = False) -> Chunk:
        """Store `lines` newline-terminated lines; return once durable (acknowledge only then).

        `normalized=True`: `data, lines` come from `ingest.lines.normalize`, which already holds
        the chunk contract (only constant-time checks run). Raises SpoolFull (nothing stored).
        """
        ...

    # -- delivery ----------------------------------------------------------------------------

    def read(self, from_offset: int, max_bytes: int = 1024 * 1024) -> list[Chunk]:
        """Durable chunks from position `from_offset` (~`max_bytes` of payload, at least one
        chunk when any is available, [] at the end); a position inside a chunk returns its tail
        first. Raises SpoolCorrupt at damage (after handing over the good chunks before it)."""
        ...

    def commit(self, offset: int) -> None:
        """Every line below position `offset` is at its destination: persist it, free space."""
        ...

    def quarantine(self, error: SpoolCorrupt) -> Quarantined:
        """Move the damaged data `error` names aside and commit past it (everything before it
        must be committed first); delivery goes on after it."""
        ...

    async def wait_for_data_async(self, offset: int, timeout: float | None = None) -> bool:
        """Wait until data past `offset` is durable (True), or `timeout` / close (False)."""
        ...

    # -- pending -----------------------------------------------------------------------------

    @property
    def end_offset(self) -> int:
        """Position just past the last durable line; the next append starts here."""
        ...

    @property
    def committed_offset(self) -> int:
        """Everything below this position is delivered; reading resumes here."""
        ...

    @property
    def committed_line(self) -> int:
        """Lines below `committed_offset` since the spool was created (exact)."""
        ...

    @property
    def pending_bytes(self) -> int:
        """Payload bytes durable but not committed (exact)."""
        ...

    @property
    def pending_lines(self) -> int:
        """Lines durable but not committed (exact)."""
        ...

    def first_pending_accepted_at(self) -> float | None:
        """When the oldest uncommitted line was accepted (None: nothing pending)."""
        ...

    @property
    def disk_bytes(self) -> int:
        """Bytes the backend holds for this endpoint, overhead and not yet freed data included
        (what the endpoint's limit counts)."""
        ...

    @property
    def max_bytes(self) -> int | None:
        """This endpoint's byte limit (None: only the shared and customer budgets apply)."""
        ...

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish queued appends and release resources; later appends raise SpoolClosed."""
        ...


@runtime_checkable
class SpoolProvider(Protocol):
    """Every endpoint's spool in one backend (`SpoolManager` for local disk)."""

    def open(self, key: str) -> Spool:
        """The spool of `key`, created on first use (blocking: may recover after a crash)."""
        ...

    def get(self, key: str) -> Spool | None:
        """The spool of `key` if it exists (in memory or stored), else None."""
        ...

    def peek(self, key: str) -> Spool | None:
        """The spool of `key` if it is open in memory, else None: never blocks (the event
        loop's path; `open` in a thread when it is not)."""
        ...

    def drop(self, key: str) -> None:
        """Delete the endpoint's spool and all its data (the endpoint was deleted)."""
        ...

    def keys_on_disk(self) -> list[str]:
        """Keys that have stored data (to resume delivery after a restart)."""
        ...

    def key_disk_bytes(self, key: str) -> int:
        """Bytes stored for `key` (seeds its customer's quota at start)."""
        ...

    @property
    def budget(self) -> SpoolBudget:
        """The shared byte budget every endpoint's appends reserve from."""
        ...

    @property
    def total_bytes(self) -> int:
        """Bytes held by every endpoint (in-flight reservations included)."""
        ...

    def close(self) -> None:
        """Flush and close every spool."""
        ...
