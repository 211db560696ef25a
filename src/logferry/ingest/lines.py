"""Turn an ingest body into spool-ready lines, with one documented, counted rule per oddity.

Every ingest path (HTTP bodies, syslog batches) goes through `normalize`, so a line means the same
thing whichever way it arrived. The result is what `Chunk.data` requires: newline-terminated
lines, no empty line. The rules, applied in this order:

1. **Line ends.** A line ends at LF (`\\n`). CRs (`\\r`) right before the LF, or at the very
   end of the body, are removed (CRLF input; `crlf` is set): no stored line ends in CR. A CR
   inside a line is data and is kept; a CR alone is *not* a line end.
2. **Empty lines** (nothing left after rule 1) are skipped and counted (`empty_skipped`).
   Lines of only spaces or tabs are *not* empty: they are kept as sent.
3. **Last line.** A final line without `\\n` is accepted; the newline is added.
4. **Invalid UTF-8** is repaired: each maximal invalid byte sequence becomes U+FFFD (the same
   result as Python's `bytes.decode("utf-8", "replace")`, i.e. the Unicode/WHATWG practice);
   `invalid_utf8` counts the *lines* that needed a repair. Other bytes (NUL, control characters)
   are kept as sent.
5. **Over-long lines** (more than `max_line_bytes` bytes, newline not included, measured after
   the repair) are cut to at most `max_line_bytes` bytes at a UTF-8 character boundary, never
   in the middle of a character; `truncated` counts them. The rest of the line is dropped, and
   so are CRs the cut leaves at its end (a line that only held CRs up to the cut disappears,
   still counted as truncated).

Nothing here raises on content: any byte string normalizes to valid lines (possibly none).

Speed: each rule starts with a C-speed scan of the whole body (`in`, regex search, `isascii`,
`decode`, `rfind`) and is skipped when the scan finds nothing to do, so a clean body costs a few
memchr-class passes and no per-line Python code (≈1 GB/s, ≈4.5 M lines/s on one core: see
bench/ingest_bench.py). When rules 1-2 apply they split, filter and join in C; rule 4 works per
invalid sequence and rule 5 per over-long line, never per ordinary line.

`gunzip_limited` decodes `Content-Encoding: gzip` bodies without trusting the compressed size:
it stops as soon as the output would exceed the limit (zip-bomb safe).
"""

from __future__ import annotations

import re
import types
import zlib
from dataclasses import dataclass

from logferry.errors import InputError

_inflate_lib: types.ModuleType  # either module (as codecs.py's _deflate_lib)
try:  # ISA-L's inflate is a drop-in for zlib's (same decompressobj API), and faster.
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the safety net
    _inflate_lib = zlib

MIN_LINE_BYTES = 4
"""Smallest allowed `max_line_bytes`: one UTF-8 character of any length must fit."""

_GZIP_WBITS = 16 + 15  # gzip header + trailer, 32 KiB window
_GZIP_MAGIC = b"\x1f\x8b"
_CRS_LF = re.compile(rb"\r+\n")
_CR_PASSES = 3
_LF_RUN = re.compile(rb"\n\n+")
_LF_LF = re.compile(rb"\n\n")
"""An empty line inside the body. sre's literal search runs ~2x faster than `b"\n\n" in data`."""


@dataclass(slots=True)
class Normalized:
    """The result of `normalize`: spool-ready data plus what was changed, for the counters."""

    data: bytes
    """Newline-terminated lines; every line ends with b"\\n"; no empty line (may be b"")."""
    lines: int
    """Lines in `data` (== data.count(b"\\n"))."""
    empty_skipped: int = 0
    """Empty lines removed (rule 2)."""
    truncated: int = 0
    """Lines cut to `max_line_bytes` (rule 5)."""
    invalid_utf8: int = 0
    """Lines whose invalid UTF-8 was replaced with U+FFFD (rule 4)."""
    crlf: bool = False
    """At least one CR was removed before a line end (rule 1)."""


class BodyTooLarge(InputError):
    """The (decompressed) body is over the ingest limit: HTTP 413."""

    def __init__(self, limit: int, *, where: str = "body") -> None:
        super().__init__(
            where,
            f"decompressed body is larger than the {limit}-byte limit",
            fix="Send smaller requests (split the lines over several POSTs).",
        )
        self.limit = limit


class BadGzip(InputError):
    """A body declared as gzip is not a valid gzip stream: HTTP 400."""

    def __init__(self, message: str, *, where: str = "body") -> None:
        super().__init__(
            where,
            message,
            fix="Send a complete gzip stream with Content-Encoding: gzip, or drop that header.",
        )


def normalize(body: bytes, *, max_line_bytes: int) -> Normalized:
    """Apply the module's rules to `body`; see the module docstring for the exact behaviour."""
    if max_line_bytes < MIN_LINE_BYTES:
        raise ValueError(f"max_line_bytes must be >= {MIN_LINE_BYTES}, not {max_line_bytes}")
    data = body if type(body) is bytes else bytes(body)
    if not data:
        return Normalized(b"", 0)
    crlf = False
    empty = 0
    # Rule 1: CRs before LF (or at the very end) go. split+join beats bytes.replace ~2x here.
    if b"\r" in data:
        before = len(data)
        cr_left = data.count(b"\r")
        for _ in range(_CR_PASSES):  # each pass removes one CR from every run before an LF
            # bytes.replace builds the result directly: no object per line, whatever the count.
            shorter = data.replace(b"\r\n", b"\n")
            removed = len(data) - len(shorter)
            data = shorter
            if not removed:
                break
            cr_left -= removed
            if not cr_left:
                break
        else:
            data = _CRS_LF.sub(b"\n", data)  # long CR runs: one (slower) regex pass
        if data[-1:] == b"\r":
            data = data.rstrip(b"\r")
            if data[-1:] in (b"\n", b""):  # the unterminated last line was only CRs
                empty = 1
        crlf = len(data) != before
        if not data:
            return Normalized(b"", 0, empty_skipped=empty, crlf=crlf)
    # Rule 2: empty lines are a leading LF or an LF right after another. Splitting and
    # filtering run in C (no Python code per line) and beat repeated bytes.replace.
    if data[:1] == b"\n" or _LF_LF.search(data) is not None:
        # Collapse each run of LFs to one and drop leading ones: work and memory per *run*, so
        # a body of nothing but LFs costs one C pass (splitting it made a list entry per byte).
        before = data.count(b"\n")
        data = _LF_RUN.sub(b"\n", data).lstrip(b"\n")
        empty += before - data.count(b"\n")
        if not data:
            return Normalized(b"", 0, empty_skipped=empty, crlf=crlf)
    # Rule 3.
    if data[-1] != 0x0A:
        data += b"\n"
    # Rule 4. ASCII is valid UTF-8 and `isascii` is the cheapest possible check.
    invalid = 0
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            data, invalid = _repair_utf8(data)
    # Rule 5. Only a body longer than one maximal line can hold an over-long line.
    truncated = 0
    if len(data) > max_line_bytes + 1:
        data, truncated = _truncate_long_lines(data, max_line_bytes)
    return Normalized(
        data,
        data.count(b"\n"),
        empty_skipped=empty,
        truncated=truncated,
        invalid_utf8=invalid,
        crlf=crlf,
    )


# -- rule 4 ------------------------------------------------------------------------------------

REPAIR_WINDOW = 1 << 20
"""Invalid UTF-8 is repaired per window of about this many bytes: each C call (and so each GIL
hold, when normalising in a thread beside the event loop) is bounded, and so is scratch memory."""
_KEEP_NUL_LF = bytes(b for b in range(256) if b not in (0x00, 0x0A))


def _window_end(data: bytes, start: int, size: int) -> int:
    """An end for the window from `start` where decoding can stop and resume unchanged.

    A byte that is not a continuation byte (10xxxxxx) always starts a fresh sequence; after
    four continuation bytes in a row, the fourth can belong to no sequence before it.
    """
    end = start + size
    if end >= len(data):
        return len(data)
    for i in range(end, min(end + 4, len(data))):
        if data[i] & 0xC0 != 0x80:
            return i
    return min(end + 3, len(data))


def _repair_utf8(data: bytes) -> tuple[bytes, int]:
    """Replace invalid sequences with U+FFFD; count the lines touched. C speed whatever the input.

    `data` ends with b"\n". No Python callback (a per-byte callback made 16 MiB of 0xFF cost
    ~0.7 GB and seconds of CPU). Per window: "replace" gives the output; "surrogateescape" turns
    each invalid byte into a lone surrogate, which "surrogatepass" encodes as ED B2 xx / ED B3 xx
    — bytes no valid character produces — so marking those as NUL (after dropping real NULs) and
    deleting everything but NUL and LF leaves one "\0\n" per touched line: `count` does the
    rest. Every step is a bytes/str method in C; memory is a few bytes per window byte.
    """
    out: list[bytes] = []
    lines = 0
    carry = b""  # b"\0": the current line already holds a repair from an earlier window
    start = 0
    n = len(data)
    while start < n:
        end = _window_end(data, start, REPAIR_WINDOW)
        window = data[start:end]
        out.append(window.decode("utf-8", "replace").encode("utf-8"))
        marks = (
            window.decode("utf-8", "surrogateescape")
            .encode("utf-8", "surrogatepass")
            .replace(b"\x00", b"")
            .replace(b"\xed\xb2", b"\x00")
            .replace(b"\xed\xb3", b"\x00")
            .translate(None, _KEEP_NUL_LF)
        )
        marks = carry + marks
        lines += marks.count(b"\x00\n")
        carry = b"\x00" if marks.endswith(b"\x00") else b""
        start = end
    return (out[0] if len(out) == 1 else b"".join(out)), lines


# -- rule 5 ------------------------------------------------------------------------------------


def _truncate_long_lines(data: bytes, limit: int) -> tuple[bytes, int]:
    """Cut every line longer than `limit` bytes; `data` is valid UTF-8 ending with b"\\n".

    Scan: if the `limit + 1` bytes from a line start hold an LF, that line and every line up to
    the last LF in the window fit, so the scan jumps there — about len/limit C-level `rfind`
    calls for a clean body, whatever the line count.
    """
    n = len(data)
    pieces: list[bytes] = []
    copied = 0  # data[copied:pos] is kept verbatim
    pos = 0
    count = 0
    while n - pos > limit + 1:
        nl = data.rfind(b"\n", pos, pos + limit + 1)
        if nl >= 0:
            pos = nl + 1
            continue
        # The line starting at `pos` has more than `limit` bytes.
        end = data.find(b"\n", pos + limit)
        cut = pos + limit
        while data[cut] & 0xC0 == 0x80:  # continuation byte: the cut would split a character
            cut -= 1
        while cut > pos and data[cut - 1] == 0x0D:  # rule 1 holds for cut lines too
            cut -= 1
        pieces.append(data[copied:cut])
        copied = end if cut > pos else end + 1  # keep the line's own b"\n" unless it vanished
        pos = end + 1
        count += 1
    if not count:
        return data, 0
    pieces.append(data[copied:])
    return b"".join(pieces), count


def drop_partial_char(prefix: bytes) -> bytes:
    """`prefix` without a trailing UTF-8 character that the cut left incomplete.

    For a prefix of raw (possibly invalid) bytes whose data continues past the cut: cutting a
    valid character in two must not turn it into an "invalid UTF-8" repair.
    """
    i = len(prefix) - 1
    back = 0
    while i >= 0 and back < 3 and prefix[i] & 0xC0 == 0x80:
        i -= 1
        back += 1
    if i < 0:
        return prefix
    lead = prefix[i]
    need = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4 if lead < 0xF8 else 1
    return prefix[:i] if len(prefix) - i < need else prefix


# -- gzip ----------------------------------------------------------------------------------------


MAX_GZIP_MEMBERS = 100_000
"""Most gzip members one body may hold. Real senders write one (BGZF-style writers a few hundred
for 16 MiB); a body of tiny members costs Python work per member, so past this it is refused."""
_FEED_FIRST = 256
_FEED_MAX = 1 << 20


class TooManyGzipMembers(BadGzip):
    """The body holds more gzip members than MAX_GZIP_MEMBERS: HTTP 400."""

    def __init__(self, limit: int, *, where: str = "body") -> None:
        super().__init__(f"gzip body has more than {limit} gzip members", where=where)
        self.fix = "Compress the whole body as one gzip stream (one member), not line by line."


def gunzip_limited(body: bytes, limit: int, *, max_members: int = MAX_GZIP_MEMBERS) -> bytes:
    """Decompress a gzip body (one or more members) to at most `limit` bytes.

    Raises BodyTooLarge as soon as the output would pass `limit` (never holds more than
    `limit + 1` bytes, whatever the ratio) and BadGzip on corrupt or truncated input (or more
    than `max_members` members). An empty body decodes to b"". Zero bytes after the last member
    (tape-style padding) are ignored.

    Cost is linear in the body whatever its members: input is fed through a memoryview in
    windows that start small and double, so the copy zlib makes of a member's `unused_data`
    is at most about twice that member's size (handing zlib the whole rest of the body made
    every member copy it: quadratic for a body of many tiny members).
    """
    if not body:
        return b""
    view = memoryview(body)
    n = len(body)
    out: list[bytes] = []
    total = 0
    pos = 0  # start of the next member
    member = 0
    while True:
        member += 1
        if body[pos : pos + 2] != _GZIP_MAGIC:
            if member > 1 and body.count(b"\x00", pos) == n - pos:
                break  # zero padding after the last member
            what = "does not start with" if member == 1 else "has trailing bytes that are not"
            raise BadGzip(f"gzip body {what} a gzip member (magic 1f 8b)")
        if member > max_members:
            raise TooManyGzipMembers(max_members)
        d = _inflate_lib.decompressobj(wbits=_GZIP_WBITS)
        fed = pos  # body[:fed] went to this member's decompressor (or earlier ones)
        step = _FEED_FIRST
        tail: bytes = b""
        produced = True
        try:
            while True:
                data: bytes | memoryview
                if tail:
                    data = tail  # input zlib held back because the output hit max_length
                elif fed < n:
                    data = view[fed : fed + step]
                    fed += len(data)
                    step = min(step * 2, _FEED_MAX)
                elif not produced:
                    raise BadGzip(f"gzip body is truncated (member {member} is incomplete)")
                else:
                    data = b""  # no input left: let zlib flush what it still holds
                chunk = d.decompress(data, limit - total + 1)
                tail = d.unconsumed_tail
                total += len(chunk)
                if total > limit:
                    raise BodyTooLarge(limit)
                produced = bool(chunk)
                if chunk:
                    out.append(chunk)
                if d.eof:
                    break
        except _inflate_lib.error as exc:
            raise BadGzip(f"gzip body is corrupt in member {member}: {exc}") from None
        pos = fed - len(d.unused_data)  # what zlib read past this member's end starts the next
        if pos >= n:
            break
    return out[0] if len(out) == 1 else b"".join(out)
