"""message_type framing: exact bytes for each of Fastly's four formats."""

from __future__ import annotations

import calendar
import os
import re

import pydantic
import pytest

from logferry.errors import InputError
from logferry.sinks.framing import (
    DEFAULT_MESSAGE_TYPE,
    MESSAGE_TYPES,
    MessageType,
    check_message_type,
    frame,
    line_prefix,
)

# Fastly's documented example: <134>2016-07-04T22:37:26Z cache-sjc3128 LogTest[62959]: <msg>
T = calendar.timegm((2016, 7, 4, 22, 37, 26)) + 0.75  # sub-second part is dropped
KW = {"hostname": "cache-sjc3128", "service": "LogTest", "accepted_at": T, "pid": 62959}
DATA = b'{"status":200}\nGET / 200 \xc3\xa9t\xc3\xa9\n<your log message>\n'


def test_classic_matches_fastlys_documented_prefix() -> None:
    assert frame(DATA, "classic", **KW) == (
        b'<134>2016-07-04T22:37:26Z cache-sjc3128 LogTest[62959]: {"status":200}\n'
        b"<134>2016-07-04T22:37:26Z cache-sjc3128 LogTest[62959]: GET / 200 \xc3\xa9t\xc3\xa9\n"
        b"<134>2016-07-04T22:37:26Z cache-sjc3128 LogTest[62959]: <your log message>\n"
    )


def test_loggly_is_an_rfc5424_header() -> None:
    assert frame(DATA, "loggly", **KW) == (
        b'<134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - - {"status":200}\n'
        b"<134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - - GET / 200 \xc3\xa9t\xc3\xa9\n"
        b"<134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - - <your log message>\n"
    )


def test_logplex_is_octet_counted_like_heroku() -> None:
    assert frame(DATA, "logplex", **KW) == (
        # 58-byte header + message + "\n": 58 + 14 + 1, 58 + 15 + 1 (é is 2 bytes), 58 + 18 + 1
        b'73 <134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - {"status":200}\n'
        b"74 <134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - "
        b"GET / 200 \xc3\xa9t\xc3\xa9\n"
        b"77 <134>1 2016-07-04T22:37:26Z cache-sjc3128 LogTest 62959 - <your log message>\n"
    )


def test_logplex_counts_bytes_including_the_newline() -> None:
    lines = [b"x" * n + b"\n" for n in (1, 9, 10, 99, 100, 5000)] + ["\u00e9\u4e2d\n".encode()]
    out = frame(b"".join(lines), "logplex", **KW)
    pos = 0
    seen = 0
    while pos < len(out):
        m = re.match(rb"(\d+) ", out[pos:])
        assert m is not None
        count = int(m.group(1))
        start = pos + m.end()
        msg = out[start : start + count]
        assert msg.endswith(b"\n") and msg.count(b"\n") == 1
        assert msg.endswith(lines[seen])
        pos = start + count
        seen += 1
    assert seen == len(lines)


def test_blank_returns_the_same_object() -> None:
    assert frame(DATA, "blank", **KW) is DATA
    assert frame(DATA, DEFAULT_MESSAGE_TYPE, **KW) is DATA


@pytest.mark.parametrize("mt", MESSAGE_TYPES)
def test_every_line_stays_one_line(mt: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(1000))
    out = frame(data, mt, **KW)
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1000
    assert [line.endswith(b"line %d" % i) for i, line in enumerate(out.split(b"\n")[:-1])] == [
        True
    ] * 1000


@pytest.mark.parametrize("mt", MESSAGE_TYPES)
def test_empty_chunk_frames_to_nothing(mt: str) -> None:
    assert frame(b"", mt, **KW) == b""


@pytest.mark.parametrize("mt", ["classic", "loggly", "logplex"])
def test_unterminated_data_is_refused(mt: str) -> None:
    with pytest.raises(ValueError, match="newline-terminated"):
        frame(b"a\nb", mt, **KW)


def test_default_pid_is_this_process() -> None:
    out = frame(b"m\n", "classic", hostname="h", service="s", accepted_at=T)
    assert out == b"<134>2016-07-04T22:37:26Z h s[%d]: m\n" % os.getpid()


def test_header_fields_are_made_syslog_safe() -> None:
    prefix = line_prefix(
        "loggly", hostname="", service="My Log\tEndpoint\u00e9" + "x" * 60, accepted_at=0, pid=1
    )
    host, app = prefix.split(b" ")[2:4]
    assert host == b"-"
    assert app.startswith(b"My_Log_Endpoint__")  # space, tab and both UTF-8 bytes of "é"
    assert len(app) == 48
    assert all(0x21 <= c <= 0x7E for c in app)


@pytest.mark.parametrize("bad", ["Classic", "syslog", "", None, "blank "])
def test_unknown_message_type_names_the_field(bad: object) -> None:
    with pytest.raises(InputError) as err:
        frame(DATA, bad, **KW)  # type: ignore[arg-type]
    assert err.value.where == "message_type"
    assert "classic, loggly, logplex, blank" in str(err.value)
    with pytest.raises(InputError):
        check_message_type(bad)


def test_message_type_is_a_pydantic_literal() -> None:
    class Endpoint(pydantic.BaseModel):
        message_type: MessageType = DEFAULT_MESSAGE_TYPE

    assert Endpoint().message_type == "blank"
    assert Endpoint(message_type="logplex").message_type == "logplex"
    with pytest.raises(pydantic.ValidationError):
        Endpoint(message_type="fancy")  # type: ignore[arg-type]
