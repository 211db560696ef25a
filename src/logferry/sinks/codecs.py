"""Compression codecs for S3 files. (Interface stub; filled in by the codecs work.)

Every codec compresses one *member* at a time: concatenated members are a valid file for
`gzip -d`, `zstd -d` and framed-snappy readers, which is what lets the S3 sink upload each
multipart part as an independent member and resume after a crash without compressor state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Codec(Protocol):
    name: str            # "none" | "gzip" | "zstd" | "snappy"
    suffix: str          # "" | ".gz" | ".zst" | ".snappy"
    content_type: str    # Content-Type of the object
    content_encoding: str | None  # Content-Encoding header (gzip → "gzip"; else None)

    def compress(self, data: bytes) -> bytes:
        """One complete, independently decodable member."""
        ...

    def decompress(self, data: bytes) -> bytes:
        """Decode a whole file (all concatenated members); used by tests and tools."""
        ...


@dataclass(frozen=True)
class CodecChoice:
    name: str
    level: int | None = None


def get_codec(name: str, level: int | None = None) -> Codec:
    raise NotImplementedError
