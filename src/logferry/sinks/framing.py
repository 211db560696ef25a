"""Fastly's `message_type` line framing for files written to S3.

Fastly documents four log line formats (guide "Changing log line formats"):

- `blank` (default): no prefix, the line as sent.
- `classic`: RFC 3164-style with an RFC 3339 UTC timestamp, exactly Fastly's published example
  `<134>2016-07-04T22:37:26Z cache-sjc3128 LogTest[62959]: <message>`
  (priority 134 = local0.info, timestamp, host, endpoint name, [process id]).
- `loggly`: "structured syslog prefix based on RFC 5424". Fastly publishes no sample, so it is
  the RFC 5424 header with nil MSGID and STRUCTURED-DATA:
  `<134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - - <message>`.
- `logplex`: "Heroku-style length-prefixed syslog". Heroku's logplex frames are RFC 6587 octet
  counting over RFC 5424 without STRUCTURED-DATA, and the count includes the trailing newline
  (logplex's own example: `70 <174>1 2012-07-22T00:06:26+00:00 host erlang console - Hi from
  erlang` + "\\n" is 70 bytes after "70 "); so:
  `68 <134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - <message>`.

The timestamp is the chunk's `accepted_at` (second precision, UTC), so one prefix serves a whole
chunk: classic and loggly are one `bytes.replace` per chunk, blank returns its input unchanged,
and only logplex (a length per line) does per-line work. Host and service names are made
syslog-safe (printable ASCII without spaces; RFC 5424 length limits; empty → "-").
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Final, Literal, get_args

from logferry.errors import InputError

MessageType = Literal["classic", "loggly", "logplex", "blank"]
MESSAGE_TYPES: Final[tuple[str, ...]] = get_args(MessageType)
DEFAULT_MESSAGE_TYPE: Final[MessageType] = "blank"

_PRI: Final = b"<134>"  # facility local0 (16) * 8 + severity informational (6)
_HOST_MAX: Final = 255  # RFC 5424 HOSTNAME
_APP_MAX: Final = 48  # RFC 5424 APP-NAME
_SAFE: Final = bytes(c if 0x21 <= c <= 0x7E else ord("_") for c in range(256))


def check_message_type(value: object) -> MessageType:
    """`value` as a MessageType, or InputError naming `message_type`."""
    if value not in MESSAGE_TYPES:
        raise InputError(
            "message_type",
            f"unknown message type {value!r}.",
            fix=f"Use one of: {', '.join(MESSAGE_TYPES)} (default {DEFAULT_MESSAGE_TYPE}).",
        )
    return value  # type: ignore[return-value]  # checked just above; `in` does not narrow it


def _token(value: str, limit: int) -> bytes:
    """A syslog header field: printable US-ASCII, no spaces, at most `limit` bytes; "" → "-"."""
    raw = value.encode("utf-8", "replace").translate(_SAFE)[:limit]
    return raw or b"-"


def _timestamp(accepted_at: float) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(accepted_at)).encode()


def line_prefix(
    message_type: MessageType,
    *,
    hostname: str,
    service: str,
    accepted_at: float,
    pid: int | None = None,
) -> bytes:
    """The bytes put before every line of a chunk (for logplex: after the length and space)."""
    mt = check_message_type(message_type)
    if mt == "blank":
        return b""
    ts = _timestamp(accepted_at)
    host = _token(hostname, _HOST_MAX)
    app = _token(service, _APP_MAX)
    proc = b"%d" % (os.getpid() if pid is None else pid)
    if mt == "classic":
        return b"%s%s %s %s[%s]: " % (_PRI, ts, host, app, proc)
    if mt == "loggly":
        return b"%s1 %s %s %s %s - - " % (_PRI, ts, host, app, proc)
    return b"%s1 %s %s %s %s - " % (_PRI, ts, host, app, proc)  # logplex


def frame(
    data: bytes,
    message_type: MessageType | str,
    *,
    hostname: str,
    service: str,
    accepted_at: float,
    pid: int | None = None,
) -> bytes:
    """Frame newline-terminated lines (a Chunk's `data`) as `message_type`.

    `hostname` is the delivering node, `service` the endpoint name, `accepted_at` the chunk's
    time, `pid` the process id shown by classic/loggly/logplex (default: this process).
    Returns newline-terminated lines; for "blank" the very same object.
    """
    mt = check_message_type(message_type)
    if mt == "blank" or not data:
        return data
    if data[-1:] != b"\n":
        raise ValueError("frame() needs newline-terminated lines (a Chunk's data)")
    prefix = line_prefix(mt, hostname=hostname, service=service, accepted_at=accepted_at, pid=pid)
    if mt == "logplex":
        lines = data.split(b"\n")
        lines.pop()  # the empty string after the final newline
        base = len(prefix) + 1  # the count covers prefix + message + "\n"
        return b"".join([b"%d %b%b\n" % (base + len(line), prefix, line) for line in lines])
    # Each "\n" gains the next line's prefix; the last one's is cut off again.
    body = data.replace(b"\n", b"\n" + prefix)
    return b"".join((prefix, memoryview(body)[: len(body) - len(prefix)]))


def stable_pid(uid_prefix: str) -> int:
    """The process id shown by classic/loggly/logplex framing: stable per endpoint incarnation,
    because a real pid changes on restart and would make a replayed file differ in its bytes."""
    return zlib.crc32(uid_prefix.encode()) % 32768 + 1
