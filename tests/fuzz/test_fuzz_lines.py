"""Property tests for line normalisation and the gzip body decoder (no network)."""

from __future__ import annotations

import gzip
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.ingest.lines import BadGzip, BodyTooLarge, gunzip_limited, normalize
from logferry.service.ingest_body import BodyRefused, decode_body

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

messy = st.one_of(
    st.binary(max_size=2000),
    st.lists(
        st.sampled_from(
            [b"a", b"\xc3\xa9", b"\xff", b"\xe2\x82", b"\r", b"\n", b"\r\n", b"\0", b" "]
        ),
        max_size=400,
    ).map(b"".join),
)


@FUZZ
@given(body=messy, limit=st.integers(4, 300))
def test_normalize_always_yields_valid_bounded_lines(body: bytes, limit: int) -> None:
    norm = normalize(body, max_line_bytes=limit)
    data = norm.data
    data.decode("utf-8")  # rule 4: always valid UTF-8
    assert norm.lines == data.count(b"\n")
    assert not data or data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert all(lines), "an empty line was kept"
    assert all(len(line) <= limit for line in lines)
    assert not any(line.endswith(b"\r") for line in lines)
    # Output bounded: U+FFFD (3 bytes) replaces at least one byte; one newline may be added.
    assert len(data) <= 3 * len(body) + 1
    # Idempotent: normalised lines are left alone.
    again = normalize(data, max_line_bytes=limit)
    assert (again.data, again.truncated, again.invalid_utf8, again.empty_skipped) == (data, 0, 0, 0)


@FUZZ
@given(
    lines=st.lists(
        st.text(
            st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
            min_size=1,
            max_size=60,
        ),
        max_size=50,
    )
)
def test_clean_lines_round_trip_unchanged(lines: list[str]) -> None:
    body = "".join(f"{line}\n" for line in lines).encode()
    norm = normalize(body, max_line_bytes=256)
    assert norm.data == body and norm.lines == len(lines)


@FUZZ
@given(data=st.binary(max_size=5000), limit=st.integers(0, 6000), level=st.integers(0, 9))
def test_gunzip_round_trips_or_refuses_over_the_limit(data: bytes, limit: int, level: int) -> None:
    body = gzip.compress(data, compresslevel=level)
    if len(data) <= limit:
        assert gunzip_limited(body, limit) == data
    else:
        with pytest.raises(BodyTooLarge):
            gunzip_limited(body, limit)


@FUZZ
@given(pieces=st.lists(st.binary(max_size=40), min_size=1, max_size=300))
def test_many_tiny_gzip_members_decode_to_their_concatenation(pieces: list[bytes]) -> None:
    body = b"".join(gzip.compress(p, compresslevel=1) for p in pieces)
    assert gunzip_limited(body, 1 << 20) == b"".join(pieces)


@FUZZ
@given(
    data=st.binary(min_size=1, max_size=3000), cut=st.integers(0, 10_000), split=st.integers(1, 4)
)
def test_truncated_gzip_is_refused_or_a_prefix_never_garbage(
    data: bytes, cut: int, split: int
) -> None:
    size = max(1, len(data) // split)
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    body = b"".join(gzip.compress(p) for p in parts)
    truncated = body[: cut % len(body)]
    try:
        out = gunzip_limited(truncated, 1 << 20)
    except BadGzip:
        return
    # Cut exactly at a member boundary: the members before it are a valid gzip body.
    assert data.startswith(out)


@FUZZ
@given(
    body=st.binary(max_size=3000),
    encoding=st.sampled_from(["gzip", "x-gzip", "", "identity", "br", "GZIP "]),
)
def test_decode_body_only_refuses_with_a_client_status(body: bytes, encoding: str) -> None:
    try:
        out = decode_body(body, encoding, 4096)
    except BodyRefused as exc:
        assert exc.status in (400, 413, 415) and exc.message and exc.fix
        return
    assert len(out) <= max(4096, len(body))


def test_gzip_bomb_is_refused_without_holding_the_output() -> None:
    """100 MiB of zeros in ~100 KiB of gzip against a 1 MiB limit: refused, memory bounded."""
    bomb = gzip.compress(b"\0" * (100 << 20), compresslevel=9)
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            gunzip_limited(bomb, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes for a 1 MiB limit"
