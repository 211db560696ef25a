"""PGP: files encrypted to a customer's public key decrypt with their private key — with
pysequoia and with the real gpg binary — and bad keys are refused with a clear `public_key`
error before any file is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysequoia
import pytest

from logferry.errors import InputError
from logferry.sinks import pgp
from logferry.sinks.codecs import get_codec

GPG = shutil.which("gpg")
needs_gpg = pytest.mark.skipif(GPG is None, reason="gpg binary not installed")

PAYLOAD = b"".join(
    b"10.0.0.%d - - GET /item/%d HTTP/1.1 200 %d\n" % (i % 256, i, i) for i in range(5000)
)


@pytest.fixture(scope="module")
def tsk() -> pysequoia.Tsk:
    return pysequoia.Tsk.generate("Customer Logs <logs@customer.example>")


@pytest.fixture(scope="module")
def public_armored(tsk: pysequoia.Tsk) -> str:
    return str(tsk.extract_certificate())


def _decrypt_with_sequoia(tsk: pysequoia.Tsk, message: bytes) -> bytes:
    result = pysequoia.decrypt(message, decryptor=tsk.decryptor())
    assert result.bytes is not None
    return result.bytes


def test_load_public_key_reports_identity(tsk: pysequoia.Tsk, public_armored: str) -> None:
    key = pgp.load_public_key(public_armored)
    assert key.fingerprint == tsk.extract_certificate().fingerprint.upper()
    assert key.user_ids == ("Customer Logs <logs@customer.example>",)
    assert key.expires_at is None
    assert pgp.load_public_key(public_armored.encode()).fingerprint == key.fingerprint


def test_encrypt_round_trip_with_private_key(tsk: pysequoia.Tsk, public_armored: str) -> None:
    key = pgp.load_public_key(public_armored)
    message = pgp.encrypt(PAYLOAD, key)
    assert PAYLOAD[:40] not in message
    assert not message.startswith(b"-----BEGIN")  # binary, not armored
    assert _decrypt_with_sequoia(tsk, message) == PAYLOAD


def test_encrypted_compressed_file_round_trip(tsk: pysequoia.Tsk, public_armored: str) -> None:
    # What the sink uploads as <name>.log.gz.pgp: a multi-member gzip file, encrypted whole.
    codec = get_codec("gzip", 3)
    gz = codec.compress(PAYLOAD[:50_000]) + codec.compress(PAYLOAD[50_000:])
    message = pgp.encrypt(gz, pgp.load_public_key(public_armored))
    assert codec.decompress(_decrypt_with_sequoia(tsk, message)) == PAYLOAD


def test_wrong_private_key_cannot_decrypt(tsk: pysequoia.Tsk, public_armored: str) -> None:
    message = pgp.encrypt(PAYLOAD, pgp.load_public_key(public_armored))
    other = pysequoia.Tsk.generate("Someone Else <x@example.com>")
    with pytest.raises(RuntimeError, match="No key to decrypt message"):
        pysequoia.decrypt(message, decryptor=other.decryptor())
    # ...while the intended key still opens it: the failure above is the key, not the message.
    assert _decrypt_with_sequoia(tsk, message) == PAYLOAD


def test_key_expiring_later_is_accepted_and_reported() -> None:
    tsk = pysequoia.Tsk.generate("Soon <soon@example.com>", validity_seconds=86_400 * 30)
    key = pgp.load_public_key(str(tsk.extract_certificate()))
    assert key.expires_at is not None
    assert timedelta(days=29) < key.expires_at - datetime.now(UTC) <= timedelta(days=30)
    assert key.usable_until is not None and key.usable_until <= key.expires_at
    later = datetime.now(UTC) + timedelta(days=31)
    with pytest.raises(InputError) as err:
        pgp.load_public_key(str(tsk.extract_certificate()), now=later)
    assert err.value.where == "public_key" and "expired" in err.value.message
    # A key loaded while valid is refused once it expires (long-running endpoint).
    assert pgp.encrypt(b"x\n", key)
    with pytest.raises(InputError) as err2:
        pgp.encrypt(b"x\n", key, now=later)
    assert err2.value.where == "public_key" and "expired on" in err2.value.message


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... me@laptop", "not an OpenPGP public key"),
        (
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnotbase64!!\n"
            "-----END PGP PUBLIC KEY BLOCK-----\n",
            "not an OpenPGP public key",
        ),
    ],
)
def test_garbage_is_refused(text: str, needle: str) -> None:
    with pytest.raises(InputError) as err:
        pgp.load_public_key(text)
    assert err.value.where == "public_key"
    assert needle in err.value.message
    assert "Stack backtrace" not in str(err.value)
    assert err.value.fix and "gpg --armor --export" in err.value.fix


def test_secret_key_is_refused(tsk: pysequoia.Tsk) -> None:
    with pytest.raises(InputError) as err:
        pgp.load_public_key(str(tsk))
    assert err.value.where == "public_key"
    assert "SECRET" in err.value.message


def test_two_keys_are_refused(public_armored: str) -> None:
    other = str(pysequoia.Tsk.generate("Other <o@example.com>").extract_certificate())
    with pytest.raises(InputError) as err:
        pgp.load_public_key(public_armored + other)
    assert err.value.where == "public_key"
    assert "2 keys" in err.value.message


# --- interop with the real gpg ----------------------------------------------------------------


@dataclass
class GpgHome:
    path: Path

    def run(self, *args: str, data: bytes | None = None) -> bytes:
        base = [GPG or "gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
        proc = subprocess.run(
            [*base, *args],
            input=data,
            capture_output=True,
            env={**os.environ, "GNUPGHOME": str(self.path)},
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    def export(self, uid: str) -> str:
        return self.run("--armor", "--export", uid).decode()

    def fingerprint(self, uid: str) -> str:
        out = self.run("--with-colons", "--fingerprint", uid).decode()
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="module")
def gpg_home() -> Iterator[GpgHome]:
    if GPG is None:
        pytest.skip("gpg binary not installed")
    # Short path: gpg-agent's socket path must fit in sun_path (108 bytes).
    path = Path(tempfile.mkdtemp(prefix="lfgpg", dir="/tmp"))
    home = GpgHome(path)
    try:
        yield home
    finally:
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(path)},
            capture_output=True,
            check=False,
        )
        shutil.rmtree(path, ignore_errors=True)


@needs_gpg
def test_gpg_generated_key_and_gpg_decrypt(gpg_home: GpgHome) -> None:
    uid = "Gpg Customer <gpg@customer.example>"
    gpg_home.run("--quick-gen-key", uid, "default", "default", "never")
    key = pgp.load_public_key(gpg_home.export(uid))
    assert key.fingerprint == gpg_home.fingerprint(uid)
    assert gpg_home.run("--decrypt", data=pgp.encrypt(PAYLOAD, key)) == PAYLOAD


@needs_gpg
def test_gpg_rsa_key_with_encryption_subkey(gpg_home: GpgHome) -> None:
    uid = "Rsa Customer <rsa@customer.example>"
    gpg_home.run("--quick-gen-key", uid, "rsa2048", "sign", "never")
    gpg_home.run("--quick-add-key", gpg_home.fingerprint(uid), "rsa2048", "encr", "never")
    key = pgp.load_public_key(gpg_home.export(uid))
    assert gpg_home.run("--decrypt", data=pgp.encrypt(PAYLOAD, key)) == PAYLOAD


@needs_gpg
def test_sign_only_key_is_refused(gpg_home: GpgHome) -> None:
    uid = "Sign Only <sign@customer.example>"
    gpg_home.run("--quick-gen-key", uid, "ed25519", "sign", "never")
    with pytest.raises(InputError) as err:
        pgp.load_public_key(gpg_home.export(uid))
    assert err.value.where == "public_key"
    assert "no valid encryption-capable subkey" in err.value.message
    assert err.value.fix and "--quick-add-key" in err.value.fix


@needs_gpg
def test_expired_key_is_refused(gpg_home: GpgHome) -> None:
    uid = "Expired <expired@customer.example>"
    gpg_home.run(
        "--faked-system-time", "20200101T000000", "--quick-gen-key", uid, "default", "default", "1d"
    )
    with pytest.raises(InputError) as err:
        pgp.load_public_key(gpg_home.export(uid))
    assert err.value.where == "public_key"
    assert "expired on 2020-01-02" in err.value.message


@needs_gpg
def test_expired_encryption_subkey_is_refused(gpg_home: GpgHome) -> None:
    uid = "Old Subkey <oldsub@customer.example>"
    old = ("--faked-system-time", "20200101T000000")
    gpg_home.run(*old, "--quick-gen-key", uid, "ed25519", "sign", "never")
    fpr = gpg_home.fingerprint(uid)
    gpg_home.run(*old, "--quick-add-key", fpr, "cv25519", "encr", "1d")
    with pytest.raises(InputError) as err:
        pgp.load_public_key(gpg_home.export(uid))
    assert err.value.where == "public_key"
    # pysequoia alone would encrypt to this dead subkey; we must not.
    assert "no valid encryption-capable subkey" in err.value.message
    assert "expired on 2020-01-02" in err.value.message
    assert err.value.fix and "--quick-set-expire" in err.value.fix


@needs_gpg
def test_primary_key_that_encrypts_is_accepted(gpg_home: GpgHome) -> None:
    uid = "Primary Encrypts <prim@customer.example>"
    gpg_home.run("--quick-gen-key", uid, "rsa2048", "sign,encr", "never")
    key = pgp.load_public_key(gpg_home.export(uid))
    assert key.usable_until is None
    assert gpg_home.run("--decrypt", data=pgp.encrypt(PAYLOAD, key)) == PAYLOAD


@needs_gpg
def test_revoked_key_is_refused(gpg_home: GpgHome) -> None:
    uid = "Revoked <revoked@customer.example>"
    gpg_home.run("--quick-gen-key", uid, "default", "default", "never")
    fpr = gpg_home.fingerprint(uid)
    # gpg stores a revocation certificate with a leading ":" to prevent accidental import.
    rev = (gpg_home.path / "openpgp-revocs.d" / f"{fpr}.rev").read_text()
    gpg_home.run("--import", data=rev.replace(":-----BEGIN", "-----BEGIN").encode())
    with pytest.raises(InputError) as err:
        pgp.load_public_key(gpg_home.export(uid))
    assert err.value.where == "public_key"
    assert "revoked" in err.value.message
