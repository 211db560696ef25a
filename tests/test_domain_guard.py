"""An S3 `domain` cannot reach the vendor's own network (issue 27, docs/security.md "S3 domain").

Traffic goes to loopback only: the address rule is a table with no network call, the
connect-time guard is driven by an injected resolver, and `serve` is tried with loopback
spellings while loopback listeners count the connections they get (there must be none).
"""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import HTTPClientError

from logferry.aws import address_guard
from logferry.aws.address_guard import (
    AddressGuard,
    DomainRefused,
    literal_refusal,
    parse_literal,
    refusal_message,
    refusal_reason,
)
from logferry.aws.clients import AwsClients, AwsTarget
from logferry.aws.role_check import S3Target, check_role
from logferry.aws.sts_broker import CredentialBroker
from logferry.errors import SetupError
from logferry.local.emulator import Emulator
from logferry.service.endpoints import FieldError, parse_endpoint
from logferry.sinks.aws_errors import classify
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    yield
    reap_all()


# --- the address rule: a table, no network -----------------------------------------------------

RULE = [
    # IPv4
    ("127.0.0.1", "loopback"),
    ("127.0.0.2", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "private"),  # CGNAT, RFC 6598
    ("100.127.255.254", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "reserved"),  # "this network"
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.1", "reserved"),  # documentation
    ("198.18.0.1", "reserved"),  # benchmarking
    ("192.0.0.8", "reserved"),  # IETF protocol assignments
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("febf::1", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),  # unique-local
    ("fec0::1", "private"),  # site-local (deprecated)
    ("ff02::1", "multicast"),
    ("2001:db8::1", "reserved"),
    ("3fff::1", "reserved"),  # documentation (RFC 9637)
    ("5f00::1", "reserved"),
    # IPv6 spellings of IPv4 addresses: judged by the IPv4 address they reach
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible, deprecated
    ("::10.0.0.1", "reserved"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b:1::1", "private"),  # local-use NAT64
    ("2002:7f00:1::1", "loopback"),  # 6to4
    ("2002:c0a8:101::1", "private"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "reserved"),  # Teredo
    # public
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("52.216.0.1", None),
    ("100.63.255.255", None),  # just below CGNAT
    ("100.128.0.0", None),  # just above
    ("172.32.0.1", None),
    ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),
    ("64:ff9b::808:808", None),
    ("2002:808:808::1", None),
]


@pytest.mark.parametrize(("address", "reason"), RULE)
def test_address_rule(address: str, reason: str | None) -> None:
    assert refusal_reason(ip_address(address)) == reason


SPELLINGS = [
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("10.1", "10.0.0.1"),
    ("[::1]", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("0", "0.0.0.0"),
    ("storage.example.com", None),
    ("s3.eu-central-1.amazonaws.com", None),
    ("0x7g.1", None),
]


@pytest.mark.parametrize(("host", "address"), SPELLINGS)
def test_literal_spellings_are_read_as_libc_reads_them(host: str, address: str | None) -> None:
    parsed = parse_literal(host)
    assert (None if parsed is None else str(parsed)) == address


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST.", "s3.localhost", "127.0.0.2", "2130706433", "0x7f.1", "[::1]"],
)
def test_loopback_names_and_spellings_are_refused_without_dns(host: str) -> None:
    assert literal_refusal(host) == "loopback"


@pytest.mark.parametrize(
    "domain",
    [
        "127.0.0.2",
        "localhost:9000",
        "https://[::ffff:127.0.0.1]",
        "http://2130706433:80",
        "10.0.0.5",
        "169.254.169.254",
        "[fd00::1]",
        "0.0.0.0",
    ],
)
def test_parse_endpoint_refuses_literal_inside_addresses_unless_allowed(domain: str) -> None:
    body = {
        "type": "s3",
        "bucket_name": "logs",
        "iam_role": "arn:aws:iam::123456789012:role/r",
        "domain": domain,
    }
    with pytest.raises(FieldError) as refused:
        parse_endpoint("s3", body, allow_http_domain=True)
    (error,) = refused.value.errors
    assert error["loc"] == ["body", "domain"]
    assert "aws.allow_private_domain" in error["msg"] and "domain" in error["msg"]
    _, model = parse_endpoint("s3", body, allow_http_domain=True, allow_private_domain=True)
    assert model.domain is not None


# --- the connect-time guard, with an injected resolver -------------------------------------------


class Listener:
    """A plain loopback socket server that counts the connections it accepts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, family: int = socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(2)
            try:
                self.requests.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    made = Listener()
    yield made
    made.close()


def _s3_client(url: str) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def test_a_name_that_rebinds_to_loopback_at_connect_time_is_refused(listener: Listener) -> None:
    answers = [["93.184.215.14"], ["127.0.0.1"]]
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return answers[min(len(calls), len(answers)) - 1]

    guard = AddressGuard(resolve=resolver)
    name = "rebind.example"
    assert guard.checked_addresses(name, listener.port) == ["93.184.215.14"]  # the first check
    client = _s3_client(f"http://{name}:{listener.port}")
    address_guard.install(client, guard)
    assert address_guard.is_guarded(client)
    with pytest.raises(HTTPClientError) as raised:
        client.put_object(Bucket="b", Key="k", Body=b"customer line\n")
    assert isinstance(raised.value.kwargs["error"], DomainRefused)
    assert calls == [(name, listener.port), (name, listener.port)]  # resolved again to connect
    assert listener.accepted == 0
    # Our error tree: a setup error the customer must fix, never retried, with the one text.
    error = classify(raised.value, service="s3", operation="PutObject", region="us-east-1")
    assert isinstance(error, SetupError) and error.code == "DomainRefused"
    assert error.message == refusal_message(name) and "aws.allow_private_domain" in str(error.fix)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]"]
)
def test_guarded_client_refuses_loopback_spellings_with_the_system_resolver(
    listener: Listener, host: str
) -> None:
    """What a stored endpoint that never passed PUT's check meets: refused at connect time."""
    client = _s3_client(f"http://{host}:{listener.port}")
    address_guard.install(client)
    with pytest.raises(HTTPClientError) as raised:
        client.put_object(Bucket="b", Key="k", Body=b"x")
    assert isinstance(raised.value.kwargs["error"], DomainRefused)
    assert listener.accepted == 0


def test_through_a_vendor_proxy_the_tunnel_target_is_checked_first(listener: Listener) -> None:
    """With an outbound proxy the proxy connects; a CONNECT to a name that resolves inside is
    refused before the proxy (here the listener) is even contacted."""
    guard = AddressGuard(resolve=lambda _h, _p: ["10.0.0.7"])
    client = botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url="https://storage.example.com",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(
            retries={"total_max_attempts": 1},
            proxies={"https": f"http://127.0.0.1:{listener.port}"},
        ),
    )
    address_guard.install(client, guard)
    with pytest.raises(HTTPClientError) as raised:
        client.put_object(Bucket="b", Key="k", Body=b"x")
    refusal = raised.value.kwargs["error"]
    assert isinstance(refusal, DomainRefused) and refusal.domain == "storage.example.com"
    assert listener.accepted == 0


def test_one_inside_address_among_public_ones_is_refused(listener: Listener) -> None:
    guard = AddressGuard(resolve=lambda _h, _p: ["93.184.215.14", "127.0.0.1"])
    client = _s3_client(f"http://mixed.example:{listener.port}")
    address_guard.install(client, guard)
    with pytest.raises(HTTPClientError):
        client.put_object(Bucket="b", Key="k", Body=b"x")
    assert listener.accepted == 0


def test_the_same_client_unguarded_does_connect(listener: Listener) -> None:
    """The control: without the guard the listener does see the request (the tests can fail)."""
    client = _s3_client(f"http://127.0.0.1:{listener.port}")
    with pytest.raises(Exception):  # noqa: B017 - the listener answers 500
        client.put_object(Bucket="b", Key="k", Body=b"x")
    assert listener.accepted >= 1


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_guard_connects_to_the_checked_address_and_keeps_the_host_name(
    listener: Listener, scheme: str
) -> None:
    """Resolved once, connected to that address, and the request still names the host: in the
    Host header (http) and in the TLS ClientHello's SNI (https), which the certificate check
    uses as well."""
    calls: list[str] = []

    def resolver(host: str, _port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    def allow_all(_ip: Any) -> None:
        return None

    guard = AddressGuard(resolve=resolver, refuse=allow_all)
    client = _s3_client(f"{scheme}://bucket-host.example:{listener.port}")
    address_guard.install(client, guard)
    with pytest.raises(Exception):  # noqa: B017 - the listener answers 500 (no TLS)
        client.put_object(Bucket="b", Key="k", Body=b"x")
    assert listener.accepted == 1 and calls == ["bucket-host.example"]
    if scheme == "http":
        host_header = f"host: bucket-host.example:{listener.port}".encode()
        assert host_header in listener.requests[0].lower()
    else:
        assert b"bucket-host.example" in listener.requests[0]  # SNI, in the clear


def test_clients_guard_only_a_customer_domain() -> None:
    creds = Credentials("AKIDEXAMPLE", "secret")
    customer = AwsTarget("http://127.0.0.1:1", {"s3": "https://storage.example.com"})
    guarded = AwsClients(creds, customer).client("s3", "us-east-1")
    assert address_guard.is_guarded(guarded)
    assert guarded.meta.config.s3 == {"addressing_style": "path"}
    vendor = AwsClients(creds, AwsTarget("http://127.0.0.1:1"))
    assert not address_guard.is_guarded(vendor.client("s3", "us-east-1"))  # the vendor's URL
    assert not address_guard.is_guarded(vendor.client("sts", "us-east-1"))
    opted_in = AwsTarget(None, {"s3": "http://127.0.0.1:9000"}, allow_private_domain=True)
    allowed = AwsClients(creds, opted_in).client("s3", "us-east-1")
    assert not address_guard.is_guarded(allowed)
    assert allowed.meta.config.s3 == {"addressing_style": "path"}  # same settings, no guard


# --- the role check: one text whatever the network answered --------------------------------------


def _broker(emulator: Emulator) -> CredentialBroker:
    return CredentialBroker(
        vendor_name="acme-cdn",
        vendor_account_id=emulator.vendor.account_id,
        regions=["us-east-1"],
        sts_endpoints={"us-east-1": emulator.url},
        target=emulator.target,
        vendor_credentials=emulator.vendor.credentials(),
    )


def _closing_port() -> Listener:
    return Listener()  # accepts, reads, answers 500 with no S3 body


def _write_check(emulator: Emulator, role: Any, domain: str, *, allow: bool) -> Any:
    report = check_role(
        broker=_broker(emulator),
        role_arn=role.role_arn,
        external_id=role.external_id,
        target=S3Target(role.bucket),
        aws_target=AwsTarget(emulator.url, {"s3": domain}, allow_private_domain=allow),
    )
    return next(c for c in report.checks if c.name == "s3 write")


def test_role_check_gives_one_text_for_inside_refused_and_silent(
    emulator: Emulator, unique, listener: Listener
) -> None:
    role = make_s3_role(emulator, unique, external_id=unique("cust"))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]  # bound, never listening: connection refused
    try:
        inside = _write_check(emulator, role, f"http://localhost:{listener.port}", allow=False)
        refused = _write_check(emulator, role, f"http://127.0.0.1:{dead_port}", allow=True)
        answering = _write_check(emulator, role, f"http://127.0.0.1:{listener.port}", allow=True)
    finally:
        closed.close()
    assert listener.accepted >= 1  # only the opted-in check reached the listener
    texts = set()
    for check, domain in (
        (inside, f"http://localhost:{listener.port}"),
        (refused, f"http://127.0.0.1:{dead_port}"),
    ):
        assert check.status == "fail"
        texts.add((check.detail.replace(domain, "D"), check.fix))
    assert texts == {(refusal_message("D"), address_guard.REFUSAL_FIX)}
    # A port that answers HTTP (not S3) is an S3 answer, reported as such.
    assert answering.status == "fail" and "CreateMultipartUpload failed" in answering.detail


# --- through a real `serve` ----------------------------------------------------------------------


def _loopback_name() -> str | None:
    """A name this host resolves only to loopback (from its own hosts file, never edited here),
    which no literal rule recognises: the resolution-time check must catch it."""
    for name in (socket.gethostname(), "vm", "runsc", "ip6-localhost", "ip6-loopback"):
        if not name or literal_refusal(name) is not None:
            continue
        try:
            found = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
        except OSError:
            continue
        if found and all(ip_address(a).is_loopback for a in found):
            return name
    return None


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_serve_refuses_loopback_domains_and_nothing_connects(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    listeners = [Listener()]
    port = listeners[0].port
    try:
        listeners.append(Listener("127.0.0.2", port))
    except OSError:
        pass
    if _has_ipv6_loopback():
        listeners.append(Listener("::1", port, socket.AF_INET6))
    spellings = [
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.2:{port}",
        f"http://localhost:{port}",
        f"http://[::1]:{port}",
        f"http://[::ffff:127.0.0.1]:{port}",
        f"http://2130706433:{port}",
        f"http://0x7f.1:{port}",
        f"http://127.1:{port}",
        f"127.0.0.1:{port}",
        f"http://169.254.169.254:{port}",
    ]
    config = base_config(emulator, tmp_path / "spool", aws={"allow_http_domain": True})
    config["customers"] = [{"id": customer, "token_env": "DOMAIN_TOKEN"}]
    serve = ServeProcess(emulator, config, tmp_path, env={"DOMAIN_TOKEN": "token-" + customer})
    serve.start()
    endpoint = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn, "period": 1}
    try:
        with serve.admin() as admin:
            for domain in spellings:
                for query in ("", "?verify=false"):
                    r = admin.put(
                        f"/v1/customers/{customer}/endpoints/s3{query}",
                        json={**endpoint, "domain": domain},
                    )
                    assert r.status_code == 422, (domain, r.text)
                    (detail,) = r.json()["detail"]
                    assert detail["loc"] == ["body", "domain"], r.text
                    assert "aws.allow_private_domain" in detail["msg"], r.text

            name = _loopback_name()
            if name is not None:
                domain = f"http://{name}:{port}"
                # A customer's own PUT runs the role check: resolved inside → the one text.
                with serve.as_token(f"token-{customer}") as own:
                    r = own.put(
                        f"/v1/customers/{customer}/endpoints/s3",
                        json={**endpoint, "domain": domain},
                    )
                assert r.status_code == 422, r.text
                assert refusal_message(domain) in r.text, r.text
                # The admin may skip the check; delivery is then refused at connect time.
                r = admin.put(
                    f"/v1/customers/{customer}/endpoints/s3?verify=false",
                    json={**endpoint, "domain": domain},
                )
                assert r.status_code == 201, r.text
                with serve.as_token(f"token-{customer}") as sender:
                    sent = sender.post(f"/v1/ingest/{customer}/s3", content=b"line one\n")
                    assert sent.status_code == 202, sent.text

                def refused() -> dict[str, Any] | None:
                    shown = admin.get(f"/v1/customers/{customer}/endpoints/s3/status").json()
                    error = shown.get("last_error") or {}
                    return shown if error.get("code") == "DomainRefused" else None

                shown = wait_for(refused, timeout=60)
                assert shown["last_error"]["kind"] == "setup", shown
                assert shown["last_error"]["message"] == refusal_message(name), shown
                assert shown["lines"]["pending"] == 1, shown
    finally:
        for made in listeners:
            made.close()
    assert sum(made.accepted for made in listeners) == 0


@pytest.mark.timeout(300)
def test_allow_private_domain_delivers_through_a_loopback_emulator_domain(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        aws={"allow_http_domain": True, "allow_private_domain": True},
    )
    serve = ServeProcess(emulator, config, tmp_path)
    serve.start()
    body = {
        "type": "s3",
        "bucket_name": role.bucket,
        "iam_role": role.role_arn,
        "period": 1,
        "path": "compat/",
        "domain": emulator.url,
    }
    with serve.admin() as admin:
        assert admin.put(f"/v1/customers/{customer}", json={}).status_code in (200, 201)
        r = admin.put(f"/v1/customers/{customer}/endpoints/s3", json=body)  # role check runs
        assert r.status_code == 201, r.text
        r = admin.post(f"/v1/ingest/{customer}/s3", content=b"via the domain\n")
        assert r.status_code == 202, r.text

    def landed() -> list[bytes]:
        found = []
        for key, obj in read_objects(emulator, role.bucket, "compat/").items():
            found += (gzip.decompress(obj.body) if key.endswith(".gz") else obj.body).split()
        return found

    assert wait_for(landed, timeout=60) == [b"via", b"the", b"domain"]
