"""One group commit's cargo: the appends waiting for it, the batch written, the answers.

Kept apart from the writer's logic (writer.py) because these are plain records that the flush
pool, the group-sync thread and the appenders' event loops hand to each other.
"""

from __future__ import annotations

import asyncio
import threading

from logferry.spool.chunk import Chunk
from logferry.spool.state import _Segment


class _Pending:
    """One append waiting for the group commit."""

    __slots__ = ("chunk", "data", "error", "event", "fut", "lines", "loop")

    def __init__(
        self,
        data: bytes,
        lines: int,
        *,
        event: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        fut: asyncio.Future[Chunk] | None = None,
    ) -> None:
        self.data = data
        self.lines = lines
        self.event = event
        self.loop = loop
        self.fut = fut
        self.chunk: Chunk | None = None
        self.error: BaseException | None = None


class _Written:
    """A batch written to its segment, waiting for its sync before it is published."""

    __slots__ = (
        "end",
        "end_line",
        "fd",
        "first_line",
        "first_off",
        "nbytes",
        "pos",
        "seg",
        "size",
        "ts",
    )

    def __init__(
        self,
        seg: _Segment,
        fd: int,
        pos: int,
        size: int,
        first_off: int,
        first_line: int,
        end: int,
        end_line: int,
        ts: float,
        nbytes: int,
    ) -> None:
        self.seg, self.fd, self.pos, self.size = seg, fd, pos, size
        self.first_off, self.first_line, self.end, self.end_line = (
            first_off,
            first_line,
            end,
            end_line,
        )
        self.ts, self.nbytes = ts, nbytes


_Outcome = tuple["asyncio.Future[Chunk]", Chunk | None, BaseException | None]


def _resolve_many(items: list[_Outcome]) -> None:
    """Runs on the appenders' event loop: one wake-up per batch, not per chunk."""
    for fut, chunk, err in items:
        if fut.done():  # the awaiting task was cancelled
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            # no error means the batch was written, so `chunk` is set (checking costs a branch
            # per append on the loop, for an invariant `_write_batch` holds)
            fut.set_result(chunk)  # type: ignore[arg-type]
