"""Codecs: every member decodes alone and as part of a concatenated file, with our decoders and
with the real command-line tools a customer would use (gzip -d, zstd -d)."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import cramjam
import pytest
import zstandard

from logferry.errors import InputError
from logferry.sinks.codecs import (
    CODEC_NAMES,
    Codec,
    CodecChoice,
    GzipCodec,
    NoneCodec,
    get_codec,
    gzip_backend,
    resolve_codec,
)

GZIP = shutil.which("gzip")
ZSTD = shutil.which("zstd")


def _lines(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    paths = ["/", "/index.html", "/api/v1/items", "/static/app.js", "/img/logo.png"]
    agents = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64)", "Go-http-client/1.1"]
    out = []
    for i in range(n):
        out.append(
            f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)} - - "
            f'[04/Jul/2016:22:37:{i % 60:02d} +0000] "GET {rng.choice(paths)}'
            f'?id={rng.randrange(10**6)} HTTP/1.1" {rng.choice([200, 200, 200, 304, 404])} '
            f'{rng.randrange(10**5)} "-" '
            f'"{rng.choice(agents)}" \u00e9t\u00e9\n'
        )
    return "".join(out).encode()


PART_A = _lines(3000, 1)
PART_B = _lines(50, 2)
PART_C = _lines(4000, 3)

ALL_CODECS: list[tuple[str, int | None]] = [
    ("none", None),
    *[("gzip", lv) for lv in range(10)],
    ("gzip", None),
    ("zstd", None),
    ("zstd", 1),
    ("zstd", 19),
    ("snappy", None),
]


def _id(p: tuple[str, int | None]) -> str:
    return f"{p[0]}-{p[1]}"


@pytest.fixture(params=ALL_CODECS, ids=_id)
def codec(request: pytest.FixtureRequest) -> Codec:
    name, level = request.param
    return get_codec(name, level)


def test_member_round_trip(codec: Codec) -> None:
    member = codec.compress(PART_A)
    assert codec.decompress(member) == PART_A
    if codec.name != "none":
        assert len(member) < len(PART_A) or codec.level == 0


def test_concatenated_members_decode_to_concatenated_input(codec: Codec) -> None:
    members = [codec.compress(p) for p in (PART_A, b"", PART_B, PART_C)]
    assert codec.decompress(b"".join(members)) == PART_A + PART_B + PART_C


def test_compression_is_deterministic(codec: Codec) -> None:
    # Replaying a chunk after a crash must rebuild byte-identical parts.
    assert codec.compress(PART_B) == codec.compress(PART_B)


def test_compress_is_thread_safe(codec: Codec) -> None:
    inputs = [_lines(300 + 37 * i, 100 + i) for i in range(16)]
    results: dict[int, bytes] = {}
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        barrier.wait()
        for i in range(worker, len(inputs), 8):
            for _ in range(3):
                results[i] = codec.compress(inputs[i])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, data in enumerate(inputs):
        assert codec.decompress(results[i]) == data


@pytest.mark.parametrize(
    ("name", "level", "suffix", "content_type"),
    [
        ("none", None, "", "text/plain; charset=utf-8"),
        ("gzip", 3, ".gz", "application/gzip"),
        ("zstd", 3, ".zst", "application/zstd"),
        ("snappy", None, ".snappy", "application/x-snappy-framed"),
    ],
)
def test_object_metadata(name: str, level: int | None, suffix: str, content_type: str) -> None:
    c = get_codec(name)
    assert (c.name, c.level, c.suffix, c.content_type) == (name, level, suffix, content_type)
    assert c.content_encoding is None


def test_none_codec_returns_its_input_without_copying() -> None:
    assert get_codec("none").compress(PART_A) is PART_A


def test_gzip_without_level_is_level_3() -> None:
    assert get_codec("gzip") == GzipCodec(3)
    assert get_codec("GZIP ").level == 3


def test_gzip_levels_trade_speed_for_size() -> None:
    sizes = {lv: len(get_codec("gzip", lv).compress(PART_C)) for lv in (0, 1, 3, 6, 9)}
    assert sizes[0] > len(PART_C)  # stored blocks: valid gzip, no compression
    assert sizes[9] < sizes[6] < sizes[3] < sizes[1] < sizes[0]


def test_gzip_level_mapping_is_the_documented_one() -> None:
    assert gzip_backend(1) == ("isal", 1)
    assert gzip_backend(2) == ("isal", 2)
    lib3, lvl3 = gzip_backend(3)
    assert lib3 in ("zlib-ng", "zlib") and lvl3 == 3
    assert gzip_backend(9)[1] == 8


def test_codec_choice_builds_the_codec() -> None:
    assert CodecChoice("zstd", 5).build().level == 5
    assert CodecChoice("snappy").build().name == "snappy"


# --- interop with the real tools ------------------------------------------------------------


def _run(tool: str, *args: str, data: bytes) -> bytes:
    proc = subprocess.run([tool, *args], input=data, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


@pytest.mark.skipif(GZIP is None, reason="gzip binary not installed")
@pytest.mark.parametrize("level", range(10))
def test_gzip_d_reads_multi_member_files(level: int) -> None:
    c = get_codec("gzip", level)
    blob = b"".join(c.compress(p) for p in (PART_A, PART_B, b"", PART_C))
    assert _run(GZIP, "-dc", data=blob) == PART_A + PART_B + PART_C


@pytest.mark.skipif(GZIP is None, reason="gzip binary not installed")
def test_gzip_d_reads_members_from_different_backends(tmp_path: Path) -> None:
    # A file whose endpoint changed gzip_level mid-way mixes ISA-L and zlib-ng members.
    blob = b"".join(get_codec("gzip", lv).compress(p) for lv, p in ((1, PART_A), (6, PART_B)))
    path = tmp_path / "mixed.log.gz"
    path.write_bytes(blob)
    subprocess.run([GZIP, "-t", str(path)], check=True, timeout=60)
    subprocess.run([GZIP, "-d", str(path)], check=True, timeout=60)
    assert (tmp_path / "mixed.log").read_bytes() == PART_A + PART_B


@pytest.mark.skipif(ZSTD is None, reason="zstd binary not installed")
@pytest.mark.parametrize("level", [1, 3, 19])
def test_zstd_d_reads_multi_frame_files(level: int) -> None:
    c = get_codec("zstd", level)
    blob = b"".join(c.compress(p) for p in (PART_A, PART_B, b"", PART_C))
    assert _run(ZSTD, "-dc", data=blob) == PART_A + PART_B + PART_C


def test_zstd_members_carry_content_size() -> None:
    member = get_codec("zstd").compress(PART_B)
    assert zstandard.frame_content_size(member) == len(PART_B)


def test_zstd_decompress_reads_every_frame() -> None:
    # zstandard's own one-shot decompress() stops after the first frame; ours must not.
    c = get_codec("zstd")
    blob = c.compress(PART_A) + c.compress(PART_B)
    assert zstandard.ZstdDecompressor().decompress(blob) == PART_A
    assert c.decompress(blob) == PART_A + PART_B


# --- snappy: check the framing format itself, independently of cramjam's framed decoder ------


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _parse_snappy_framed(blob: bytes) -> bytes:
    """Decode per https://github.com/google/snappy/blob/main/framing_format.txt."""
    out = bytearray()
    pos = 0
    seen_identifier = False
    while pos < len(blob):
        kind = blob[pos]
        length = int.from_bytes(blob[pos + 1 : pos + 4], "little")
        body = blob[pos + 4 : pos + 4 + length]
        assert len(body) == length, "truncated chunk"
        pos += 4 + length
        if kind == 0xFF:
            assert body == b"sNaPpY"
            seen_identifier = True
            continue
        assert seen_identifier, "data chunk before the stream identifier"
        (crc,) = struct.unpack("<I", body[:4])
        if kind == 0x00:
            payload = bytes(cramjam.snappy.decompress_raw(body[4:]))
        elif kind == 0x01:
            payload = body[4:]
        else:
            raise AssertionError(f"unexpected chunk type {kind:#x}")
        assert len(payload) <= 65536
        assert crc == _masked_crc(payload)
        out += payload
    return bytes(out)


def test_snappy_members_use_the_framing_format() -> None:
    c = get_codec("snappy")
    small_a, small_b = PART_A[:70_000], PART_B
    member = c.compress(small_a)
    assert member.startswith(b"\xff\x06\x00\x00sNaPpY")
    blob = member + c.compress(small_b)
    assert _parse_snappy_framed(blob) == small_a + small_b


# --- endpoint field semantics and errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("compression_codec", "gzip_level", "expected"),
    [
        (None, None, ("none", None)),
        (None, 0, ("none", None)),
        (None, 1, ("gzip", 1)),
        (None, 9, ("gzip", 9)),
        ("gzip", None, ("gzip", 3)),
        ("gzip", 0, ("gzip", 3)),
        ("zstd", None, ("zstd", 3)),
        ("snappy", 0, ("snappy", None)),
        ("", None, ("none", None)),
    ],
)
def test_resolve_codec_follows_fastly_fields(
    compression_codec: str | None, gzip_level: int | None, expected: tuple[str, int | None]
) -> None:
    c = resolve_codec(compression_codec=compression_codec, gzip_level=gzip_level)
    assert (c.name, c.level) == expected


def test_resolve_codec_rejects_both_fields() -> None:
    with pytest.raises(InputError) as err:
        resolve_codec(compression_codec="zstd", gzip_level=5)
    assert err.value.where == "gzip_level"
    assert "compression_codec" in err.value.message


@pytest.mark.parametrize("level", [-1, 10, 100, True, "3", 3.0])
def test_bad_gzip_level_names_the_field(level: object) -> None:
    with pytest.raises(InputError) as err:
        get_codec("gzip", level)  # type: ignore[arg-type]
    assert err.value.where == "gzip_level"
    assert "0 to 9" in str(err.value)
    with pytest.raises(InputError) as err2:
        resolve_codec(gzip_level=level)  # type: ignore[arg-type]
    assert err2.value.where == "gzip_level"


@pytest.mark.parametrize("name", ["bzip2", "lz4", "", "gz", "zstandard"])
def test_unknown_codec_names_the_field(name: str) -> None:
    with pytest.raises(InputError) as err:
        get_codec(name)
    assert err.value.where == "compression_codec"
    assert "gzip, zstd, snappy" in str(err.value)
    if name:
        with pytest.raises(InputError) as err2:
            resolve_codec(compression_codec=name)
        assert err2.value.where == "compression_codec"


@pytest.mark.parametrize(("name", "level"), [("snappy", 1), ("none", 3), ("zstd", 0), ("zstd", 23)])
def test_level_not_valid_for_codec(name: str, level: int) -> None:
    with pytest.raises(InputError) as err:
        get_codec(name, level)
    assert err.value.where == "compression_codec"


def test_codec_names_are_complete() -> None:
    assert {get_codec(n).name for n in CODEC_NAMES} == set(CODEC_NAMES)
    assert isinstance(get_codec("none"), NoneCodec)
