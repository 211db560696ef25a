"""Spool errors: what ingest and delivery must tell apart (back off, reopen, quarantine)."""

from __future__ import annotations

from logferry.errors import LogferryError


class SpoolError(LogferryError):
    """Root of spool failures."""


class SpoolFull(SpoolError):
    """The spool (or the whole spool directory) is at its byte limit: back off and retry.

    Nothing was written; the caller still owns the data (HTTP ingest answers 503 + Retry-After).
    """

    def __init__(self, message: str, *, retry_after: float, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.retry_after = retry_after


class SpoolFenced(SpoolError):
    """This node no longer owns the endpoint (NATS backend): a compare-and-set on its record
    failed, or its lease may have expired by its own clock, so a sink refused to send a write
    to the destination. Stop delivering it; the new owner resumes from the record's cursor."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            fix="Nothing to fix: another delivery node took the endpoint over (lease expiry "
            "or rebalance); this node stops its worker.",
        )


class SpoolClosed(SpoolError):
    """The spool was closed or dropped; nothing more can be appended."""


class SpoolBroken(SpoolError):
    """A write or fsync failed in a way that leaves the file state unknown; reopen to recover."""


class SpoolCorrupt(SpoolError):
    """Stored bytes fail their checksum: storage damage, not a torn tail (those are cut on open).

    `next_offset` is the first offset after the damaged segment (None if it is the last one); a
    consumer that accepts the loss may `commit(next_offset)` to move past it.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int,
        next_offset: int | None,
        segment: int | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(
            message,
            fix="Check the disk; `Spool.quarantine(error)` moves the damaged bytes aside and "
            "delivery goes on after them.",
        )
        self.offset = offset
        self.next_offset = next_offset
        self.segment = segment
        """Base offset of the segment holding the damage (None: unknown)."""
        self.position = position
        """File position in that segment where the damaged record starts."""


class Quarantined:
    """What `Spool.quarantine` moved aside: the damaged byte range and where it went."""

    __slots__ = ("end", "lines", "nbytes", "path", "start")

    def __init__(self, start: int, end: int, nbytes: int, lines: int, path: str) -> None:
        self.start = start
        self.end = end
        self.nbytes = nbytes
        self.lines = lines
        """Lines skipped (exact when the damaged records' headers were readable, else 0)."""
        self.path = path
