"""The unit of data that moves from the spool to a sink.

A chunk is what one ingest call appended: newline-terminated lines, the time they were accepted,
and their position in the endpoint's log. Positions are byte offsets in a logical, append-only
log that never reuses an offset, so a (start, end) range names the same bytes forever — that is
what lets a sink derive deterministic S3 keys and replay without duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    """Offset of the first byte of `data` in the endpoint's log."""
    end: int
    """Offset just past the last byte (`end - start == len(data)`)."""
    accepted_at: float
    """Unix time the chunk was made durable; non-decreasing along the log."""
    data: bytes
    """Newline-terminated lines (every line ends with b"\\n"; no empty lines)."""
    lines: int
    """Number of lines in `data`."""

    def split_lines(self) -> list[bytes]:
        """Lines without their trailing newline (costs one Python object per line)."""
        return self.data.split(b"\n")[:-1]
