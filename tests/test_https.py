"""`[server.tls]`: ingest, the API and `logferry send` / `logferry admin` over HTTPS with a private
CA made in the test; plain HTTP on the TLS port fails cleanly; client_auth = "required" refuses a
client without a certificate; an unloadable certificate exits 2 naming the key."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, read_objects
from service_helpers import ServeProcess, base_config, reap_all, s3_customer, wait_for

TOKEN = "token-of-the-https-customer-0000"


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: Any = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(root: Path) -> Pki:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("logferry test CA", ca_key, None, ca_key, ca=True)
    pki = Pki(
        *(root / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"))
    )
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, cn, usage in (
        (pki.server_cert, pki.server_key, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH),
        (pki.client_cert, pki.client_key, "a sender", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, ca.subject, ca_key, usage=usage)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
    return pki


def client_context(pki: Pki, *, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


class HttpsServe(ServeProcess):
    """`serve` with [server.tls]: its URL is https://, readiness checked through the CA."""

    def __init__(self, *args: Any, verify: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = self.url.replace("http://", "https://")
        self.verify = verify

    def wait_ready(self, timeout: float = 180.0) -> HttpsServe:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", verify=self.verify, timeout=2).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready:\n{self.logs()[-4000:]}")


def _serve(
    emulator: Emulator, unique, tmp_path: Path, pki: Pki, **tls: Any
) -> tuple[HttpsServe, str, Any]:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    config = base_config(
        emulator,
        tmp_path / "spool",
        server={"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **tls}},
        customers=[s3_customer(customer, "HTTPS_TOKEN", role.bucket, role.role_arn)],
    )
    verify = client_context(pki, with_cert=tls.get("client_auth") == "required")
    serve = HttpsServe(
        emulator, config, tmp_path / "serve", env={"HTTPS_TOKEN": TOKEN}, verify=verify
    )
    return serve.start(), customer, role


def _landed(emulator: Emulator, bucket: str, expected: int) -> Counter[bytes]:
    def got() -> Counter[bytes]:
        lines: Counter[bytes] = Counter()
        for obj in read_objects(emulator, bucket).values():
            lines.update(obj.body.splitlines())
        return lines

    return wait_for(lambda: (c := got()) and sum(c.values()) >= expected and c, timeout=90)


def _cli(*args: str, env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logferry.cli", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_ingest_api_and_cli_over_https_and_plain_http_fails_cleanly(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    serve, customer, role = _serve(emulator, unique, tmp_path, pki)
    assert '"scheme": "https"' in serve.logs()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    direct = [f"over https {i}".encode() for i in range(500)]
    r = httpx.post(
        f"{serve.url}/v1/ingest/{customer}/s3",
        content=b"\n".join(direct) + b"\n",
        headers=headers,
        verify=serve.verify,
    )
    assert r.status_code == 202, r.text

    # A client that does not know the CA is refused by its own verification.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{serve.url}/healthz")
    # Plain HTTP on the TLS port: an error at once, not a hang, and the server goes on.
    with pytest.raises(httpx.TransportError):
        httpx.get(serve.url.replace("https://", "http://") + "/healthz", timeout=30)

    # `logferry send` and `logferry admin` trust the private CA through SSL_CERT_FILE.
    env = {**serve.env, "SSL_CERT_FILE": str(pki.ca), "LOGFERRY_TOKEN": TOKEN}
    sent = [f"sent by logferry send {i}".encode() for i in range(300)]
    done = _cli("send", customer, "s3", "--url", serve.url, stdin=b"\n".join(sent) + b"\n", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    admin_env = {**env, "LOGFERRY_ADMIN_TOKEN": serve.admin_token}
    listed = _cli("admin", "customers", "list", "--url", serve.url, "--json", env=admin_env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert customer in listed.stdout
    # Without it, a clear error that says what to do (not a retry loop).
    env.pop("SSL_CERT_FILE")
    admin_env.pop("SSL_CERT_FILE")
    refused = _cli("admin", "customers", "list", "--url", serve.url, env=admin_env)
    assert refused.returncode == 1
    assert "SSL_CERT_FILE" in refused.stderr, refused.stderr
    unsent = _cli("send", customer, "s3", "--url", serve.url, stdin=b"never\n", env=env)
    assert unsent.returncode == 1  # at once, with the fix: a retry loop cannot trust a CA
    assert "SSL_CERT_FILE" in unsent.stderr, unsent.stderr

    got = _landed(emulator, role.bucket, len(direct) + len(sent))
    assert got == Counter(direct + sent)
    assert "Traceback" not in serve.logs()
    assert serve.terminate() == 0


def test_client_auth_required_refuses_a_client_without_a_certificate(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    serve, customer, role = _serve(
        emulator, unique, tmp_path, pki, ca_file=str(pki.ca), client_auth="required"
    )
    url = f"{serve.url}/v1/ingest/{customer}/s3"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(httpx.TransportError):
        httpx.post(url, content=b"no certificate\n", headers=headers, verify=client_context(pki))
    lines = [f"with a client certificate {i}".encode() for i in range(100)]
    r = httpx.post(url, content=b"\n".join(lines) + b"\n", headers=headers, verify=serve.verify)
    assert r.status_code == 202, r.text
    assert _landed(emulator, role.bucket, len(lines)) == Counter(lines)
    assert serve.terminate() == 0


@pytest.mark.parametrize("broken", ["missing", "not_pem"])
def test_an_unloadable_certificate_exits_2_naming_the_key(
    emulator: Emulator, tmp_path: Path, broken: str
) -> None:
    cert = tmp_path / "server.pem"
    if broken == "not_pem":
        cert.write_text("not a certificate\n")
    config = base_config(
        emulator,
        tmp_path / "spool",
        server={"tls": {"cert_file": str(cert), "key_file": str(tmp_path / "server.key")}},
    )
    serve = ServeProcess(emulator, config, tmp_path).spawn()
    assert serve.process is not None
    assert serve.process.wait(60) == 2
    out = serve.logs()
    assert "server.tls.cert_file" in out and str(cert) in out, out
    assert "logferry ready" not in out
