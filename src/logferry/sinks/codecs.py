"""Compression codecs for S3 files.

Every codec compresses one *member* at a time: concatenated members are a valid file for
`gzip -d`, `zstd -d` and framed-snappy readers, which is what lets the S3 sink upload each
multipart part as an independent member and resume after a crash without compressor state.
Members are deterministic (gzip mtime 0, no file name), so replaying the same bytes after a crash
produces the same object bytes.

Levels follow Fastly: `gzip_level` 1 (fastest) … 9 (smallest); `compression_codec = "gzip"`
means level 3; `zstd` defaults to level 3; snappy has no level. Use `resolve_codec` for the
endpoint fields (it knows that `gzip_level = 0` means "no compression" and that the two fields
exclude each other) and `get_codec` when the codec and level are already decided.

Every `compress` is safe to call from several threads at once: gzip and snappy call stateless
one-shot functions (which release the GIL), zstd keeps one compressor context per thread.
"""

from __future__ import annotations

import io
import threading
import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, cast

import cramjam
import zstandard
from isal import igzip, isal_zlib

from logferry.errors import InputError

_deflate_lib: types.ModuleType
try:  # Optional but recommended: used for gzip levels 0 and 3-9 (see the measurements below).
    from zlib_ng import zlib_ng as _deflate_lib
except ImportError:  # pragma: no cover - exercised only where zlib-ng is not installed
    _deflate_lib = zlib
_DEFLATE_NAME: Final = "zlib" if _deflate_lib is zlib else "zlib-ng"

CodecName = Literal["none", "gzip", "zstd", "snappy"]
CODEC_NAMES: Final[tuple[str, ...]] = ("none", "gzip", "zstd", "snappy")
COMPRESSION_CODECS: Final[tuple[str, ...]] = ("gzip", "zstd", "snappy")  # Fastly's values
DEFAULT_GZIP_LEVEL: Final = 3  # Fastly: compression_codec "gzip" == gzip_level 3
DEFAULT_ZSTD_LEVEL: Final = 3
ZSTD_MAX_LEVEL: Final = zstandard.MAX_COMPRESSION_LEVEL  # 22

# Gzip library by measurement (bench/results/codecs.json: 64 MiB access log, 1 MiB members):
# ISA-L L1/L2 ≈1,050 MB/s at ratio 7.8-7.9 vs stdlib zlib L1 ≈170 MB/s at 7.6, so levels 1-2 use
# ISA-L; ISA-L's best ratio (L3: 8.1) is below zlib L3 (8.5), so levels 3-8 use zlib-ng at the
# same level, 1.6-2.2x zlib's speed at an equal or better ratio (L3 ≈310 MB/s at 8.8 vs zlib
# ≈155 MB/s at 8.5); level 9 uses zlib-ng 8, which beat zlib-ng 9 in ratio *and* speed on every
# log shape measured (access, JSON, syslog). Level 0 is stored (uncompressed) deflate.
_GZIP_LEVELS: Final[dict[int, tuple[str, int]]] = {
    0: (_DEFLATE_NAME, 0),
    1: ("isal", 1),
    2: ("isal", 2),
    **{lv: (_DEFLATE_NAME, lv) for lv in range(3, 9)},
    9: (_DEFLATE_NAME, 8),
}
GZIP_BACKEND: Final = f"isal (gzip_level 1-2), {_DEFLATE_NAME} (gzip_level 0, 3-9)"


def gzip_backend(level: int) -> tuple[str, int]:
    """(library, library level) used for Fastly `gzip_level` `level`."""
    _check_gzip_level(level)
    return _GZIP_LEVELS[level]


class Codec(Protocol):
    """What a sink needs of a codec. Members are read-only properties so the frozen dataclasses
    below match it (a plain annotation would ask for settable attributes)."""

    @property
    def name(self) -> str:
        """One of none, gzip, zstd, snappy."""
        ...

    @property
    def suffix(self) -> str:
        """The object name's suffix: empty, .gz, .zst or .snappy."""
        ...

    @property
    def content_type(self) -> str:
        """Content-Type of the object."""
        ...

    @property
    def content_encoding(self) -> str | None:
        """Content-Encoding header (always None: see GzipCodec)."""
        ...

    @property
    def level(self) -> int | None:
        """The codec's level (None for none / snappy)."""
        ...

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

    def build(self) -> Codec:
        return get_codec(self.name, self.level)


@dataclass(frozen=True, slots=True)
class NoneCodec:
    """Plain newline-delimited text; `compress` returns its input (no copy)."""

    name: str = field(default="none", init=False)
    suffix: str = field(default="", init=False)
    content_type: str = field(default="text/plain; charset=utf-8", init=False)
    content_encoding: str | None = field(default=None, init=False)
    level: int | None = field(default=None, init=False)

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes) -> bytes:
        return data


@dataclass(frozen=True, slots=True)
class GzipCodec:
    """RFC 1952 members; `level` is Fastly's gzip_level (0-9)."""

    level: int = DEFAULT_GZIP_LEVEL
    name: str = field(default="gzip", init=False)
    suffix: str = field(default=".gz", init=False)
    content_type: str = field(default="application/gzip", init=False)
    # No Content-Encoding: curl, browsers and some SDKs would inflate the .gz (fluent-bit#3676).
    content_encoding: str | None = field(default=None, init=False)
    _compress: Callable[[bytes], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_gzip_level(self.level)
        lib, lib_level = gzip_backend(self.level)
        mod = isal_zlib if lib == "isal" else _deflate_lib

        def compress(data: bytes, _c: Callable[..., bytes] = mod.compress) -> bytes:
            return _c(data, lib_level, wbits=31)  # wbits 31: gzip header + trailer, mtime 0

        object.__setattr__(self, "_compress", compress)

    @property
    def backend(self) -> str:
        lib, lib_level = gzip_backend(self.level)
        return f"{lib}-{lib_level}"

    def compress(self, data: bytes) -> bytes:
        return self._compress(data)

    def decompress(self, data: bytes) -> bytes:
        # reads every member, like gzip -d; igzip is unannotated (pyproject: untyped_calls_exclude)
        return cast(bytes, igzip.decompress(data))


_zstd_local = threading.local()


@dataclass(frozen=True, slots=True)
class ZstdCodec:
    """Zstandard frames with content size and checksum; one compressor context per thread."""

    level: int = DEFAULT_ZSTD_LEVEL
    name: str = field(default="zstd", init=False)
    suffix: str = field(default=".zst", init=False)
    content_type: str = field(default="application/zstd", init=False)
    content_encoding: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int):
            raise InputError(
                "compression_codec", f"zstd level must be an integer, got {self.level!r}."
            )
        if not 1 <= self.level <= ZSTD_MAX_LEVEL:
            raise InputError(
                "compression_codec",
                f"zstd level must be from 1 to {ZSTD_MAX_LEVEL}, got {self.level}.",
                fix=f"Use the default ({DEFAULT_ZSTD_LEVEL}) unless you measured otherwise.",
            )

    def _cctx(self) -> zstandard.ZstdCompressor:
        # ZstdCompressor is not thread-safe (sharing one segfaulted the benchmark), and a new one
        # per call costs ~14 µs vs ~2 µs reused on a 100-byte member: keep one per thread + level.
        cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_zstd_local, "cctx", None)
        if cache is None:
            cache = _zstd_local.cctx = {}
        cctx = cache.get(self.level)
        if cctx is None:
            cctx = cache[self.level] = zstandard.ZstdCompressor(
                level=self.level, write_content_size=True, write_checksum=True
            )
        return cctx

    def compress(self, data: bytes) -> bytes:
        return self._cctx().compress(data)

    def decompress(self, data: bytes) -> bytes:
        # ZstdDecompressor.decompress() silently stops after the first frame: read across frames.
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            return reader.read()


@dataclass(frozen=True, slots=True)
class SnappyCodec:
    """Snappy *framing format* (stream identifier + CRC32C-checked chunks), not raw snappy:
    only the framed format lets concatenated members decode as one stream."""

    name: str = field(default="snappy", init=False)
    suffix: str = field(default=".snappy", init=False)
    content_type: str = field(default="application/x-snappy-framed", init=False)
    content_encoding: str | None = field(default=None, init=False)
    level: int | None = field(default=None, init=False)

    def compress(self, data: bytes) -> bytes:
        return bytes(cramjam.snappy.compress(data))  # cramjam.snappy.compress is the framed format

    def decompress(self, data: bytes) -> bytes:
        return bytes(cramjam.snappy.decompress(data))


def _check_gzip_level(level: object) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise InputError(
            "gzip_level",
            f"must be an integer from 0 to 9, got {level!r}.",
            fix="Use 1 (fastest) to 9 (smallest files); compression_codec gzip means 3.",
        )


def get_codec(name: object, level: int | None = None) -> Codec:
    """The codec `name` at `level` (None → the codec's default).

    Raises InputError naming `compression_codec` for an unknown name (or a level on a codec
    without levels) and `gzip_level` for a bad gzip level.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "gzip":
        return GzipCodec(DEFAULT_GZIP_LEVEL if level is None else level)
    if key == "zstd":
        return ZstdCodec(DEFAULT_ZSTD_LEVEL if level is None else level)
    if key in ("snappy", "none"):
        if level is not None:
            raise InputError(
                "compression_codec",
                f"{key} has no compression level (got level {level!r}).",
                fix="Leave the level unset.",
            )
        return SnappyCodec() if key == "snappy" else NoneCodec()
    raise InputError(
        "compression_codec",
        f"unknown codec {name!r}.",
        fix=f"Use one of: {', '.join(COMPRESSION_CODECS)} (or leave it unset for no compression).",
    )


def resolve_codec(*, compression_codec: str | None = None, gzip_level: int | None = None) -> Codec:
    """The codec for an endpoint's Fastly fields.

    As at Fastly: `gzip_level` 0 (or unset) with no `compression_codec` means no compression;
    `gzip_level` 1-9 means gzip at that level; `compression_codec` gzip means gzip_level 3; setting
    a codec and a non-zero gzip_level together is an error.
    """
    if gzip_level is not None:
        _check_gzip_level(gzip_level)
    if compression_codec is None or compression_codec == "":
        return GzipCodec(gzip_level) if gzip_level else NoneCodec()
    if gzip_level:
        raise InputError(
            "gzip_level",
            f"cannot be combined with compression_codec {compression_codec!r}.",
            fix="Set either compression_codec or gzip_level, not both (compression_codec gzip "
            "equals gzip_level 3).",
        )
    return get_codec(compression_codec)
