"""Every documented rule of logferry.ingest.lines, with exact bytes, plus the gzip limits."""

from __future__ import annotations

import gzip
import io
import random
import zlib

import pytest

from logferry.errors import InputError
from logferry.ingest.lines import (
    BadGzip,
    BodyTooLarge,
    Normalized,
    drop_partial_char,
    gunzip_limited,
    normalize,
)
from logferry.spool.log import validate_chunk_data

FFFD = "\ufffd".encode()


def norm(body: bytes, max_line_bytes: int = 1024) -> Normalized:
    result = normalize(body, max_line_bytes=max_line_bytes)
    assert result.lines == result.data.count(b"\n")
    if result.lines:
        validate_chunk_data(result.data, result.lines)  # the spool's own contract check
    else:
        assert result.data == b""
    return result


# -- the fast path -------------------------------------------------------------------------------


def test_clean_body_passes_through_unchanged() -> None:
    body = b"first line\nsecond line\n" * 1000
    result = norm(body)
    assert result.data is body  # no copy, no per-line work
    assert (result.lines, result.empty_skipped, result.truncated, result.invalid_utf8) == (
        2000,
        0,
        0,
        0,
    )
    assert result.crlf is False


def test_clean_utf8_passes_through() -> None:
    body = "ünïcödé ✓ 🚀\nzweite Zeile\n".encode()
    result = norm(body)
    assert result.data == body
    assert result.invalid_utf8 == 0


def test_empty_body() -> None:
    assert norm(b"") == Normalized(b"", 0)


# -- rule 3: last line without newline -------------------------------------------------------------


def test_final_line_without_newline_is_accepted() -> None:
    result = norm(b"a\nb")
    assert result.data == b"a\nb\n"
    assert result.lines == 2


def test_single_line_without_newline() -> None:
    assert norm(b"only").data == b"only\n"


# -- rule 2: empty lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "data", "empty"),
    [
        (b"\n", b"", 1),
        (b"\n\n\n", b"", 3),
        (b"a\n\nb\n", b"a\nb\n", 1),
        (b"a\n\n\n\n\nb\n", b"a\nb\n", 4),
        (b"\n\na\n", b"a\n", 2),
        (b"a\n\n", b"a\n", 1),
        (b"a\n\n\n", b"a\n", 2),
        (b"a\n\nb", b"a\nb\n", 1),
        (b"\n" * 1000 + b"x", b"x\n", 1000),
    ],
)
def test_empty_lines_are_skipped_and_counted(body: bytes, data: bytes, empty: int) -> None:
    result = norm(body)
    assert result.data == data
    assert result.empty_skipped == empty


def test_whitespace_only_lines_are_kept() -> None:
    result = norm(b" \n\t\na\n")
    assert result.data == b" \n\t\na\n"
    assert result.empty_skipped == 0
    assert result.lines == 3


# -- rule 1: CR ------------------------------------------------------------------------------------


def test_crlf_line_ends_become_lf() -> None:
    result = norm(b"a\r\nb\r\n")
    assert result.data == b"a\nb\n"
    assert result.crlf is True


def test_crlf_empty_lines_are_empty() -> None:
    result = norm(b"a\r\n\r\n\r\nb\r\n")
    assert result.data == b"a\nb\n"
    assert result.empty_skipped == 2
    assert result.crlf is True


def test_cr_at_the_very_end_is_removed() -> None:
    result = norm(b"a\r\nb\r")
    assert result.data == b"a\nb\n"
    assert result.crlf is True


def test_lone_cr_is_data() -> None:
    result = norm(b"a\rb\n")
    assert result.data == b"a\rb\n"
    assert result.crlf is False
    assert result.lines == 1


def test_every_cr_before_lf_is_removed() -> None:
    assert norm(b"a\r\r\nb\r\r\r").data == b"a\nb\n"
    assert norm(b"a\r\rb\n").data == b"a\r\rb\n"
    assert norm(b"a\r\r\r\r\r\r\r\nb\r\nc\rd\r\r\r\r\n").data == b"a\nb\nc\rd\n"  # long runs


def test_cut_does_not_leave_a_cr_at_the_end() -> None:
    result = norm(b"abc\r\rdefgh\n\r\r\r\r\r\rx\nok\n", 5)
    assert result.data == b"abc\nok\n"  # "\r"*6+"x" cut to 5 CRs: nothing left
    assert result.truncated == 2


def test_cr_only_line_is_empty() -> None:
    result = norm(b"\r\na\n\r")
    assert result.data == b"a\n"
    assert result.empty_skipped == 2


# -- rule 4: invalid UTF-8 -------------------------------------------------------------------------


def test_invalid_utf8_is_replaced_and_counted_per_line() -> None:
    result = norm(b"ok\n\xffbad\xfe\nfine\n\xc3\n")
    assert result.data == b"ok\n" + FFFD + b"bad" + FFFD + b"\nfine\n" + FFFD + b"\n"
    assert result.invalid_utf8 == 2  # lines 2 and 4


def test_invalid_utf8_uses_maximal_subparts_like_python() -> None:
    # A truncated 3-byte sequence is one replacement; an impossible lead byte is one each.
    assert norm(b"\xe2\x82x\n").data == FFFD + b"x\n"
    assert norm(b"\xf0\x80\x80\n").data == FFFD * 3 + b"\n"
    assert norm(b"\xed\xa0\x80\n").data == FFFD * 3 + b"\n"  # an encoded surrogate


def test_invalid_utf8_at_the_end_without_newline() -> None:
    result = norm(b"a\nb\xe2\x82")
    assert result.data == b"a\nb" + FFFD + b"\n"
    assert result.invalid_utf8 == 1


# -- rule 5: over-long lines -----------------------------------------------------------------------


def test_long_line_is_cut_to_the_limit() -> None:
    result = norm(b"0123456789\nshort\n", 8)
    assert result.data == b"01234567\nshort\n"
    assert result.truncated == 1


def test_line_of_exactly_the_limit_is_kept() -> None:
    result = norm(b"01234567\n01234567", 8)
    assert result.data == b"01234567\n01234567\n"
    assert result.truncated == 0


def test_cut_never_splits_a_character() -> None:
    # "abcdé": é is 2 bytes at offsets 4-5; a 5-byte cut would split it.
    assert norm("abcdé\n".encode(), 5).data == b"abcd\n"
    assert norm("abcdé\n".encode(), 6).data == "abcdé\n".encode()
    # 🚀 is 4 bytes at offsets 1-4.
    assert norm("x🚀yz\n".encode(), 4).data == b"x\n"
    assert norm("x🚀yz\n".encode(), 5).data == "x🚀\n".encode()


def test_limit_applies_after_the_utf8_repair() -> None:
    # 4 bytes in, but each bad byte becomes 3 bytes: 12 bytes > 8.
    result = norm(b"\xff\xff\xff\xff\n", 8)
    assert result.data == FFFD * 2 + b"\n"
    assert (result.invalid_utf8, result.truncated) == (1, 1)


def test_last_line_without_newline_is_cut_too() -> None:
    result = norm(b"ok\n" + b"z" * 100, 10)
    assert result.data == b"ok\n" + b"z" * 10 + b"\n"
    assert result.truncated == 1


def test_many_long_lines_among_short_ones() -> None:
    body = b"".join(
        (b"L" * (50 + i) if i % 3 == 0 else b"s" * (i % 7 + 1)) + b"\n" for i in range(300)
    )
    result = norm(body, 48)
    expected = b"".join(
        (b"L" * 48 if i % 3 == 0 else b"s" * (i % 7 + 1)) + b"\n" for i in range(300)
    )
    assert result.data == expected
    assert result.truncated == 100


def test_minimum_limit() -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        normalize(b"a\n", max_line_bytes=3)


def test_bytearray_and_memoryview_bodies() -> None:
    assert norm(bytearray(b"a\r\nb")).data == b"a\nb\n"
    assert norm(memoryview(b"a\n\nb")).data == b"a\nb\n"  # type: ignore[arg-type]


# -- all rules together, against an independent line-by-line reference ----------------------------


def reference(body: bytes, limit: int) -> Normalized:
    """The rules written the slow, obvious way: one line at a time."""
    parts = body.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()  # body ended with LF: no final unterminated line
    out: list[bytes] = []
    empty = truncated = invalid = 0
    crlf = False
    for raw in parts:
        if raw.endswith(b"\r"):
            raw = raw.rstrip(b"\r")
            crlf = True
        if not raw:
            empty += 1
            continue
        text = raw.decode("utf-8", "replace")
        if text.encode() != raw:
            invalid += 1
        kept = ""
        for ch in text:
            if len((kept + ch).encode()) > limit:
                truncated += 1
                break
            kept += ch
        else:
            out.append(kept.encode() + b"\n")
            continue
        kept = kept.rstrip("\r")
        if kept:
            out.append(kept.encode() + b"\n")
    data = b"".join(out)
    return Normalized(data, len(out), empty, truncated, invalid, crlf)


ALPHABET = [
    b"a",
    b"b",
    b" ",
    b"\n",
    b"\n",
    b"\r",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"\xf0\x9f\x9a\x80",
]
ALPHABET += [b"\xff", b"\xc3", b"\x80", b"\xe2\x82", b"\x00", b"xyz" * 5]


@pytest.mark.parametrize("seed", range(300))
def test_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    body = b"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 200)))
    limit = rng.choice([4, 5, 7, 16, 64, 1024])
    assert norm(body, limit) == reference(body, limit)


@pytest.mark.parametrize("seed", range(20))
def test_normalized_data_is_a_fixed_point(seed: int) -> None:
    rng = random.Random(seed)
    body = b"".join(rng.choice(ALPHABET) for _ in range(500))
    once = norm(body, 16)
    again = norm(once.data, 16)
    assert again == Normalized(once.data, once.lines)


def test_drop_partial_char() -> None:
    assert drop_partial_char("abé".encode()[:3]) == b"ab"  # é cut after its lead byte
    assert drop_partial_char("abé".encode()) == "abé".encode()
    assert drop_partial_char("a🚀".encode()[:4]) == b"a"
    assert drop_partial_char(b"ab\xff") == b"ab\xff"  # invalid stays for the repair rule
    assert drop_partial_char(b"") == b""


# -- gzip ------------------------------------------------------------------------------------------


def test_gunzip_single_member() -> None:
    assert gunzip_limited(gzip.compress(b"a\nb\n"), 100) == b"a\nb\n"


def test_gunzip_multi_member_and_padding() -> None:
    body = gzip.compress(b"one\n") + gzip.compress(b"two\n") + b"\x00" * 8
    assert gunzip_limited(body, 100) == b"one\ntwo\n"


def test_gunzip_header_with_file_name() -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="access.log", mode="wb", fileobj=buf, mtime=1) as gz:
        gz.write(b"line\n")
    assert gunzip_limited(buf.getvalue(), 100) == b"line\n"


def test_gunzip_empty_body() -> None:
    assert gunzip_limited(b"", 10) == b""


def test_gunzip_exactly_at_the_limit() -> None:
    assert gunzip_limited(gzip.compress(b"x" * 1000), 1000) == b"x" * 1000


def test_gunzip_over_the_limit() -> None:
    with pytest.raises(BodyTooLarge) as err:
        gunzip_limited(gzip.compress(b"x" * 1000), 999)
    assert err.value.limit == 999
    assert isinstance(err.value, InputError)
    assert "999-byte limit" in str(err.value)


def test_gunzip_over_the_limit_across_members() -> None:
    with pytest.raises(BodyTooLarge):
        gunzip_limited(gzip.compress(b"x" * 600) + gzip.compress(b"y" * 600), 1000)


def test_gunzip_bomb_stops_early() -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = comp.compress(b"\0" * (64 << 20)) + comp.flush()
    assert len(bomb) < 100_000
    with pytest.raises(BodyTooLarge):
        gunzip_limited(bomb, 1 << 20)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"plain text\n", "magic 1f 8b"),
        (gzip.compress(b"hello world\n", mtime=0)[:-4], "truncated"),
        (gzip.compress(b"hello world\n", mtime=0)[:12], "truncated"),
        (gzip.compress(b"hello\n", mtime=0) + b"junk", "trailing bytes"),
    ],
    ids=["not-gzip", "no-trailer", "cut-in-deflate", "trailing-junk"],
)
def test_bad_gzip(body: bytes, message: str) -> None:
    with pytest.raises(BadGzip, match=message) as err:
        gunzip_limited(body, 1000)
    assert err.value.fix and "gzip" in err.value.fix


def test_bad_gzip_checksum() -> None:
    good = bytearray(gzip.compress(b"hello world\n" * 50))
    good[-5] ^= 0xFF  # CRC32 of the member
    with pytest.raises(BadGzip, match="corrupt in member 1"):
        gunzip_limited(bytes(good), 10_000)


@pytest.mark.parametrize("window", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_repair_is_the_same_whatever_the_window(window: int, monkeypatch) -> None:
    """The repair works per window (bounded C calls); windows must never change the result."""
    from logferry.ingest import lines as module

    monkeypatch.setattr(module, "REPAIR_WINDOW", window)
    rng = random.Random(window)
    alphabet = [
        b"a",
        b"\n",
        b"\x00",
        b"\xff",
        b"\xc3",
        b"\xa9",
        b"\xe2\x82\xac",
        b"\xe2\x82",
        b"\xf0\x9f\x98\x80",
        b"\xf0\x9f",
        b"\xef\xbf\xbd",
        b"\xed\xb2\x80",
        b"\x80",
    ]
    for _ in range(200):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) + b"\n"
        data, count = module._repair_utf8(body)
        assert data == body.decode("utf-8", "replace").encode()
        expected = 0
        for line in body.split(b"\n"):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                expected += 1
        assert count == expected, body


def test_worst_case_bodies_normalise_to_valid_lines() -> None:
    """All-invalid, all-newline and one-giant-line bodies: right counts, valid UTF-8, cut."""
    size = 1 << 20
    bad = normalize(b"\xff" * size, max_line_bytes=1024)
    assert (bad.lines, bad.invalid_utf8, bad.truncated) == (1, 1, 1)
    assert bad.data == "\ufffd".encode() * 341 + b"\n"
    lines = normalize(b"\xff\n" * (size // 2), max_line_bytes=1024)
    assert (lines.lines, lines.invalid_utf8) == (size // 2, size // 2)
    empty = normalize(b"\n" * size, max_line_bytes=1024)
    assert (empty.data, empty.lines, empty.empty_skipped) == (b"", 0, size)
    giant = normalize(b"a" * size, max_line_bytes=1024)
    assert (giant.data, giant.truncated) == (b"a" * 1024 + b"\n", 1)
