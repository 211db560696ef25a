"""PGP encryption of whole S3 files to the customer's public key (the endpoint's `public_key`).

Library: pysequoia (Sequoia-PGP in Rust, already a dependency) — in-process, no gpg binary or
keyring directory to manage, Sequoia's standard policy (binding signatures, weak algorithms), and
modern keys (Curve25519, RFC 9580) that the unmaintained pgpy cannot read.

The key decides the message format: v4 keys from gpg get SEIPDv1 messages every gpg decrypts;
RFC 9580 (v6) keys get v6 packets that need gpg ≥ 2.5 or Sequoia (gpg 2.2 rejects them).

An OpenPGP message is not concatenable the way gzip members are, so a whole file is encrypted
at once: the sink buffers the (compressed) file, then calls `encrypt` and uploads `<key>.pgp`.
The output is a binary OpenPGP message (`gpg --decrypt` reads it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import pysequoia
from pysequoia.packet import Packet, PacketPile, SignatureType, Tag

from logferry.errors import InputError

SUFFIX: Final = ".pgp"
CONTENT_TYPE: Final = "application/pgp-encrypted"
_FIX_EXPORT: Final = (
    "Paste the output of `gpg --armor --export <key-id>` for a key that has a valid "
    "encryption subkey."
)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A validated OpenPGP certificate that can receive encrypted files."""

    fingerprint: str
    user_ids: tuple[str, ...]
    expires_at: datetime | None
    """Expiry of the certificate (primary key); None if it never expires."""
    usable_until: datetime | None
    """When the last usable encryption key expires (≤ expires_at); None if never."""
    cert: pysequoia.Cert = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class _EncryptionKey:
    key_id: str
    expires_at: datetime | None
    revoked: bool


_PRIMARY_SELF_SIGS: Final = (
    SignatureType.DirectKey,
    SignatureType.PositiveCertification,
    SignatureType.GenericCertification,
    SignatureType.CasualCertification,
    SignatureType.PersonaCertification,
)
_REVOCATIONS: Final = (SignatureType.KeyRevocation, SignatureType.SubkeyRevocation)


def _encryption_keys(cert: pysequoia.Cert) -> list[_EncryptionKey]:
    """Keys whose newest self-signature allows encryption, with expiry and revocation.

    pysequoia's `encrypt` checks flags and algorithms but NOT key expiry (it encrypts to a subkey
    that expired years ago), so liveness is read here from the self-signatures of the parsed
    (already signature-checked) certificate.
    """
    primary = cert.fingerprint.lower()
    groups: list[tuple[Packet, list[Packet]]] = []
    for pkt in PacketPile.from_bytes(bytes(cert)):
        if pkt.tag in (Tag.PublicKey, Tag.PublicSubkey):
            groups.append((pkt, []))
        elif pkt.tag == Tag.Signature and groups:
            issuer = (pkt.issuer_fingerprint or "").lower()
            key_id = (pkt.issuer_key_id or "").lower()
            if issuer == primary or (not issuer and key_id and primary.endswith(key_id)):
                groups[-1][1].append(pkt)  # self-signature (third-party certifications skipped)
    epoch = datetime.min.replace(tzinfo=UTC)
    found: list[_EncryptionKey] = []
    for index, (key, sigs) in enumerate(groups):
        wanted = _PRIMARY_SELF_SIGS if index == 0 else (SignatureType.SubkeyBinding,)
        binding = [s for s in sigs if s.signature_type in wanted]
        if not binding:
            continue
        newest = max(binding, key=lambda s: s.signature_created or epoch)
        flags = newest.key_flags
        if flags is None or not (flags.transport_encryption or flags.storage_encryption):
            continue
        period = newest.key_validity_period
        created = key.key_created
        subkey_expiry = created + period if period and created else None
        expires = cert.expiration if index == 0 else subkey_expiry
        revoked = any(s.signature_type in _REVOCATIONS for s in sigs)
        found.append(_EncryptionKey((key.key_id or "").upper(), expires, revoked))
    return found


def _first_line(exc: BaseException) -> str:
    # pysequoia errors carry a Rust backtrace after the first line when RUST_BACKTRACE is set,
    # so callers get the first line and the chain is cut (`from None`).
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_public_key(armored: str | bytes, *, now: datetime | None = None) -> PublicKey:
    """Parse and check `armored`; raise InputError("public_key", ...) unless files can be
    encrypted to it now (one certificate, public only, not revoked or expired, with an
    encryption-capable subkey valid under Sequoia's standard policy)."""
    raw = armored.encode() if isinstance(armored, str) else bytes(armored)
    if not raw.strip():
        raise InputError("public_key", "is empty.", fix=_FIX_EXPORT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # secret keys read as Cert warn
        try:
            certs = pysequoia.Cert.split_bytes(raw)
        except Exception as exc:
            raise InputError(
                "public_key", f"is not an OpenPGP public key ({_first_line(exc)}).", fix=_FIX_EXPORT
            ) from None
        has_secrets = [c.has_secret_keys for c in certs]
    if not certs:
        raise InputError("public_key", "contains no OpenPGP key.", fix=_FIX_EXPORT)
    if len(certs) > 1:
        fprs = ", ".join(c.fingerprint.upper() for c in certs)
        raise InputError(
            "public_key",
            f"contains {len(certs)} keys ({fprs}); exactly one is needed.",
            fix="Export only the key the log files should be encrypted to.",
        )
    cert = certs[0]
    fpr = cert.fingerprint.upper()
    if has_secrets[0]:
        raise InputError(
            "public_key",
            f"key {fpr} contains SECRET key material.",
            fix="Never share the private key: paste `gpg --armor --export <key-id>` (the public "
            "key) and consider this private key compromised.",
        )
    if cert.is_revoked:
        raise InputError("public_key", f"key {fpr} is revoked.", fix=_FIX_EXPORT)
    now = now or datetime.now(UTC)
    expires = cert.expiration
    if expires is not None and expires <= now:
        raise InputError(
            "public_key",
            f"key {fpr} expired on {expires:%Y-%m-%d %H:%M:%S} UTC.",
            fix="Extend it (`gpg --quick-set-expire <fpr> 2y` for the primary key, then "
            "`gpg --quick-set-expire <fpr> 2y '*'` for its subkeys) and paste the re-exported "
            "public key.",
        )
    enc = _encryption_keys(cert)
    alive = [k for k in enc if not k.revoked and (k.expires_at is None or k.expires_at > now)]
    if enc and not alive:
        dead = "; ".join(
            f"{k.key_id} "
            + ("revoked" if k.revoked else f"expired on {k.expires_at:%Y-%m-%d %H:%M:%S} UTC")
            for k in enc
        )
        raise InputError(
            "public_key",
            f"key {fpr} has no valid encryption-capable subkey (encryption subkeys: {dead}).",
            fix="Extend the subkey too (`gpg --quick-set-expire <fpr> 2y '*'`) or add a new one "
            "(`gpg --quick-add-key <fpr> cv25519 encr 2y`), then paste the re-exported public key.",
        )
    try:
        pysequoia.encrypt(b"", [cert], armor=False)  # flags, algorithms and binding signatures
    except Exception as exc:
        why = _first_line(exc)
        detail = "" if why.startswith("No suitable encryption subkey") else f" ({why})"
        raise InputError(
            "public_key",
            f"key {fpr} has no valid encryption-capable subkey{detail}.",
            fix="Add one (`gpg --quick-add-key <fpr> cv25519 encr 2y`) or renew an expired one, "
            "then paste the re-exported public key.",
        ) from None
    expiries = [k.expires_at for k in alive]
    usable_until = None if not expiries or None in expiries else max(e for e in expiries if e)
    return PublicKey(
        fingerprint=fpr,
        user_ids=tuple(str(u) for u in cert.user_ids),
        expires_at=expires,
        usable_until=usable_until,
        cert=cert,
    )


def encrypt(data: bytes, key: PublicKey, *, now: datetime | None = None) -> bytes:
    """`data` as one binary OpenPGP message to `key` (unsigned, uncompressed: the data is
    already compressed by the codec). Refuses a key that expired since it was loaded."""
    until = key.usable_until
    if until is not None and until <= (now or datetime.now(UTC)):
        raise InputError(
            "public_key",
            f"key {key.fingerprint} cannot encrypt any more: it expired on "
            f"{until:%Y-%m-%d %H:%M:%S} UTC.",
            fix="Extend the key and its encryption subkey (`gpg --quick-set-expire <fpr> 2y` and "
            "`gpg --quick-set-expire <fpr> 2y '*'`), then update the endpoint's public_key.",
        )
    try:
        return pysequoia.encrypt(data, [key.cert], armor=False)
    except Exception as exc:  # e.g. an algorithm the policy rejects since the key was loaded
        raise InputError(
            "public_key",
            f"cannot encrypt to key {key.fingerprint} ({_first_line(exc)}).",
            fix=_FIX_EXPORT,
        ) from None
