"""Durable per-endpoint spool: ingest appends chunks, delivery reads and commits them.

The position contract (one currency between spool, worker, sinks, journals and S3 keys):

- A **position** is a logical byte offset in an endpoint's append-only log that falls on a
  *line boundary*: the start of a chunk, or just past any newline inside one. Offsets are never
  reused, so a position names the same line forever (across restarts and segment deletion).
- `Spool.read(position)` returns chunks from any position; when it falls inside a chunk (an
  ingest request), the first chunk returned is that chunk's tail, with its own `start` and
  line count. A sink may therefore cut a file, a multipart part or a Kinesis batch anywhere
  between two lines, and reading resumes exactly there.
- `Spool.commit(position)` persists "every line below this position is at its destination";
  any line boundary is accepted, and the exact line count below it is kept (`committed_line`).
  A position inside a line raises ValueError: that is a bug in the caller, never data.
- Sinks report `durable` as a position; their crash journals (S3 parts, file boundaries) and
  deterministic names (S3 key uid = the file's start position, Kinesis partition keys = a
  record's first line position) use the same positions, so a replay from the committed
  position rebuilds byte-identical objects and records.
- Damaged bytes (`SpoolCorrupt`) are moved aside with `Spool.quarantine` once every line before
  them is committed, and delivery goes on after them; nothing is dropped silently.

The seam: `spool/base.py` holds the `Spool` and `SpoolProvider` protocols (what ingest, the
worker and the service use); `LocalSpool` / `SpoolManager` are the local-disk backend. The name
`Spool` exported here is `LocalSpool`, kept for the importers that construct it; code that only
uses a spool types it with `logferry.spool.base.Spool` (docs/architecture.md, "The spool").
"""

from logferry.spool.base import SpoolProvider
from logferry.spool.chunk import Chunk
from logferry.spool.log import (
    DEFAULT_SEGMENT_BYTES,
    STORAGE_REASON,
    LocalSpool,
    Quarantined,
    Spool,
    SpoolBroken,
    SpoolBudget,
    SpoolClosed,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
)
from logferry.spool.manager import SpoolManager, decode_key, encode_key
from logferry.spool.size import format_size, parse_size

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "STORAGE_REASON",
    "Chunk",
    "LocalSpool",
    "Quarantined",
    "Spool",
    "SpoolBroken",
    "SpoolBudget",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolManager",
    "SpoolProvider",
    "decode_key",
    "encode_key",
    "format_size",
    "parse_size",
]
