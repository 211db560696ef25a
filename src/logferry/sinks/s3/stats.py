"""What an S3 sink reports: its counters, its last error, and the error that asks for recovery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from logferry.errors import LogferryError


class SinkNeedsRecovery(LogferryError, RuntimeError):
    """`feed`/`tick`/`flush` after a failure: call `recover()` and re-feed from its offset.

    Not a setup error (nothing for the customer to fix): the worker re-opens (recovers) the
    sink after every failure, so it never sees this; if it did, the transient path (re-open,
    `RETRY_POLICY`) is the remedy. Still a RuntimeError for callers that catch that.
    """


@dataclass
class LastError:
    code: str
    message: str
    fix: str | None
    time: float
    transient: bool


@dataclass
class S3SinkStats:
    """Counters for status pages and metrics (bytes count every upload, re-uploads included)."""

    objects: int = 0
    parts: int = 0
    bytes_in: int = 0
    """Line bytes accepted from the spool (before framing)."""
    bytes_out: int = 0
    """Object bytes uploaded (after compression / encryption)."""
    retries: int = 0
    aborted_uploads: int = 0
    already_complete: int = 0
    """Completions S3 refused with 412 (`If-None-Match: *`): the key was already written, by
    an earlier life of this sink whose answer was lost or by a stale owner. Delivered."""
    unfenced: bool = False
    """The destination (an S3-compatible `domain`) answered 501 to `If-None-Match`: writes go
    without it (see `fencing`)."""
    last_key: str | None = None
    last_success: float | None = None
    last_error: LastError | None = None
    state: Literal["ok", "retrying", "error"] = "ok"
