"""Kinesis request building: a chunk of lines in, records out (the "request builder" role).

Records are a pure function of the log: they never span chunks (ingest requests), packing is
greedy from a chunk's first line, framing uses a pid stable per endpoint, and every partition
key names the position of the record's first line (`<name>:<position>`, packed
`<name>:<position>+<lines>`, pieces of a split line `<name>:<position>:<i>/<n>`). So a replay
from any record boundary rebuilds byte-identical records, and a consumer can drop duplicates
by key.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from logferry.sinks.framing import frame, stable_pid
from logferry.sinks.kinesis_config import KinesisEndpoint
from logferry.spool.chunk import Chunk

KEY_PREFIX_MAX = 64
KEY_RESERVE = 48
"""Bytes kept free in a packed record for the partition key after the name (":offset+lines")."""
PACKED_RECORD_BYTES = 64 * 1024


@dataclass(slots=True, eq=False)
class Unit:
    """Lines [start, end) of the log, done once all its records are accepted (a split line has
    several records; any other unit has one)."""

    start: int
    end: int
    remaining: int = 1


@dataclass(slots=True, eq=False)
class Record:
    data: bytes
    key: str
    size: int
    lines: int
    unit: Unit
    sticky: int | None = None
    oversize: bool = False
    split: bool = False
    truncated: int = 0
    attempts: int = 0


class RecordBuilder:
    """Turns chunks into records for one endpoint (see the module docstring)."""

    def __init__(
        self, endpoint: KinesisEndpoint, *, hostname: str, uid_prefix: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.hostname = hostname
        # A real pid changes on restart; a replayed record must be byte-identical.
        self.pid = stable_pid(uid_prefix or endpoint.name)
        self.key_prefix = endpoint.name[:KEY_PREFIX_MAX]
        self.key_prefix_bytes = len(self.key_prefix.encode())
        self.max_record_bytes = 1024 * 1024
        """The stream's record limit (data + key); the sink raises it when it learns more."""

    def build(self, chunk: Chunk) -> list[Record]:
        """Frame one chunk and turn its lines into records (one line each, or packed).

        Records never span chunks and packing is greedy from the chunk's first line, so the
        records a position starts are a pure function of the log: a replay from any record
        boundary rebuilds the same records, with the same keys and bytes.
        """
        out: list[Record] = []
        packer = _Packer(self, out) if self.endpoint.packing else None
        framed = frame(
            chunk.data,
            self.endpoint.format,
            hostname=self.hostname,
            service=self.endpoint.name,
            accepted_at=chunk.accepted_at,
            pid=self.pid,
        )
        lines = framed.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        originals = lines
        if framed is not chunk.data:
            originals = chunk.data.split(b"\n")
        offset = chunk.start
        for line, original in zip(lines, originals, strict=False):
            end = offset + len(original) + 1
            if packer is not None:
                packer.add(line, offset, end)
            else:
                self._single(line, offset, end, out)
            offset = end
        if packer is not None:
            packer.flush()
        return out

    def _single(self, line: bytes, offset: int, end: int, out: list[Record]) -> None:
        key = f"{self.key_prefix}:{offset}"
        size = len(line) + self.key_prefix_bytes + len(key) - len(self.key_prefix)
        if size <= self.max_record_bytes:
            out.append(Record(line, key, size, 1, Unit(offset, end)))
        else:
            self.oversize(line, offset, end, out, newline=False)

    def oversize(
        self, data: bytes, offset: int, end: int, out: list[Record], *, newline: bool
    ) -> None:
        """A line that does not fit in one record: split (default) or truncate, never silently.

        `data` includes the trailing newline when `newline` (packing mode), so that the pieces
        of a split line concatenate back to exactly what a packed record would have held.
        """
        limit = self.max_record_bytes
        if self.endpoint.oversize == "truncate":
            key = f"{self.key_prefix}:{offset}:truncated-from-{len(data)}"
            budget = limit - len(key.encode())
            kept = data[: budget - 1] + b"\n" if newline else data[:budget]
            out.append(
                Record(
                    kept,
                    key,
                    len(kept) + len(key.encode()),
                    1,
                    Unit(offset, end),
                    oversize=True,
                    truncated=len(data) - len(kept),
                )
            )
            return
        digits = len(str(len(data)))
        budget = limit - (self.key_prefix_bytes + len(f":{offset}:") + 2 * digits + 1)
        count = -(-len(data) // budget)
        sticky = zlib.crc32(b"%d" % offset)
        unit = Unit(offset, end, remaining=count)
        for i in range(count):
            piece = data[i * budget : (i + 1) * budget]
            key = f"{self.key_prefix}:{offset}:{i + 1}/{count}"
            out.append(
                Record(
                    piece,
                    key,
                    len(piece) + len(key.encode()),
                    1 if i == count - 1 else 0,
                    unit,
                    sticky=sticky,
                    oversize=i == 0,
                    split=True,
                )
            )


class _Packer:
    """Packs consecutive lines (each newline-terminated) into records up to the size limit.

    Packed records aim at PACKED_RECORD_BYTES (64 KiB), far under a shard's 1 MB/s: with
    ~1 MiB records a shard's one-second window held one record and then sat idle waiting for
    its byte budget (bench/kinesis_throughput.py: 55 % of the byte quota; 53 % with 256 KiB);
    small records let the pacer fill each window to within one record of the limit.
    """

    def __init__(self, builder: RecordBuilder, out: list[Record]) -> None:
        self._builder = builder
        self._out = out
        overhead = builder.key_prefix_bytes + KEY_RESERVE
        self._limit = builder.max_record_bytes - overhead
        self._budget = min(builder.max_record_bytes, PACKED_RECORD_BYTES) - overhead
        self._lines: list[bytes] = []
        self._size = 0
        self._first = 0
        self._end = 0

    def add(self, line: bytes, offset: int, end: int) -> None:
        size = len(line) + 1
        if size > self._limit:
            self.flush()
            self._builder.oversize(line + b"\n", offset, end, self._out, newline=True)
            return
        if self._lines and self._size + size > self._budget:
            self.flush()
        if not self._lines:
            self._first = offset
        self._lines.append(line)
        self._size += size
        self._end = end

    def flush(self) -> None:
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        key = f"{self._builder.key_prefix}:{self._first}+{len(self._lines)}"
        self._out.append(
            Record(
                data,
                key,
                len(data) + len(key.encode()),
                len(self._lines),
                Unit(self._first, self._end),
            )
        )
        self._lines = []
        self._size = 0
