"""HTTP listener limits through a real `serve`, on both parsers: slow and idle connections are
closed, a source address over its cap is refused, bodies over the in-flight budget get 503 +
Retry-After before they are read — and meanwhile another client's lines are accepted and land.

Other source addresses are other loopback addresses (127.0.0.2 …), all on this host."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, s3_customer, wait_for

TOKEN = "token-of-the-limits-customer-000"
PARSERS = [("uvloop", "httptools"), ("asyncio", "h11")]


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def _start(emulator: Emulator, unique, tmp_path: Path, parser: tuple[str, str], **server):
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        server={"event_loop": parser[0], "http_parser": parser[1], **server},
        customers=[s3_customer(customer, "LIMITS_TOKEN", role.bucket, role.role_arn)],
    )
    serve = ServeProcess(emulator, config, tmp_path, env={"LIMITS_TOKEN": TOKEN}).start()
    return serve, customer, role


def _connect(serve: ServeProcess, source: str = "127.0.0.1") -> socket.socket:
    host, port = serve.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset also ends it); socket timeout
    (30 s) fails the test: the server never closed."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response's head and body (by its Content-Length), the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"<closed>"
        assert not data.endswith(b"<closed>"), data
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536) or b"<closed>"
        assert not body.endswith(b"<closed>"), body
    return head, body


def _head(customer: str, extra: str) -> bytes:
    return (
        f"POST /v1/ingest/{customer}/s3 HTTP/1.1\r\nhost: x\r\n"
        f"authorization: Bearer {TOKEN}\r\n{extra}\r\n"
    ).encode()


def _metrics(serve: ServeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with serve.admin() as admin:
        text = admin.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _metric(serve: ServeProcess, name: str, **labels: str) -> float:
    return _metrics(serve).get((name, tuple(sorted(labels.items()))), 0.0)


def _post(serve: ServeProcess, customer: str, lines: list[bytes]) -> httpx.Response:
    return httpx.post(
        f"{serve.url}/v1/ingest/{customer}/s3",
        content=b"\n".join(lines) + b"\n",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )


def _landed(emulator: Emulator, bucket: str, expected: int) -> Counter[bytes]:
    def got() -> Counter[bytes]:
        lines: Counter[bytes] = Counter()
        for obj in read_objects(emulator, bucket).values():
            lines.update(obj.body.splitlines())
        return lines

    return wait_for(lambda: (c := got()) and sum(c.values()) >= expected and c, timeout=90)


@pytest.mark.parametrize("parser", PARSERS, ids=[p[1] for p in PARSERS])
def test_idle_slow_head_and_stalled_body_are_closed_while_others_are_served(
    emulator: Emulator, unique, tmp_path: Path, parser: tuple[str, str]
) -> None:
    serve, customer, role = _start(
        emulator,
        unique,
        tmp_path,
        parser,
        head_timeout_seconds=1,
        body_timeout_seconds=2,
        max_body_bytes="64KiB",
    )
    idle = _connect(serve, "127.0.0.2")  # never sends a byte
    slow_head = _connect(serve, "127.0.0.3")
    slow_head.sendall(f"POST /v1/ingest/{customer}/s3 HTTP/1.1\r\nhost: x\r\nx-slow: ".encode())
    stalled = _connect(serve, "127.0.0.4")
    stalled.sendall(_head(customer, "content-length: 1000\r\n") + b"first line")

    # The slow head trickles a byte every 0.2 s until the server answers (and closes).
    for _ in range(300):
        if select.select([slow_head], [], [], 0.2)[0]:
            break
        slow_head.sendall(b"a")

    # Answered (413) before its body is sent; the body then comes (and is dropped) and the
    # connection goes idle: closed like any idle one.
    answered_early = _connect(serve, "127.0.0.5")
    answered_early.sendall(_head(customer, f"content-length: {65 * 1024}\r\n"))
    head, _ = _read_response(answered_early)
    assert head.startswith(b"HTTP/1.1 413 "), head
    answered_early.sendall(b"x" * 65 * 1024)

    # Answered (413), then its body stalls: closed by the body limit, with no second answer.
    answered_stalled = _connect(serve, "127.0.0.7")
    answered_stalled.sendall(_head(customer, f"content-length: {65 * 1024}\r\n"))
    head, _ = _read_response(answered_stalled)
    assert head.startswith(b"HTTP/1.1 413 "), head
    answered_stalled.sendall(b"x" * 1024)

    # Answered (413) before a 64 MiB body: the server reads at most 1 MiB more, then closes.
    refused_big = _connect(serve, "127.0.0.6")
    refused_big.sendall(_head(customer, f"content-length: {64 * 2**20}\r\n"))
    head, _ = _read_response(refused_big)
    assert head.startswith(b"HTTP/1.1 413 "), head
    with pytest.raises(OSError):  # broken pipe / reset: nobody reads the rest
        refused_big.sendall(b"x" * 64 * 2**20)
    refused_big.close()

    # A legitimate body sent in pieces, each well within body_timeout of the last: accepted.
    steady = _connect(serve)
    body = b"".join(f"steady {i}\n".encode() for i in range(10))
    steady.sendall(_head(customer, f"content-length: {len(body)}\r\n"))
    for start in range(0, len(body), 10):
        steady.sendall(body[start : start + 10])
        time.sleep(0.3)

    mid = [f"during the attack {i}".encode() for i in range(100)]
    assert _post(serve, customer, mid).status_code == 202

    assert _read_until_closed(idle) == b""  # nothing asked, nothing answered: closed
    answer = _read_until_closed(slow_head)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"server.head_timeout_seconds" in answer
    answer = _read_until_closed(stalled)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"server.body_timeout_seconds" in answer
    head, _ = _read_response(steady)
    assert head.startswith(b"HTTP/1.1 202 "), head
    assert _read_until_closed(answered_early) == b""
    assert _read_until_closed(answered_stalled) == b""
    for sock in (idle, slow_head, stalled, steady, answered_early, answered_stalled):
        sock.close()

    got = _landed(emulator, role.bucket, 110)
    assert got == Counter(mid + [f"steady {i}".encode() for i in range(10)])
    assert b"first line" not in got  # the stalled request was dropped whole
    metrics = _metrics(serve)
    closed = "logferry_http_timed_out_connections_total"
    for reason in ("idle_timeout", "head_timeout", "body_timeout"):
        assert metrics[(closed, (("reason", reason),))] >= 1, reason
    assert serve.terminate() == 0


@pytest.mark.parametrize("parser", PARSERS, ids=[p[1] for p in PARSERS])
def test_connection_cap_per_source_and_the_body_budget(
    emulator: Emulator, unique, tmp_path: Path, parser: tuple[str, str]
) -> None:
    serve, customer, role = _start(
        emulator,
        unique,
        tmp_path,
        parser,
        max_connections_per_source=8,
        max_body_bytes="1MiB",
        max_body_bytes_in_flight="2MiB",
        max_body_bytes_in_flight_per_source="1MiB",
    )
    # Eight connections from 127.0.0.2 are held; its ninth is closed at once, unanswered.
    held = [_connect(serve, "127.0.0.2") for _ in range(8)]
    wait_for(lambda: _metric(serve, "logferry_http_connections_open") >= 8, timeout=30)
    ninth = _connect(serve, "127.0.0.2")
    with contextlib.suppress(OSError):
        ninth.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert _read_until_closed(ninth) == b""
    assert _metric(serve, "logferry_http_refused_total", reason="max_per_source") >= 1
    assert httpx.get(f"{serve.url}/healthz").status_code == 200  # other addresses go on
    for sock in held:
        sock.close()

    # Two bodies in progress hold 2 MiB - 100 KiB of the 2 MiB budget.
    line = b"h" * 1023 + b"\n"
    sizes = [1024 * 1024, 1024 * 1024 - 100 * 1024]
    holders = []
    for i, size in enumerate(sizes):
        sock = _connect(serve, f"127.0.0.{5 + i}")
        sock.sendall(_head(customer, f"content-length: {size}\r\n") + line)
        holders.append(sock)
    in_flight = "logferry_http_body_bytes_in_flight"
    wait_for(lambda: _metric(serve, in_flight) == sum(sizes), timeout=30)

    # A third declaring 200 KiB: 503 + Retry-After before its body is read; the connection
    # stays usable (uvicorn drops the body if it comes) unless the client waits for 100.
    third = _connect(serve, "127.0.0.7")
    third.sendall(_head(customer, f"content-length: {200 * 1024}\r\n"))
    head, rest = _read_response(third)
    assert head.startswith(b"HTTP/1.1 503 "), head
    assert b"\r\nretry-after: 1\r\n" in head.lower() + b"\r\n", head
    assert b"max_body_bytes_in_flight" in rest
    third.close()
    expecting = _connect(serve, "127.0.0.7")
    expecting.sendall(_head(customer, f"content-length: {200 * 1024}\r\nexpect: 100-continue\r\n"))
    answer = _read_until_closed(expecting)
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert b"100 Continue" not in answer
    expecting.close()
    # The address of the first holder is at its own share (1 MiB): 503 for it alone.
    same_source = _connect(serve, "127.0.0.5")
    same_source.sendall(_head(customer, "content-length: 10\r\n"))
    head, rest = _read_response(same_source)
    assert head.startswith(b"HTTP/1.1 503 "), head
    assert b"max_body_bytes_in_flight_per_source" in rest
    same_source.close()
    assert _metric(serve, "logferry_http_refused_total", reason="body_budget_per_source") == 1

    # A chunked body is counted as it arrives and cut when it passes the budget.
    chunked = _connect(serve, "127.0.0.8")
    chunked.sendall(_head(customer, "transfer-encoding: chunked\r\n"))
    piece = line * 32
    with contextlib.suppress(OSError):
        for _ in range(8):  # 256 KiB > the 100 KiB left
            chunked.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    answer = _read_until_closed(chunked)
    if answer:  # a reset may beat the answer: the count below is the proof
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
    chunked.close()
    assert _metric(serve, "logferry_http_refused_total", reason="body_budget") == 3

    # Meanwhile a small request from another client still gets in (it fits the 100 KiB left).
    mid = [f"while the budget is held {i}".encode() for i in range(100)]
    assert _post(serve, customer, mid).status_code == 202

    # The holders finish: accepted; the budget is whole again and the refused size now fits.
    for sock, size in zip(holders, sizes, strict=True):
        sock.sendall(line * (size // len(line) - 1))
        head, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 202 "), head
        sock.close()
    wait_for(lambda: _metric(serve, in_flight) == 0, timeout=30)
    retried = [f"retried {i}".encode() for i in range(20_000)]  # ≈ 250 KiB
    assert _post(serve, customer, retried).status_code == 202

    expected = len(mid) + len(retried) + sum(sizes) // len(line)
    got = _landed(emulator, role.bucket, expected)
    assert got == Counter(mid + retried + [line[:-1]] * (sum(sizes) // len(line)))
    assert serve.terminate() == 0


def test_connection_and_budget_accounting_without_a_network() -> None:
    """The caps' bookkeeping: refusals by reason, an address freed when its connection ends,
    and budget shares returned whole."""
    import asyncio

    from logferry.service.listener_limits import BodyBudget, ConnectionLimits

    async def scenario() -> None:
        refused: list[str] = []
        limits = ConnectionLimits(
            head_timeout=30,
            body_timeout=30,
            max_connections=3,
            max_per_source=2,
            refused=refused.append,
        )

        class Conn:
            limits_deadline = 0.0

            def limits_expired(self, now: float) -> None:
                raise AssertionError("no deadline was set")

        a1, a2, a3, b1, c1 = (Conn() for _ in range(5))
        assert limits.admit(a1, "a") is None and limits.admit(a2, "a") is None
        assert limits.admit(a3, "a") == "max_per_source"
        assert limits.admit(b1, "b") is None
        assert limits.admit(c1, "c") == "max_connections"
        limits.forget(a3, "a")  # refused: never counted, forgetting it changes nothing
        assert limits.per_source == {"a": 2, "b": 1}
        limits.forget(a1, "a")
        assert limits.admit(c1, "c") is None
        assert limits.per_source == {"a": 1, "b": 1, "c": 1}
        assert refused == ["max_per_source", "max_connections"]
        await limits.stop()

    asyncio.run(scenario())

    budget = BodyBudget(100, per_source=60)
    assert budget.take(60, "a") is None
    assert budget.take(1, "a") == "source"
    assert budget.take(40, "b") is None
    assert budget.take(1, "c") == "budget"
    budget.give(60, "a")
    assert budget.take(60, "c") is None
    budget.give(40, "b")
    budget.give(60, "c")
    assert (budget.in_flight, budget.by_source) == (0, {})


@pytest.mark.parametrize("parser", PARSERS, ids=[p[1] for p in PARSERS])
def test_a_413_before_the_body_says_close_when_the_rest_is_too_big_to_drop(
    emulator: Emulator, unique, tmp_path: Path, parser: tuple[str, str]
) -> None:
    """A body refused before it is read: when more of it is still to come than the server will
    read and drop (1 MiB), the answer carries `connection: close`, so no client sends its next
    request on a connection the server is about to close (CI once saw that as a reset in
    place of the next request's answer). A small rest is dropped and the connection goes on."""
    serve, customer, role = _start(
        emulator, unique, tmp_path, parser, max_body_bytes="256KiB", max_line_bytes="64KiB"
    )
    line = b"k" * 1023 + b"\n"

    # 356 KiB declared: 413 at once, the rest (within 1 MiB) is read and dropped, and the same
    # connection then takes a request.
    small_over = 356 * 1024
    sock = _connect(serve)
    sock.sendall(_head(customer, f"content-length: {small_over}\r\n"))
    head, body = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"max_body_bytes" in body or b"limit" in body, body
    assert b"connection: close" not in head.lower(), head
    sock.sendall(b"z" * small_over)
    ok = b"after a dropped body\n"
    sock.sendall(_head(customer, f"content-length: {len(ok)}\r\n") + ok)
    head, _ = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 202 "), head
    sock.close()

    # 3 MiB declared: 413 with connection: close, and the server closes once it has answered.
    for declared, chunked in ((3 * 1024 * 1024, False), (None, True)):
        sock = _connect(serve)
        framing = "transfer-encoding: chunked" if chunked else f"content-length: {declared}"
        sock.sendall(_head(customer, framing + "\r\n"))
        if chunked:  # a chunked body is refused once it passes the limit
            with contextlib.suppress(OSError):
                for _ in range(2048):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(line) * 64, line * 64))
        answer = _read_until_closed(sock)
        head = answer.partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 413 "), (framing, answer[:300])
        assert b"\r\nconnection: close" in head.lower(), (framing, head)
        sock.close()

    # Through a pooled client: the 413 then more requests on the same client, none reset.
    with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for i in range(5):
            refused = c.post(f"/v1/ingest/{customer}/s3", content=b"x" * (2 * 1024 * 1024))
            assert refused.status_code == 413, refused.text
            assert c.post(f"/v1/ingest/{customer}/s3", content=b"ok %d\n" % i).status_code == 202
    got = _landed(emulator, role.bucket, 6)
    assert got == Counter([ok[:-1]] + [b"ok %d" % i for i in range(5)])
    assert serve.terminate() == 0
