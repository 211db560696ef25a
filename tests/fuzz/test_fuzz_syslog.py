"""Property tests for the syslog TCP framer (RFC 6587) and the message parser (no network)."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.ingest.lines import normalize
from logferry.ingest.syslog import (
    MessageBatch,
    TcpFramer,
    _FramingError,
    _parse,
    count_formats,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX = 64
HEADER = 10  # the longest octet count the framer waits for: 9 digits and a space


def run(mode: str, stream: bytes, cuts: list[int], *, clean: bool = True) -> tuple[bytes, bool]:
    """Feed `stream` in pieces cut at `cuts`; (normalised lines, whether framing failed)."""
    framer = TcpFramer(mode, MAX)  # type: ignore[arg-type]
    batch = MessageBatch(MAX)
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    failed = False
    for start, end in itertools.pairwise(bounds):
        piece = stream[start:end]
        try:
            framer.feed(piece, batch)
        except _FramingError:
            failed = True
            break
        # Memory stays bounded by one read plus the message limit, whatever the stream claims.
        assert framer.buffered <= len(piece) + MAX + HEADER
    if not failed:
        framer.feed_eof(batch, clean=clean)
    body = batch.take()[0]
    return normalize(body, max_line_bytes=MAX).data, failed


message = st.binary(min_size=1, max_size=MAX).filter(lambda m: b"\n" not in m and b"\r" not in m)


@settings(FUZZ)
@given(msgs=st.lists(message, max_size=30), cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_octet_counted_frames_arrive_whole_however_the_stream_is_cut(
    msgs: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(f"{len(m)} ".encode() + m for m in msgs)
    for mode in ("octet", "auto"):
        out, failed = run(mode, stream, cuts)
        assert not failed
        assert out == normalize(b"".join(m + b"\n" for m in msgs), max_line_bytes=MAX).data


@settings(FUZZ)
@given(
    msgs=st.lists(message.filter(lambda m: not m[:1].isdigit()), max_size=30),
    cuts=st.lists(st.integers(0, 5000), max_size=20),
)
def test_lf_framed_lines_arrive_whole_however_the_stream_is_cut(
    msgs: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(m + b"\n" for m in msgs)
    for mode in ("lf", "auto"):
        out, failed = run(mode, stream, cuts)
        assert not failed
        assert out == normalize(stream, max_line_bytes=MAX).data


@settings(FUZZ)
@given(stream=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_any_stream_frames_the_same_whole_or_in_pieces(stream: bytes, cuts: list[int]) -> None:
    for mode in ("auto", "lf", "octet"):
        whole, whole_failed = run(mode, stream, [])
        pieces, pieces_failed = run(mode, stream, cuts)
        assert whole_failed == pieces_failed
        if not whole_failed:
            assert pieces == whole
        for line in whole.split(b"\n")[:-1]:
            assert len(line) <= MAX


def formats(data: bytes) -> tuple[int, int, int]:
    """count_formats' answer computed line by line with the parser itself."""
    found = [_parse(line) for line in data.split(b"\n")[:-1]]
    names = [info.format if info is not None else "unknown" for info in found]
    return names.count("rfc5424"), names.count("rfc3164"), names.count("unknown")


heads = st.sampled_from(
    [
        b"",
        b"<13>",
        b"<191>1 ",
        b"<192>1 ",
        b"<0>",
        b"<13>1",
        b"Jan  2 03:04:05 ",
        b"Feb 30 25:61:61 ",
        b"<999>",
        b"<1>1 - - - - - ",
    ]
)


@settings(FUZZ)
@given(lines=st.lists(st.tuples(heads, st.binary(max_size=80)), max_size=20))
def test_parser_never_raises_and_the_counters_agree_with_it(
    lines: list[tuple[bytes, bytes]],
) -> None:
    body = b"".join(head + tail + b"\n" for head, tail in lines)
    norm = normalize(body, max_line_bytes=1024)
    # _parse, not parse_syslog: the public wrapper swallows any exception, which would hide one.
    assert count_formats(norm.data, norm.lines) == formats(norm.data)


@settings(FUZZ)
@given(
    pri=st.integers(0, 999),
    version=st.integers(0, 9),
    fields=st.lists(st.text(max_size=12).map(str.encode), min_size=5, max_size=5),
    rest=st.binary(max_size=200),
)
def test_rfc5424_shaped_messages_parse_without_error(
    pri: int, version: int, fields: list[bytes], rest: bytes
) -> None:
    line = f"<{pri}>{version} ".encode() + b" ".join(fields) + b" " + rest
    info = _parse(line)
    # The documented rules: PRI 0-191, then version 1 → RFC 5424; another version → 3164.
    expected = "unknown" if pri > 191 else "rfc5424" if version == 1 else "rfc3164"
    assert info is not None and info.format == expected
    if expected == "rfc5424":
        assert (info.facility, info.severity) == (pri >> 3, pri & 7)
