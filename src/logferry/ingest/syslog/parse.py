"""RFC 5424 / RFC 3164 header recognition: feeds the `by_format` counters, never the stored line."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("logferry.ingest.syslog")

FormatName = Literal["rfc5424", "rfc3164", "unknown"]

_PRIVAL = rb"(?:19[01]|1[0-8][0-9]|0?[0-9]?[0-9])"  # 0..191, leading zeros tolerated
_BSD_TS = rb"[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2}"
# A syslog head: group 1 is b"1 " for RFC 5424, b"" for RFC 3164 (any other PRI, or a BSD
# timestamp without PRI). The "\n" prefix lets sre jump from line start to line start with a
# literal search instead of testing `^` at every byte (~10x faster on 1 MiB batches).
_HEAD = rb"(?:<" + _PRIVAL + rb">(1 )?|" + _BSD_TS + rb" )"
_FIRST_HEAD = re.compile(_HEAD)
_NEXT_HEADS = re.compile(rb"\n" + _HEAD)
_PRI = re.compile(rb"<(" + _PRIVAL + rb")>")
_TS_3164 = re.compile(rb"(" + _BSD_TS + rb"|[0-9]{4}-[0-9]{2}-[0-9]{2}T[^ ]+) ")


@dataclass(frozen=True, slots=True)
class SyslogInfo:
    """What the header of one syslog line says (for labels and counters only)."""

    format: FormatName
    pri: int | None = None
    facility: int | None = None
    severity: int | None = None
    hostname: str | None = None
    app_name: str | None = None
    timestamp: str | None = None


def _text(token: bytes) -> str | None:
    return None if token in (b"", b"-") else token.decode("utf-8", "replace")


def parse_syslog(line: bytes) -> SyslogInfo | None:
    """Recognise an RFC 5424 or RFC 3164 header; never raises.

    None for an empty line. A line is "rfc5424" when it starts with `<PRI>1 ` (PRI 0-191);
    "rfc3164" when it starts with any other `<PRI>`, or with no PRI but a BSD timestamp
    (`Mmm dd hh:mm:ss `, which RFC 3164 §4.3.3 still treats as syslog); else "unknown". The
    counters (`count_formats`) use the very same rules.
    """
    try:
        return _parse(bytes(line).rstrip(b"\r\n"))
    except Exception:  # pragma: no cover - defensive: recognition must never fail ingest
        log.debug("syslog header parse failed", exc_info=True)
        return SyslogInfo("unknown")


def _parse(line: bytes) -> SyslogInfo | None:
    if not line:
        return None
    m = _PRI.match(line)
    if m is None:
        if re.match(_BSD_TS + rb" ", line) is None:
            return SyslogInfo("unknown")
        return _parse_3164(line, None)
    pri = int(m.group(1))
    rest = line[m.end() :]
    if rest.startswith(b"1 "):
        fields = rest[2:].split(b" ", 3)
        fields += [b""] * (3 - len(fields))
        return SyslogInfo(
            "rfc5424",
            pri,
            pri >> 3,
            pri & 7,
            hostname=_text(fields[1]),
            app_name=_text(fields[2]),
            timestamp=_text(fields[0]),
        )
    return _parse_3164(rest, pri)


def _parse_3164(rest: bytes, pri: int | None) -> SyslogInfo:
    facility = None if pri is None else pri >> 3
    severity = None if pri is None else pri & 7
    m = _TS_3164.match(rest)
    if m is None:  # PRI only: RFC 3164 still calls it syslog (a relay would add the header)
        return SyslogInfo("rfc3164", pri, facility, severity)
    tokens = rest[m.end() :].split(b" ", 2)
    hostname: bytes | None = None
    tag = tokens[0]
    if not _looks_like_tag(tag) and len(tokens) > 1 and _looks_like_tag(tokens[1]):
        hostname, tag = tokens[0], tokens[1]
    elif not _looks_like_tag(tag):
        hostname, tag = tag, b""
    app = re.split(rb"[\[:]", tag, maxsplit=1)[0] if tag else b""
    return SyslogInfo(
        "rfc3164",
        pri,
        facility,
        severity,
        hostname=_text(hostname or b""),
        app_name=_text(app),
        timestamp=m.group(1).decode("ascii", "replace"),
    )


def _looks_like_tag(token: bytes) -> bool:
    return token.endswith(b":") or b"[" in token


def count_formats(data: bytes, lines: int) -> tuple[int, int, int]:
    """(rfc5424, rfc3164, unknown) over normalized `data`, with parse_syslog's rules, in C."""
    heads = _NEXT_HEADS.findall(data, 0, len(data) - 1)  # an LF at the very end starts no line
    first = _FIRST_HEAD.match(data)
    if first is not None:
        heads.append(first.group(1) or b"")
    n5424 = heads.count(b"1 ")
    n3164 = len(heads) - n5424
    return n5424, n3164, lines - len(heads)


# ---------------------------------------------------------------------------------------------
