"""RFC 6587 framing for TCP (octet counting and/or LF) and the per-read batch of messages.

Both are pure byte work with no I/O, so the fuzz tests drive them directly.
"""

from __future__ import annotations

import re
from typing import Literal

from logferry.errors import LogferryError
from logferry.ingest.lines import drop_partial_char, normalize


class _FramingError(LogferryError):
    """A TCP stream that cannot be framed any further: the connection is closed.

    Internal: the TCP handler counts and logs it and closes that connection.
    """


class MessageBatch:
    """Messages framed from one read, kept as pieces for a single join + normalize."""

    __slots__ = (
        "cut_at_close",
        "escaped",
        "invalid",
        "max_bytes",
        "messages",
        "pieces",
        "truncated",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.pieces: list[bytes | bytearray] = []
        self.messages = 0
        self.escaped = 0
        self.truncated = 0
        self.invalid = 0
        self.cut_at_close = 0

    def add_message(self, msg: bytes | bytearray) -> None:
        """One complete message: trailing CR/LF dropped, inner LFs escaped as #012."""
        self.messages += 1
        if msg[-1:] in (b"\n", b"\r"):
            msg = msg.rstrip(b"\r\n")
        if b"\n" in msg:
            msg = msg.replace(b"\r\n", b"\n").replace(b"\n", b"#012")
            self.escaped += 1
        self.pieces.append(msg)
        self.pieces.append(b"\n")

    def add_messages(self, msgs: list[bytearray]) -> None:
        """Complete messages; one C-level join when none holds an LF (the usual case)."""
        joined = b"\n".join(msgs) + b"\n"
        if joined.count(b"\n") == len(msgs):
            self.messages += len(msgs)
            self.pieces.append(joined)  # trailing CRs are left to normalize (same rule)
            return
        for msg in msgs:
            self.add_message(msg)

    def add_lines(self, segment: bytes | bytearray) -> None:
        """LF-framed messages, one per line, every line ending with b"\\n"."""
        self.messages += segment.count(b"\n")
        self.pieces.append(segment)

    def add_cut(self, prefix: bytes | bytearray) -> None:
        """The first `max_bytes` of a message that is longer (its rest is being discarded)."""
        self.messages += 1
        self.truncated += 1
        msg = drop_partial_char(bytes(prefix[: self.max_bytes])).rstrip(b"\r\n")
        if b"\n" in msg:
            msg = msg.replace(b"\r\n", b"\n").replace(b"\n", b"#012")
            self.escaped += 1
        norm = normalize(msg, max_line_bytes=self.max_bytes)
        self.invalid += norm.invalid_utf8
        if norm.lines:
            self.pieces.append(norm.data)

    def add_cut_at_close(self, part: bytes | bytearray) -> None:
        """A message the end of the connection cut short: kept as far as it got, counted."""
        self.cut_at_close += 1
        self.truncated += 1
        if part.strip(b"\r\n"):
            self.add_message(part)
        else:
            self.messages += 1  # nothing of it arrived but its header: counted, no line

    def take(self) -> tuple[bytes, int, int, int, int, int]:
        body = b"".join(self.pieces)
        out = (body, self.messages, self.escaped, self.truncated, self.invalid, self.cut_at_close)
        self.pieces = []
        self.messages = self.escaped = self.truncated = self.invalid = self.cut_at_close = 0
        return out


_OCTET_HDR = re.compile(rb"([1-9][0-9]{0,8}) ")
_MAX_HDR = 10  # 9 digits + space
_NL_OCTET = re.compile(rb"\n[1-9][0-9]{0,8} ")


class TcpFramer:
    """Incremental RFC 6587 framer for one TCP connection (octet counting and/or LF).

    `feed` frames everything complete and keeps the rest; memory stays bounded by one read plus
    `max_bytes` however long a frame or line claims to be. LF-framed runs are handed over as whole
    segments (no per-line Python work); octet-counted frames cost one regex match each.
    """

    __slots__ = ("_buf", "_lf_skip", "_max", "_mode", "_skip")

    def __init__(self, mode: Literal["auto", "octet", "lf"], max_bytes: int) -> None:
        self._mode = mode
        self._max = max_bytes
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversize octet frame still to discard
        self._lf_skip = False  # discarding the rest of an oversize LF line

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, batch: MessageBatch) -> None:
        """Frame `data` into `batch`; raises _FramingError (batch keeps what came before)."""
        buf = self._buf
        buf += data
        try:
            pos = self._frame(buf, batch)
        except _FramingError:
            buf.clear()
            raise
        del buf[:pos]

    @property
    def pending(self) -> bool:
        """A message has started but is not complete (the read timeout applies)."""
        return bool(self._buf) or bool(self._skip) or self._lf_skip

    def feed_eof(self, batch: MessageBatch, *, clean: bool = True) -> int:
        """The connection ended: frame what is left. Returns framing errors found (0 or 1).

        A message cut by the end is delivered as far as it got and counted in
        `batch.truncated` and `batch.cut_at_close`: an octet-counted frame shorter than its
        count always; a last LF line without its LF only when the end was not `clean` (a FIN
        on plain TCP or a close_notify on TLS ends a last line the way HTTP ingest does).
        """
        buf = self._buf
        self._skip, skipping = 0, self._skip
        self._lf_skip = False
        if skipping:
            buf.clear()
            batch.cut_at_close += 1  # an oversize frame: its prefix was delivered (truncated)
            return 0
        if not buf:
            return 0
        errors = 0
        m = _OCTET_HDR.match(buf) if self._mode != "lf" else None
        if m is not None:
            batch.add_cut_at_close(buf[m.end() :])  # incomplete frame: deliver what arrived
        elif self._mode == "octet":
            errors = 1  # not even a count: nothing to deliver
        elif clean:
            batch.add_message(bytes(buf))  # a last line without its LF (a copy: buf is reused)
        else:
            batch.add_cut_at_close(bytes(buf))
        buf.clear()
        return errors

    def _frame(self, buf: bytearray, batch: MessageBatch) -> int:
        mode = self._mode
        limit = self._max
        n = len(buf)
        pos = 0
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            if self._lf_skip:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    return n
                self._lf_skip = False
                pos = nl + 1
                continue
            first = buf[pos]
            if mode == "octet" or (mode == "auto" and 0x31 <= first <= 0x39):
                m = _OCTET_HDR.match(buf, pos)
                if m is not None:
                    frames: list[bytearray] = []
                    while m is not None:  # complete frames back to back: the hot loop
                        start = m.end()
                        end = start + int(m.group(1))
                        if end > n:
                            break
                        frames.append(buf[start:end])
                        pos = end
                        m = _OCTET_HDR.match(buf, pos)
                    if frames:
                        batch.add_messages(frames)
                        continue
                    assert m is not None  # no frames: the loop broke on its first (partial) match
                    length = int(m.group(1))
                    start = m.end()
                    have = n - start
                    if have >= length:
                        batch.add_message(buf[start : start + length])
                        pos = start + length
                        continue
                    if length <= limit:
                        return pos  # wait for the rest of the frame
                    if have < limit:
                        return pos  # wait until the kept prefix is complete
                    batch.add_cut(buf[start : start + limit])
                    self._skip = length - have
                    return n
                head = buf[pos : pos + _MAX_HDR]
                if len(head) < _MAX_HDR and head.isdigit() and first != 0x30:
                    return pos  # an octet count still arriving
                if mode == "octet":
                    raise _FramingError(f"expected an RFC 6587 octet count, got {bytes(head)!r}")
            # LF framing: hand over whole lines up to the next possible octet-counted frame.
            end = -1
            if mode == "auto":
                m = _NL_OCTET.search(buf, pos)
                if m is not None:
                    end = m.start() + 1
            if end < 0:
                end = buf.rfind(b"\n", pos) + 1
            if end > pos:
                batch.add_lines(buf[pos:end])
                pos = end
                continue
            if n - pos > limit:  # a line longer than the limit and still no LF
                batch.add_cut(buf[pos : pos + limit])
                self._lf_skip = True
                return n
            return pos
        return pos


# ---------------------------------------------------------------------------------------------
# The listener
