"""Syslog listeners under hostile or broken peers, over real loopback sockets (in-process).

However a connection ends, everything it delivered to us is framed and handed to the spool;
timeouts, per-source limits, failed handshakes and a deleted endpoint are refused and counted.
The same guarantees through a real `logferry serve` are in test_syslog_serve.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from logferry.ingest.syslog import SyslogCounters, SyslogListenerConfig, SyslogServer
from syslog_helpers import (
    Sink,
    client_context,
    eventually,
    make_cert,
    octet,
    reset,
    run,
    send_and_end,
    send_tcp,
    serving,
    wait_sent,
)

pytest.importorskip("cryptography")

N = 250


def messages(tag: str, n: int = N) -> list[bytes]:
    return [
        f"<134>1 2026-11-30T10:00:00Z host app - - - {tag} {i} ".encode() + b"x" * 80
        for i in range(n)
    ]


def tls_config(tmp: Path) -> tuple[dict[str, str], Path]:
    cert = make_cert(tmp, "server")
    return {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}, cert.cert_file


# -- every received byte, however the connection ends ----------------------------------------------


@pytest.mark.parametrize(
    ("use_tls", "end", "closed_as"),
    [
        (True, "close", "fin_without_close_notify"),
        (True, "rst", "reset"),
        (True, "tls_close", "clean"),
        (False, "close", "clean"),
        (False, "rst", "reset"),
    ],
)
def test_every_message_lands_however_the_sender_ends(
    tmp_path: Path, use_tls: bool, end: str, closed_as: str
) -> None:
    """The spool is held while the sender sends and leaves, so all of it waits in our buffers
    when the end (FIN, RST, TLS EOF) arrives: none of it may be lost."""
    tls, ca = tls_config(tmp_path) if use_tls else (None, None)

    async def main() -> None:
        sink = Sink()
        sink.gate = asyncio.Event()
        async with serving(sink, tls=tls) as server:
            for run_no in range(3):
                sink.gate.clear()
                lines = messages(f"{end}-{run_no}")
                payload = b"".join(octet(m) for m in lines)
                await asyncio.to_thread(
                    send_and_end, server.bound_address, payload, end, ca=ca, chunk=997
                )
                # The sender is gone; let the end reach the listener before the spool opens.
                await eventually(
                    lambda: server.counters.connections_open == 0 or sink.calls > 0, "end"
                )
                await asyncio.sleep(0.1)
                sink.gate.set()
                last = lines[-1:]
                await eventually(lambda: sink.lines[-1:] == last, f"run {run_no}")  # noqa: B023
                assert sink.lines[-len(lines) :] == lines
            c = server.counters
            await eventually(lambda: c.connections_open == 0, "closed")
            assert c.lines == 3 * N and c.truncated_at_close == 0
            assert c.closed[closed_as] == 3, c.closed
            assert c.tls_unclean_closes == (3 if use_tls and closed_as != "clean" else 0)

    run(main())


def test_a_message_cut_by_the_end_is_kept_and_counted(tmp_path: Path) -> None:
    tls, ca = tls_config(tmp_path)

    async def main() -> None:
        sink = Sink()
        async with serving(sink, tls=tls) as server:
            payload = octet(b"<13>1 - h app - - - whole") + b"200 <13>1 - h app - - - half"
            await asyncio.to_thread(send_and_end, server.bound_address, payload, "close", ca=ca)
            await eventually(lambda: server.counters.lines == 2, "2 lines")
            assert sink.lines == [b"<13>1 - h app - - - whole", b"<13>1 - h app - - - half"]
            c = server.counters
            assert (c.truncated_at_close, c.truncated, c.framing_errors) == (1, 1, 0)
            # Plain TCP, LF framing: a last line without LF after a FIN is a complete message,
            # after an RST it is a cut one.
        async with serving(sink, framing="lf") as server:
            await asyncio.to_thread(send_and_end, server.bound_address, b"<13>a\n<13>b", "close")
            await eventually(lambda: server.counters.lines == 2, "FIN")
            assert server.counters.truncated_at_close == 0
            await asyncio.to_thread(send_and_end, server.bound_address, b"<13>c\n<13>d", "rst")
            await eventually(lambda: server.counters.lines == 4, "RST")
            assert server.counters.truncated_at_close == 1
            assert sink.lines[-4:] == [b"<13>a", b"<13>b", b"<13>c", b"<13>d"]

    run(main())


def test_a_tls_error_mid_stream_keeps_what_came_before(tmp_path: Path) -> None:
    tls, ca = tls_config(tmp_path)

    def client(address: tuple[str, int]) -> None:
        raw = socket.create_connection(address)
        sock = client_context(ca).wrap_socket(raw, server_hostname="localhost")
        sock.sendall(octet(b"<13>before the garbage") + octet(b"<13>second"))
        raw = socket.socket(fileno=sock.detach())
        # An application-data record whose authentication tag cannot be right.
        raw.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        wait_sent(raw)
        raw.close()

    async def main() -> None:
        sink = Sink()
        async with serving(sink, tls=tls) as server:
            await asyncio.to_thread(client, server.bound_address)
            c = server.counters
            await eventually(lambda: c.closed["tls_error"] == 1, "tls_error")
            assert c.tls_unclean_closes == 1
            assert sink.lines == [b"<13>before the garbage", b"<13>second"]

    run(main())


# -- timeouts (slowloris) --------------------------------------------------------------------------


def test_a_silent_connection_is_closed_by_the_idle_timeout() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, idle_timeout_seconds=0.3) as server:
            host, port = server.bound_address
            reader, writer = await asyncio.open_connection(host, port)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
            writer.close()
            await eventually(lambda: server.counters.closed["idle_timeout"] == 1, "idle timeout")
            # A connection that keeps talking is not idle.
            await send_tcp(server, b"<13>fine\n")
            await eventually(lambda: sink.lines == [b"<13>fine"], "a line")

    run(main())


def test_a_trickled_message_is_closed_by_the_read_timeout() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, read_timeout_seconds=0.5, idle_timeout_seconds=60) as server:
            host, port = server.bound_address
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"<13>done\n100 <13>slow")
            closed = False
            for _ in range(200):  # a byte every 50 ms: never idle, never complete
                await asyncio.sleep(0.05)
                try:
                    writer.write(b".")
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                if reader.at_eof() or server.counters.closed["read_timeout"]:
                    closed = True
                    break
            writer.close()
            assert closed, "the trickling connection was never closed"
            c = server.counters
            await eventually(lambda: c.closed["read_timeout"] == 1, "read timeout")
            await eventually(lambda: c.lines == 2, "both lines")
            assert sink.lines[0] == b"<13>done" and sink.lines[1].startswith(b"<13>slow.")
            assert c.truncated_at_close == 1  # the cut message is kept and counted

    run(main())


def test_slow_but_complete_messages_are_not_a_read_timeout() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, read_timeout_seconds=2, idle_timeout_seconds=60) as server:
            host, port = server.bound_address
            _, writer = await asyncio.open_connection(host, port)
            for i in range(30):  # 3 s in all, each message complete within 0.1 s
                writer.write(f"<13>m{i}".encode())
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"\n")
                await asyncio.sleep(0.05)
            writer.write_eof()
            await eventually(lambda: server.counters.lines == 30, "30 lines")
            assert server.counters.closed["read_timeout"] == 0
            writer.close()

    run(main())


# -- connection limits -----------------------------------------------------------------------------


def test_connections_per_source_are_limited_and_counted() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink, max_connections_per_source=2) as server:
            host, port = server.bound_address
            held = [await asyncio.open_connection(host, port) for _ in range(2)]
            await eventually(lambda: server.counters.connections_open == 2, "2 open")
            r3, w3 = await asyncio.open_connection(host, port)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r3.read(), 10) == b""  # refused: closed at once
            w3.close()
            c = server.counters
            assert c.refused["per_source"] == 1 and c.connections_rejected == 1
            _, w1 = held[0]
            w1.write(b"<13>one\n")
            w1.write_eof()
            await eventually(lambda: c.connections_open == 1, "one closed")
            await send_tcp(server, b"<13>after\n")  # a slot is free again
            await eventually(lambda: sink.lines == [b"<13>one", b"<13>after"], "lines")
            for _, w in held:
                w.close()

    run(main())


# -- TLS handshakes and client certificates --------------------------------------------------------


def test_failed_handshakes_are_counted(tmp_path: Path) -> None:
    tls, ca = tls_config(tmp_path)
    tls["handshake_timeout_seconds"] = "0.3"

    async def main() -> None:
        sink = Sink()
        async with serving(sink, tls=tls) as server:
            host, port = server.bound_address
            c = server.counters
            # Plain text on the TLS port.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"<13>not tls\n")
            with contextlib.suppress(ConnectionError):
                await reader.read()
            writer.close()
            await eventually(lambda: c.tls_handshake_failures == 1, "not TLS")
            # A client that never starts its handshake (handshake timeout).
            reader, writer = await asyncio.open_connection(host, port)
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await eventually(lambda: c.tls_handshake_failures == 2, "handshake timeout")
            # A client that does not trust our certificate aborts the handshake.
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await send_tcp(server, b"<13>x\n", ssl_ctx=ssl.create_default_context())
            await eventually(lambda: c.tls_handshake_failures == 3, "untrusted server")
            await send_tcp(server, octet(b"<13>good"), ssl_ctx=client_context(ca))
            await eventually(lambda: sink.lines == [b"<13>good"], "a good client")
            assert c.connections_total == 1

    run(main())


def test_client_certificates_required_and_optional(tmp_path: Path) -> None:
    ca = make_cert(tmp_path, "ca")
    server_cert = make_cert(tmp_path, "server", issuer=ca.issuer)
    client = make_cert(tmp_path, "client", issuer=ca.issuer)
    stranger_ca = make_cert(tmp_path, "stranger-ca")
    stranger = make_cert(tmp_path, "stranger", issuer=stranger_ca.issuer)

    def ctx(cert: object | None) -> ssl.SSLContext:
        context = client_context(ca.cert_file)
        if cert is not None:
            context.load_cert_chain(cert.cert_file, cert.key_file)  # type: ignore[attr-defined]
        return context

    async def main() -> None:
        for mode in ("required", "optional"):
            sink = Sink()
            tls = {
                "cert_file": str(server_cert.cert_file),
                "key_file": str(server_cert.key_file),
                "ca_file": str(ca.cert_file),
                "client_auth": mode,
            }
            async with serving(sink, tls=tls) as server:
                for who, cert in (("anonymous", None), ("stranger", stranger), ("known", client)):
                    with contextlib.suppress(ssl.SSLError, ConnectionError):
                        await send_tcp(server, octet(f"<13>{who}".encode()), ssl_ctx=ctx(cert))
                expected = (
                    [b"<13>known"] if mode == "required" else [b"<13>anonymous", b"<13>known"]
                )
                await eventually(lambda: sink.lines == expected, f"{mode}: {expected}")  # noqa: B023
                c = server.counters
                await eventually(
                    lambda: c.tls_handshake_failures == 3 - len(expected),  # noqa: B023
                    f"{mode}: refused certificates counted",
                )

    run(main())


# -- a deleted endpoint ----------------------------------------------------------------------------


def test_a_missing_endpoint_refuses_and_drops_counted_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exists = {"now": True}

    class GoneSink(Sink):
        """Like the service: an append for a deleted endpoint raises."""

        async def deliver(self, data: bytes, lines: int) -> None:
            self.entered.set()
            if self.gate is not None:
                await self.gate.wait()
            if not exists["now"]:
                raise RuntimeError("customer 'c' has no endpoint 'e'")
            self.chunks.append(data)

    async def main() -> None:
        sink = GoneSink()
        sink.gate = asyncio.Event()
        tcp = SyslogListenerConfig(
            protocol="tcp", listen="127.0.0.1:0", customer_id="c", endpoint="e"
        )
        udp = tcp.model_copy(update={"protocol": "udp"})
        servers = [
            SyslogServer(
                cfg, sink.deliver, counters=SyslogCounters(), endpoint_exists=lambda: exists["now"]
            )
            for cfg in (tcp, udp)
        ]
        for s in servers:
            await s.start()
        t, u = servers
        try:
            # A connection open when the endpoint goes: its lines are dropped, counted, closed.
            host, port = t.bound_address
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"<13>in flight\n")
            await writer.drain()
            await asyncio.wait_for(sink.entered.wait(), 10)
            exists["now"] = False
            sink.gate.set()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await eventually(lambda: t.counters.endpoint_missing_lines == 1, "in-flight lines")
            assert t.counters.closed["endpoint_missing"] == 1
            # New connections are refused, datagrams dropped: counted, no retry loop.
            for _ in range(3):
                r, w = await asyncio.open_connection(host, port)
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(r.read(), 10)
                w.close()
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"<13>udp while gone", u.bound_address)
            await eventually(lambda: t.counters.refused["endpoint_missing"] == 3, "refused")
            await eventually(lambda: u.counters.udp_dropped["endpoint_missing"] == 3, "dropped")
            assert t.counters.deliver_retries == 0 and sink.lines == []
            # Back again: accepted again.
            exists["now"] = True
            await send_tcp(t, b"<13>tcp is back\n")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"<13>udp is back", u.bound_address)
            await eventually(lambda: len(sink.lines) == 2, "both back")
            assert sorted(sink.lines) == [b"<13>tcp is back", b"<13>udp is back"]
        finally:
            for s in servers:
                await s.stop()

    with caplog.at_level(logging.INFO, logger="logferry.ingest.syslog"):
        run(main())
    gone = [r for r in caplog.records if "no longer exists" in r.getMessage()]
    back = [r for r in caplog.records if "exists again" in r.getMessage()]
    assert len(gone) == 2 and len(back) == 2  # once per listener, not once per attempt


# -- stop, config ----------------------------------------------------------------------------------


def test_stop_keeps_a_partial_message_and_counts_it() -> None:
    async def main() -> None:
        sink = Sink()
        config = SyslogListenerConfig(
            protocol="tcp", listen="127.0.0.1:0", customer_id="c", endpoint="e"
        )
        server = SyslogServer(config, sink.deliver)
        await server.start()
        _, writer = await asyncio.open_connection(*server.bound_address)
        writer.write(b"<13>whole\n50 <13>half")
        await writer.drain()
        await eventually(lambda: server.counters.lines == 1, "first line")
        await server.stop()
        assert sink.lines == [b"<13>whole", b"<13>half"]
        assert server.counters.truncated_at_close == 1 and server.counters.closed["stopped"] == 1
        writer.close()

    run(main())


def test_listener_options_are_validated() -> None:
    base = {"protocol": "tcp", "listen": "127.0.0.1:1", "customer_id": "c", "endpoint": "e"}
    cfg = SyslogListenerConfig(**base)
    assert (cfg.idle_timeout_seconds, cfg.read_timeout_seconds) == (600.0, 60.0)
    assert (cfg.max_connections, cfg.max_connections_per_source) == (1000, 100)
    for bad in (
        {"idle_timeout_seconds": -1},
        {"read_timeout_seconds": -0.5},
        {"max_connections_per_source": 0},
        {"tls": {"cert_file": "c", "key_file": "k", "handshake_timeout_seconds": 0}},
    ):
        with pytest.raises(ValidationError):
            SyslogListenerConfig(**base, **bad)
    udp = {**base, "protocol": "udp"}
    SyslogListenerConfig(**udp)
    with pytest.raises(ValidationError, match="idle_timeout_seconds: protocol 'tcp' only"):
        SyslogListenerConfig(**udp, idle_timeout_seconds=5)
    with pytest.raises(ValidationError, match="max_connections_per_source"):
        SyslogListenerConfig(**udp, max_connections_per_source=5)


def test_rst_right_after_connect_is_harmless() -> None:
    async def main() -> None:
        sink = Sink()
        async with serving(sink) as server:
            for _ in range(5):
                s = socket.create_connection(server.bound_address)
                wait_sent(s)
                reset(s)
            await eventually(lambda: server.counters.closed["reset"] == 5, "5 resets")
            await send_tcp(server, b"<13>ok\n")
            await eventually(lambda: sink.lines == [b"<13>ok"], "a line")
            assert server.counters.connection_errors == 0

    run(main())


def test_listener_options_in_the_toml_config(tmp_path: Path) -> None:
    from logferry.errors import InputError
    from logferry.service.config import load_config

    listener = """
[[listeners]]
protocol = "tcp"
listen = "127.0.0.1:6514"
customer_id = "acme"
endpoint = "s3"
max_connections_per_source = 5
idle_timeout_seconds = 30
read_timeout_seconds = 0
[listeners.tls]
cert_file = "s.crt"
key_file = "s.key"
ca_file = "ca.pem"
client_auth = "optional"
handshake_timeout_seconds = 3
"""
    path = tmp_path / "logferry.toml"
    path.write_text(listener)
    cfg = load_config(path).listeners[0]
    assert (cfg.max_connections_per_source, cfg.idle_timeout_seconds) == (5, 30)
    assert cfg.read_timeout_seconds == 0 and cfg.tls is not None
    assert (cfg.tls.client_auth, cfg.tls.handshake_timeout_seconds) == ("optional", 3)
    path.write_text(listener.replace("idle_timeout_seconds = 30", "idle_timeout_seconds = -1"))
    with pytest.raises(InputError, match=r"listeners\.0\.idle_timeout_seconds"):
        load_config(path)
    path.write_text(listener.replace('ca_file = "ca.pem"\n', ""))
    with pytest.raises(InputError, match="client_auth = 'optional' needs ca_file"):
        load_config(path)
