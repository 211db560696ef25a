"""`serve` on either event loop and HTTP parser: lines land, and an oversized request head is
refused without harming the next request (httptools has no head bound of its own)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads, read_objects
from service_helpers import ServeProcess, base_config, reap_all, s3_customer, wait_for

TOKEN = "token-of-the-parser-customer-0000"


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def _raw_request(url: str, head: bytes, piece: int | None = None) -> bytes:
    """Send `head` at once or in `piece`-byte writes (a head growing over many reads)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            for start in range(0, len(head), piece or len(head)):
                sock.sendall(head[start : start + (piece or len(head))])
                if piece:
                    time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole head was sent: the answer is still readable
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("event_loop", "http_parser", "status"),
    [("uvloop", "httptools", b"431"), ("asyncio", "h11", b"400")],
)
def test_lines_land_and_an_oversized_head_is_refused(
    emulator: Emulator, unique, tmp_path: Path, event_loop: str, http_parser: str, status: bytes
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        server={"event_loop": event_loop, "http_parser": http_parser},
        customers=[s3_customer(customer, "PARSER_TOKEN", role.bucket, role.role_arn)],
    )
    serve = ServeProcess(emulator, config, tmp_path, env={"PARSER_TOKEN": TOKEN}).start()
    assert "logferry ready" in serve.logs()
    assert f'"event_loop": "{event_loop}"' in serve.logs()

    huge = b"x-padding: " + b"a" * 100_000 + b"\r\n"
    head = b"POST /v1/ingest/" + customer.encode() + b"/s3 HTTP/1.1\r\nhost: x\r\n" + huge + b"\r\n"
    answer = _raw_request(serve.url, head, piece=8192)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    if http_parser == "httptools":  # stricter than h11: also a whole oversized head in one read
        answer = _raw_request(serve.url, head)
        assert answer.split(b" ", 2)[1] == b"431", answer[:200]
        assert b"exceed 65536 bytes" in answer

    # Three requests pipelined in one write (the second asks for 100 Continue, the last closes):
    # three whole 202s in order, each head with its body (the httptools protocol sends a head
    # and its body in one write, CoalescingTransport).
    auth = b"authorization: Bearer " + TOKEN.encode() + b"\r\n"
    pipelined = b""
    for i, extra in enumerate((b"", b"expect: 100-continue\r\n", b"connection: close\r\n")):
        one = f"pipelined {i}\n".encode()
        pipelined += (
            b"POST /v1/ingest/" + customer.encode() + b"/s3 HTTP/1.1\r\nhost: x\r\n" + auth + extra
        )
        pipelined += b"content-length: %d\r\n\r\n" % len(one) + one
    answer = _raw_request(serve.url, pipelined).replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    responses = []
    while answer:
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        responses.append((head.split(b" ", 2)[1], rest[:length]))
        answer = rest[length:]
    assert (
        responses
        == [(b"202", b'{"accepted":1,"empty_skipped":0,"truncated":0,"invalid_utf8":0}')] * 3
    )

    lines = [f"line {i} of a request after the refused one".encode() for i in range(2000)]
    body = b"\n".join(lines) + b"\n"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{serve.url}/v1/ingest/{customer}/s3", content=body, headers=headers)
    assert r.status_code == 202, r.text

    def landed() -> Counter[bytes]:
        got: Counter[bytes] = Counter()
        for obj in read_objects(emulator, role.bucket).values():
            assert obj.key.endswith(".log"), obj.key  # no compression by default
            got.update(obj.body.splitlines())
        return got

    got = wait_for(lambda: (c := landed()) and sum(c.values()) >= 2003 and c, timeout=60)
    assert got == Counter(lines + [f"pipelined {i}".encode() for i in range(3)])
    assert pending_uploads(emulator, role.bucket) == []


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_a_response_head_goes_out_with_its_body_in_one_write() -> None:
    import asyncio

    from logferry.service.http_protocol import CoalescingTransport

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        real = _RecordingTransport()
        t = CoalescingTransport(real, loop)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
        assert real.writes == []
        t.write(b"body")
        t.write(b" more")
        assert real.writes == [b"HTTP/1.1 202 Accepted\r\n\r\nbody", b" more"]
        await asyncio.sleep(0)  # the scheduled flush finds nothing held
        assert len(real.writes) == 2
        assert t.get_extra_info("peername") == "info peername"

        bodiless = _RecordingTransport()  # a head alone goes out after this pass of the loop
        t = CoalescingTransport(bodiless, loop)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await asyncio.sleep(0)
        assert bodiless.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]

        closing = _RecordingTransport()  # close() sends what is held first
        t = CoalescingTransport(closing, loop)  # type: ignore[arg-type]
        t.write(b"head")
        t.close()
        assert closing.writes == [b"head"] and closing.closed

    asyncio.run(scenario())
