"""The spool's on-disk format: file names, segment and record headers, CRCs, the commit file.

Records are `magic, crc32(fields + payload), start offset, first line, length, lines,
accepted_at` followed by the payload; the CRC covers the fields and the payload so a torn or
damaged record is always detected. Kept apart from the log's logic so a reader of the bytes
(a recovery tool, a test that damages a segment on purpose) needs only this module.
"""

from __future__ import annotations

import struct
import zlib

MAX_CHUNK_BYTES = 256 * 1024 * 1024

SEG_SUFFIX = ".seg"
CLEAN_SUFFIX = ".clean"
COMMITTED_NAME = "committed"
TMP_SUFFIX = ".tmp"

_SEG_MAGIC = b"LFSEG\x00\x00\x01"
_SEG_HDR = struct.Struct("<8sQQd")  # magic, base offset, first line number, accepted_at floor
SEG_HEADER_BYTES = 40  # _SEG_HDR + crc32 + 4 reserved bytes
_REC_MAGIC = b"LFR1"
_REC_FIELDS = struct.Struct("<QQIId")  # start offset, first line, length, lines, accepted_at
_REC_HDR = struct.Struct("<4sIQQIId")  # magic, crc32(fields + payload), fields
_REC_PREFIX = struct.Struct("<4sI")  # magic, crc: the CRC'd bytes (fields + payload) are contiguous
REC_HEADER_BYTES = _REC_HDR.size  # 40
_COMMIT = struct.Struct("<8sQQQQd")  # magic, offset, line, segment base, position, accepted floor
_COMMIT_MAGIC = b"LFCOMMIT"
_COMMIT2 = struct.Struct("<8sQQQQQQd")
"""magic, offset, line, segment base, record position, record start, record line, accepted floor:
the committed position may fall inside a record (a sink cut a file or a batch mid-request)."""
_COMMIT2_MAGIC = b"LFCOMIT2"
_CLEAN = struct.Struct("<8sQQQQd")  # magic, base, valid size, end offset, end line, last accepted
_CLEAN_MAGIC = b"LFCLEAN1"
_U32 = struct.Struct("<I")


def with_crc(payload: bytes) -> bytes:
    return payload + _U32.pack(zlib.crc32(payload))


def check_crc(blob: bytes, size: int) -> bytes | None:
    if len(blob) != size + 4 or _U32.unpack_from(blob, size)[0] != zlib.crc32(blob[:size]):
        return None
    return blob[:size]


def segment_name(base: int) -> str:
    return f"{base:020d}{SEG_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    if len(name) == 20 + len(SEG_SUFFIX) and name.endswith(SEG_SUFFIX) and name[:20].isdigit():
        return int(name[:20])
    return None


def validate_chunk_data(data: bytes, lines: int, *, scan: bool = True) -> None:
    """Enforce Chunk's contract: newline-terminated lines, no empty line, `lines` exact.

    `scan=False` keeps only the constant-time checks, for data that `ingest.lines.normalize`
    produced: it already counted the lines and removed every empty one, and the two scans here
    (`b"\n\n" in data` alone is ~1.6 ms per MiB) were a third of the event loop's GIL time
    in the bulk benchmark.
    """
    if (
        type(data) is not bytes
        or not data
        or data[-1] != 10
        or data[0] == 10
        or len(data) > MAX_CHUNK_BYTES
        or lines < 1
        or (scan and (data.count(b"\n") != lines or b"\n\n" in data))
    ):
        _explain_bad_chunk(data, lines)


def _explain_bad_chunk(data: bytes, lines: int) -> None:
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_CHUNK_BYTES:
        raise ValueError(f"chunk of {len(data)} bytes exceeds {MAX_CHUNK_BYTES}; split it")
    if not data or data[-1] != 10 or data[0] == 10 or b"\n\n" in data:
        raise ValueError("chunk data must be non-empty lines, each terminated by b'\\n'")
    counted = data.count(b"\n")
    raise ValueError(f"chunk says {lines} lines but holds {counted}")
