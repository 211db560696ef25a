"""Durable per-endpoint spool: ingest appends chunks, delivery reads and commits them."""

from logferry.spool.chunk import Chunk
from logferry.spool.log import (
    DEFAULT_SEGMENT_BYTES,
    STORAGE_REASON,
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
    "Spool",
    "SpoolBroken",
    "SpoolBudget",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolManager",
    "decode_key",
    "encode_key",
    "format_size",
    "parse_size",
]
