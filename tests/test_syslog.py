"""Syslog listeners over real loopback sockets: framing, formats, TLS, limits, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import struct
from pathlib import Path

import pytest
from pydantic import ValidationError

from logferry import netaddr
from logferry.errors import InputError
from logferry.ingest.lines import normalize
from logferry.ingest.syslog import (
    READ_BYTES,
    MessageBatch,
    SyslogInfo,
    SyslogListenerConfig,
    SyslogServer,
    TcpFramer,
    count_formats,
    parse_listen,
    parse_syslog,
)
from syslog_helpers import (
    Sink,
    client_context,
    eventually,
    make_cert,
    octet,
    run,
    send_tcp,
    serving,
)

RFC5424 = (
    b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
    b"\xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8"
)
RFC5424_SD = (
    b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
    b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
    b"An application event log entry..."
)
RFC3164 = b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"
RFC3164_PID = b"<13>Feb  5 17:32:18 10.0.0.99 sshd[1234]: Accepted publickey for root"
PLAIN = b'10.1.2.3 - - [01/May/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 512 "-" "curl/8"'


# -- config ----------------------------------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:514") == ("0.0.0.0", 514)
    assert parse_listen("[::1]:6514") == ("::1", 6514)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("514", ":514", "::1:514", "[::1]514", "[nope]:1", "h:70000", "h:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_one_listen_parser_for_every_listener() -> None:
    """The syslog listeners use logferry.netaddr's parser, the one [server] listen is to use."""
    assert parse_listen is netaddr.parse_listen
    with pytest.raises(ValueError, match="0 to 65535"):
        netaddr.parse_listen("127.0.0.1:99999", example="127.0.0.1:8080")
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:8080"):
        netaddr.parse_listen("8080", example="127.0.0.1:8080")


def test_config_validation() -> None:
    base = {"customer_id": "c", "endpoint": "e"}
    cfg = SyslogListenerConfig(protocol="tcp", listen="[::1]:6514", **base)
    assert (cfg.host, cfg.port, cfg.framing, cfg.max_message_bytes) == ("::1", 6514, "auto", 65536)
    with pytest.raises(ValidationError, match="listen"):
        SyslogListenerConfig(protocol="tcp", listen="::1:6514", **base)
    tls = {"cert_file": "c.pem", "key_file": "k.pem"}
    with pytest.raises(ValidationError, match="tls needs protocol 'tcp'"):
        SyslogListenerConfig(protocol="udp", listen="127.0.0.1:514", tls=tls, **base)
    with pytest.raises(ValidationError, match="framing applies"):
        SyslogListenerConfig(protocol="udp", listen="127.0.0.1:514", framing="octet", **base)
    with pytest.raises(ValidationError, match="needs ca_file"):
        SyslogListenerConfig(
            protocol="tcp",
            listen="127.0.0.1:6514",
            tls={**tls, "client_auth": "required"},
            **base,
        )
    with pytest.raises(ValidationError, match="max_message_bytes"):
        SyslogListenerConfig(protocol="tcp", listen="127.0.0.1:1", max_message_bytes=10, **base)
    with pytest.raises(ValidationError, match="extra"):
        SyslogListenerConfig(protocol="tcp", listen="127.0.0.1:1", colour="red", **base)


# -- RFC 5424 / 3164 recognition -------------------------------------------------------------------


def test_parse_rfc5424() -> None:
    info = parse_syslog(RFC5424)
    assert info == SyslogInfo(
        "rfc5424",
        34,
        4,
        2,
        hostname="mymachine.example.com",
        app_name="su",
        timestamp="2003-10-11T22:14:15.003Z",
    )
    sd = parse_syslog(RFC5424_SD)
    assert sd is not None
    assert (sd.format, sd.facility, sd.severity, sd.app_name) == ("rfc5424", 20, 5, "evntslog")
    nil = parse_syslog(b"<0>1 - - - - - -")
    assert nil == SyslogInfo("rfc5424", 0, 0, 0)


def test_parse_rfc3164() -> None:
    assert parse_syslog(RFC3164) == SyslogInfo(
        "rfc3164", 34, 4, 2, hostname="mymachine", app_name="su", timestamp="Oct 11 22:14:15"
    )
    pid = parse_syslog(RFC3164_PID)
    assert pid is not None
    assert (pid.hostname, pid.app_name, pid.timestamp) == ("10.0.0.99", "sshd", "Feb  5 17:32:18")
    no_host = parse_syslog(b"<13>Feb  5 17:32:18 cron[99]: job done")
    assert no_host is not None
    assert (no_host.hostname, no_host.app_name) == (None, "cron")
    no_pri = parse_syslog(b"Feb  5 17:32:18 host app: hello")
    assert no_pri is not None
    assert (no_pri.format, no_pri.pri, no_pri.hostname) == ("rfc3164", None, "host")
    iso = parse_syslog(b"<30>2024-05-01T12:00:00.123+02:00 web nginx: up")
    assert iso is not None
    assert (iso.format, iso.hostname, iso.app_name) == ("rfc3164", "web", "nginx")
    pri_only = parse_syslog(b"<13>just text")
    assert pri_only == SyslogInfo("rfc3164", 13, 1, 5)


def test_parse_unknown_and_odd_input() -> None:
    assert parse_syslog(b"") is None
    assert parse_syslog(PLAIN) == SyslogInfo("unknown")
    assert parse_syslog(b"<192>1 too high") == SyslogInfo("unknown")
    assert parse_syslog(b"<>1 x") == SyslogInfo("unknown")
    assert parse_syslog(b"<34>1") == SyslogInfo("rfc3164", 34, 4, 2)  # no "1 ": not 5424
    rng = random.Random(7)
    for _ in range(2000):  # never raises on garbage
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        parse_syslog(b"<1" + junk)
        parse_syslog(junk)


def test_count_formats_agrees_with_parse_syslog() -> None:
    samples = [RFC5424, RFC5424_SD, RFC3164, RFC3164_PID, PLAIN, b"<13>x", b"<999>x", b"Feb"]
    samples += [b"<34>1", b"<7>1 - - - - - - m", b"Oct 11 22:14:15 h a: m", b"1 <13>x"]
    rng = random.Random(3)
    lines = [rng.choice(samples) for _ in range(500)]
    data = normalize(b"\n".join(lines), max_line_bytes=1024).data
    expected = {"rfc5424": 0, "rfc3164": 0, "unknown": 0}
    for line in lines:
        info = parse_syslog(line)
        assert info is not None
        expected[info.format] += 1
    got = count_formats(data, len(lines))
    assert got == (expected["rfc5424"], expected["rfc3164"], expected["unknown"])


# -- the framer, on its own ------------------------------------------------------------------------


def frame(
    chunks: list[bytes], mode: str = "auto", max_bytes: int = 480, *, clean: bool = True
) -> tuple[bytes, int, int]:
    data, messages, errors, _ = frame_cut(chunks, mode, max_bytes, clean=clean)
    return data, messages, errors


def frame_cut(
    chunks: list[bytes], mode: str = "auto", max_bytes: int = 480, *, clean: bool = True
) -> tuple[bytes, int, int, int]:
    """(normalized lines, messages, framing errors, messages cut by the end)."""
    batch = MessageBatch(max_bytes)
    framer = TcpFramer(mode, max_bytes)  # type: ignore[arg-type]
    for chunk in chunks:
        framer.feed(chunk, batch)
    errors = framer.feed_eof(batch, clean=clean)
    body, messages, _, _, _, cut = batch.take()
    return normalize(body, max_line_bytes=max_bytes).data, messages, errors, cut


MIXED = (
    octet(RFC5424)
    + RFC3164
    + b"\r\n"
    + octet(b"<13>1 - h app - - - first\nsecond\r\nthird\n")
    + PLAIN
    + b"\n"
    + b"\n"
    + octet(b"x")
    + b"12x: digits, then no space: an LF line\n"
    + octet(RFC3164_PID + b"\n")
    + b"last line without LF"
)
MIXED_LINES = [
    RFC5424,
    RFC3164,
    b"<13>1 - h app - - - first#012second#012third",
    PLAIN,
    b"x",
    b"12x: digits, then no space: an LF line",
    RFC3164_PID,
    b"last line without LF",
]


def test_framer_auto_mixes_octet_and_lf() -> None:
    data, messages, errors = frame([MIXED])
    assert data.split(b"\n")[:-1] == MIXED_LINES
    assert messages == 9  # 8 lines + 1 empty LF line
    assert errors == 0


def test_framer_result_does_not_depend_on_read_boundaries() -> None:
    whole = frame([MIXED])
    for cut in range(1, len(MIXED)):
        assert frame([MIXED[:cut], MIXED[cut:]]) == whole, cut
    assert frame([MIXED[i : i + 1] for i in range(len(MIXED))]) == whole
    rng = random.Random(1)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(MIXED)), 6))
        parts = [MIXED[a:b] for a, b in zip([0, *cuts], [*cuts, len(MIXED)], strict=True)]
        assert frame(parts) == whole


def test_framer_lf_mode_never_reads_counts() -> None:
    data, messages, errors = frame([b"5 abcdefgh\n", b"12 x\n"], mode="lf")
    assert data == b"5 abcdefgh\n12 x\n"
    assert (messages, errors) == (2, 0)


def test_framer_octet_mode_is_strict() -> None:
    batch = MessageBatch(480)
    framer = TcpFramer("octet", 480)
    with pytest.raises(Exception, match="octet count"):
        framer.feed(octet(b"good") + b"bad frame\n", batch)
    body, messages, *_ = batch.take()
    assert (body, messages) == (b"good\n", 1)  # what came before the error is kept
    with pytest.raises(Exception, match="octet count"):
        TcpFramer("octet", 480).feed(b"05 hello", MessageBatch(480))


def test_framer_oversize_octet_frame_is_cut_and_skipped() -> None:
    big = b"<1>" + "é".encode() * 600  # 1203 bytes
    stream = octet(big) + octet(b"next")
    whole = frame([stream], max_bytes=480)
    pieces = frame([stream[i : i + 100] for i in range(0, len(stream), 100)], max_bytes=480)
    assert whole == pieces
    data, messages, errors = whole
    first, second = data.split(b"\n")[:2]
    assert first == b"<1>" + "é".encode() * 238  # 480 bytes would split an é: 3 + 476
    assert second == b"next"
    assert (messages, errors) == (2, 0)


def test_framer_oversize_lf_line_is_cut_and_skipped() -> None:
    stream = [b"a" * 300, b"b" * 300, b"c" * 300 + b"\nshort\n"]
    data, messages, _ = frame(stream, mode="lf", max_bytes=480)
    assert data == b"a" * 300 + b"b" * 180 + b"\nshort\n"
    assert messages == 2


def test_framer_frame_cut_by_eof() -> None:
    # An octet frame shorter than its count: kept as far as it got, counted as cut (any end).
    assert frame_cut([b"100 only part"]) == (b"only part\n", 1, 0, 1)
    assert frame_cut([b"100 only part"], clean=False) == (b"only part\n", 1, 0, 1)
    assert frame_cut([b"100 "]) == (b"", 1, 0, 1)  # only its header arrived: counted, no line
    # A last line without LF: complete after a clean end (FIN / close_notify), cut otherwise.
    assert frame_cut([b"12"]) == (b"12\n", 1, 0, 0)
    assert frame_cut([b"<13>last"], mode="lf", clean=False) == (b"<13>last\n", 1, 0, 1)
    # An oversize frame being skipped when the end comes: its prefix was already delivered.
    assert frame_cut([b"900 " + b"a" * 600], max_bytes=480)[1:] == (1, 0, 1)
    assert frame([b"12"], mode="octet") == (b"", 0, 1)  # not even a count: a framing error


# -- TCP over real sockets -------------------------------------------------------------------------


def test_tcp_lf_framing_counts_formats_and_empties() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, framing="lf") as server:
            await send_tcp(server, RFC5424 + b"\n" + RFC3164 + b"\r\n\n" + PLAIN + b"\n")
            await eventually(lambda: server.counters.lines == 3, "3 lines")
            c = server.counters
            assert sink.lines == [RFC5424, RFC3164, PLAIN]
            assert c.by_format == {"rfc5424": 1, "rfc3164": 1, "unknown": 1}
            assert (c.messages, c.empty_skipped, c.bytes) == (4, 1, len(sink.data))
            await eventually(lambda: c.connections_open == 0, "connection closed")
            assert c.connections_total == 1

    run(main())


def test_tcp_octet_counting_with_embedded_newlines() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, framing="octet") as server:
            frames = [octet(RFC5424 + b"\n"), octet(b"<11>1 - - - - - - trace:\n  at a\n  at b")]
            await send_tcp(server, b"".join(frames))
            await eventually(lambda: server.counters.lines == 2, "2 lines")
            assert sink.lines == [RFC5424, b"<11>1 - - - - - - trace:#012  at a#012  at b"]
            assert server.counters.newlines_escaped == 1
            assert server.counters.framing_errors == 0

    run(main())


def test_tcp_auto_mixed_in_small_writes() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink) as server:
            parts = [MIXED[i : i + 7] for i in range(0, len(MIXED), 7)]
            await send_tcp(server, *parts)
            await eventually(lambda: server.counters.lines == len(MIXED_LINES), "all lines")
            assert sink.lines == MIXED_LINES

    run(main())


def test_tcp_invalid_utf8_and_oversize_are_counted() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, max_message_bytes=480) as server:
            await send_tcp(server, b"bad \xff byte\n" + octet(b"y" * 2000) + b"ok\n")
            await eventually(lambda: server.counters.lines == 3, "3 lines")
            assert sink.lines == ["bad \ufffd byte".encode(), b"y" * 480, b"ok"]
            assert (server.counters.invalid_utf8, server.counters.truncated) == (1, 1)

    run(main())


def test_malformed_octet_count_closes_only_that_connection() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, framing="octet") as server:
            try:
                rest = await send_tcp(server, octet(b"<13>1 kept"), b"garbage, not a count")
            except ConnectionResetError:
                rest = b""
            assert rest == b""  # the server closed the connection
            await eventually(lambda: server.counters.framing_errors == 1, "framing error")
            await send_tcp(server, octet(b"<13>1 later"))
            await eventually(lambda: server.counters.lines == 2, "2 lines")
            assert sink.lines == [b"<13>1 kept", b"<13>1 later"]

    run(main())


def test_garbage_clients_do_not_hurt_the_listener() -> None:
    async def main() -> None:
        sink = Sink()
        rng = random.Random(11)
        async with serving(sink, max_message_bytes=480) as server:
            host, port = server.bound_address
            for i in range(20):
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000)))
                if i % 4 == 0:
                    junk = b"999999999 " + junk  # claims a 1 GB frame, then hangs up
                _, writer = await asyncio.open_connection(host, port)
                writer.write(junk)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                if i % 2:
                    # Abort: an RST instead of a clean close.
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
            await eventually(lambda: server.counters.connections_open == 0, "all closed")
            await send_tcp(server, b"<13>still alive\n")
            await eventually(lambda: sink.lines[-1:] == [b"<13>still alive"], "a good line")
            assert server.counters.connections_total == 21

    run(main())


def test_many_concurrent_connections_keep_their_order() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink) as server:
            clients = 60
            per_client = 200

            async def client(n: int) -> None:
                lines = [f"<13>client {n} line {i}".encode() for i in range(per_client)]
                payload = b"".join(octet(x) if i % 2 else x + b"\n" for i, x in enumerate(lines))
                await send_tcp(server, payload[: len(payload) // 2], payload[len(payload) // 2 :])

            await asyncio.gather(*(client(n) for n in range(clients)))
            await eventually(lambda: server.counters.lines == clients * per_client, "all lines")
            by_client: dict[int, list[int]] = {}
            for line in sink.lines:
                _, n, _, i = line.split(b" ")
                by_client.setdefault(int(n), []).append(int(i))
            assert by_client == {n: list(range(per_client)) for n in range(clients)}
            assert server.counters.connections_total == clients

    run(main())


def test_max_connections() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, max_connections=1) as server:
            host, port = server.bound_address
            r1, w1 = await asyncio.open_connection(host, port)
            await eventually(lambda: server.counters.connections_open == 1, "first connection")
            r2, w2 = await asyncio.open_connection(host, port)
            assert await r2.read() == b""  # refused: closed at once
            assert server.counters.connections_rejected == 1
            w1.write(b"<13>first\n")
            w1.write_eof()
            await r1.read()
            await eventually(lambda: sink.lines == [b"<13>first"], "first line")
            for w in (w1, w2):
                w.close()

    run(main())


def test_backpressure_loses_nothing() -> None:
    async def main() -> None:
        sink = Sink(refuse=3)
        async with serving(sink) as server:
            lines = [f"<13>1 - h app - - - message {i}".encode() for i in range(5000)]
            payload = b"\n".join(lines) + b"\n"
            chunks = [payload[i : i + 10_000] for i in range(0, len(payload), 10_000)]
            await send_tcp(server, *chunks)
            await eventually(lambda: server.counters.lines == len(lines), "every line")
            assert sink.lines == lines
            assert server.counters.deliver_retries == 3
            assert server.counters.lost_on_stop == 0

    run(main())


def test_connection_stops_reading_while_the_spool_refuses() -> None:
    async def main() -> None:
        sink = Sink()
        sink.gate = asyncio.Event()
        async with serving(sink) as server:
            line = b"<13>" + b"x" * 195 + b"\n"
            payload = line * (40 * 1024 * 1024 // len(line))  # 40 MiB: more than socket buffers
            host, port = server.bound_address
            _, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            sender = asyncio.ensure_future(writer.drain())
            await asyncio.wait_for(sink.entered.wait(), 10)
            await asyncio.sleep(0.2)  # give a (wrong) server the chance to keep reading
            assert server.counters.bytes_received <= READ_BYTES  # read once, then waited
            sink.gate.set()
            await sender
            writer.write_eof()
            await eventually(lambda: server.counters.bytes_received == len(payload), "all")
            await eventually(lambda: sink.nbytes == len(payload), "all delivered", 30)
            assert sink.data == payload
            writer.close()

    run(main())


def test_stop_while_the_spool_refuses_counts_the_loss() -> None:
    async def main() -> None:
        sink = Sink(refuse=10**9)
        config = SyslogListenerConfig(
            protocol="tcp", listen="127.0.0.1:0", customer_id="c", endpoint="e"
        )
        server = SyslogServer(config, sink.deliver)
        await server.start()
        host, port = server.bound_address
        _, writer = await asyncio.open_connection(host, port)
        writer.write(b"<13>a\n<13>b\n")
        await writer.drain()
        await eventually(lambda: server.counters.deliver_retries >= 2, "retries")
        await server.stop()
        assert server.counters.lost_on_stop == 2
        assert sink.chunks == []
        writer.close()

    run(main())


def test_port_in_use_is_an_input_error() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink) as server:
            _, port = server.bound_address
            config = SyslogListenerConfig(
                protocol="tcp", listen=f"127.0.0.1:{port}", customer_id="c", endpoint="e"
            )
            with pytest.raises(InputError, match="cannot listen on tcp"):
                await SyslogServer(config, sink.deliver).start()

    run(main())


def test_ipv6_listener() -> None:
    async def main() -> None:
        sink = Sink()
        config = SyslogListenerConfig(
            protocol="tcp", listen="[::1]:0", customer_id="c", endpoint="e"
        )
        server = SyslogServer(config, sink.deliver)
        try:
            await server.start()
        except InputError:
            pytest.skip("::1 is not available here")
        try:
            host, port = server.bound_address
            assert host == "::1"
            _, writer = await asyncio.open_connection("::1", port)
            writer.write(b"<13>over v6\n")
            writer.close()
            await eventually(lambda: sink.lines == [b"<13>over v6"], "the line")
        finally:
            await server.stop()

    run(main())


# -- UDP -------------------------------------------------------------------------------------------


def udp_send(server: SyslogServer, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for d in datagrams:
            sock.sendto(d, server.bound_address)


def test_udp_each_datagram_is_one_line() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, protocol="udp") as server:
            udp_send(server, RFC3164 + b"\n", RFC5424, b"", b"\n", b"<13>multi\nline\n", b"\xff")
            await eventually(lambda: server.counters.messages == 6, "6 datagrams")
            await eventually(lambda: server.counters.lines == 4, "4 lines")
            assert sink.lines == [RFC3164, RFC5424, b"<13>multi#012line", "\ufffd".encode()]
            c = server.counters
            assert (c.empty_skipped, c.newlines_escaped, c.invalid_utf8) == (2, 1, 1)
            assert c.by_format == {"rfc5424": 1, "rfc3164": 2, "unknown": 1}

    run(main())


def test_udp_oversize_datagram_is_cut() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, protocol="udp", max_message_bytes=480) as server:
            udp_send(server, b"<13>" + b"z" * 1000 + b"\n")
            await eventually(lambda: server.counters.lines == 1, "1 line")
            assert sink.lines == [b"<13>" + b"z" * 476]
            assert server.counters.truncated == 1

    run(main())


def test_udp_drops_when_the_spool_is_full() -> None:
    async def main() -> None:
        sink = Sink(refuse=1)
        sink.gate = asyncio.Event()
        async with serving(sink, protocol="udp") as server:
            udp_send(server, b"<13>one")
            await asyncio.wait_for(sink.entered.wait(), 10)
            udp_send(server, b"<13>two", b"<13>three")  # wait while the refused one is in flight
            received = len(b"<13>one<13>two<13>three")
            await eventually(lambda: server.counters.bytes_received == received, "3 datagrams")
            sink.gate.set()
            await eventually(lambda: server.counters.lines == 2, "the later two")
            assert sink.lines == [b"<13>two", b"<13>three"]
            assert server.counters.udp_dropped["spool_full"] == 1

    run(main())


def test_udp_other_deliver_errors_are_counted_apart() -> None:
    async def main() -> None:
        sink = Sink(refuse=1, error=lambda: OSError("disk gone"))
        async with serving(sink, protocol="udp") as server:
            udp_send(server, b"<13>lost")
            await eventually(lambda: server.counters.udp_dropped["deliver_error"] == 1, "drop")
            udp_send(server, b"<13>kept")
            await eventually(lambda: sink.lines == [b"<13>kept"], "later datagram")

    run(main())


# -- TLS -------------------------------------------------------------------------------------------


def test_tls_octet_counted(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    server_cert = make_cert(tmp_path, "server")
    cert, key = server_cert.cert_file, server_cert.key_file

    async def main() -> None:
        sink = Sink()
        tls = {"cert_file": str(cert), "key_file": str(key)}
        async with serving(sink, tls=tls) as server:
            await send_tcp(server, octet(RFC5424) + octet(RFC3164), ssl_ctx=client_context(cert))
            await eventually(lambda: server.counters.lines == 2, "2 lines")
            assert sink.lines == [RFC5424, RFC3164]
            # A plain-text client on the TLS port fails its handshake; the listener carries on.
            host, port = server.bound_address
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"<13>not tls\n")
            with contextlib.suppress(ConnectionError):
                await reader.read()
            writer.close()
            await send_tcp(server, octet(b"<13>after"), ssl_ctx=client_context(cert))
            await eventually(lambda: server.counters.lines == 3, "3 lines")
            assert sink.lines[-1] == b"<13>after"

    run(main())


def test_tls_client_certificate_required(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    ca = make_cert(tmp_path, "ca")
    ca_cert = ca.cert_file
    server = make_cert(tmp_path, "server", issuer=ca.issuer)
    client = make_cert(tmp_path, "client", issuer=ca.issuer)
    server_cert, server_key = server.cert_file, server.key_file
    client_cert, client_key = client.cert_file, client.key_file

    async def main() -> None:
        sink = Sink()
        tls = {
            "cert_file": str(server_cert),
            "key_file": str(server_key),
            "ca_file": str(ca_cert),
            "client_auth": "required",
        }
        async with serving(sink, tls=tls) as server:
            anonymous = client_context(ca_cert)
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await send_tcp(server, octet(b"<13>anonymous"), ssl_ctx=anonymous)
            with_cert = client_context(ca_cert)
            with_cert.load_cert_chain(client_cert, client_key)
            await send_tcp(server, octet(b"<13>known client"), ssl_ctx=with_cert)
            await eventually(lambda: server.counters.lines >= 1, "a line")
            assert sink.lines == [b"<13>known client"]
            assert server.counters.connections_total == 1  # the anonymous one never got in

    run(main())


def test_tls_bad_cert_file_is_an_input_error(tmp_path: Path) -> None:
    async def main() -> None:
        (tmp_path / "c.pem").write_text("not a certificate")
        tls = {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}
        with pytest.raises(InputError, match=r"tls\.cert_file"):
            async with serving(Sink(), tls=tls):
                pass

    run(main())
