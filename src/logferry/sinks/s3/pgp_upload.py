"""The PGP path: a file that is one OpenPGP message, encrypted on disk and uploaded at close.

An OpenPGP message cannot be resumed part by part, so its compressed members wait in a spill
file; at close it is stream-encrypted and uploaded (PutObject, or a multipart upload made in
one go). After a crash the file is rebuilt from the spool. Both writes that end the file are
fenced like every other (`fencing`): a rebuilt file whose object is already there meets a 412
and is taken as delivered; its encryption differs from the first (a fresh session key), so it
must never replace it either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pysequoia

from logferry.errors import InputError
from logferry.sinks import pgp
from logferry.sinks.s3.fencing import already_complete
from logferry.sinks.s3.files import ENCRYPTED_SUFFIX, OpenFile
from logferry.sinks.s3.stats import LastError
from logferry.sinks.s3_journal import Part

if TYPE_CHECKING:
    from logferry.sinks.s3.sink import S3Sink


def _close_pgp(self: S3Sink, f: OpenFile, end: int) -> dict[str, Any]:
    """Encrypt and upload `f`; the answer of the write that ended it (see `fencing`)."""
    assert f.spill is not None and f.spill_path is not None and self._pgp_key is not None
    f.spill.close()
    f.spill = None
    encrypted = f.spill_path.with_suffix(ENCRYPTED_SUFFIX)
    try:
        try:
            _encrypt_file(f.spill_path, encrypted, self._pgp_key)
        except InputError as exc:  # e.g. the key expired since the endpoint was saved
            self.stats.last_error = LastError(
                "PublicKeyUnusable", exc.message, exc.fix, self._clock(), transient=False
            )
            self.stats.state = "error"
            raise
        size = encrypted.stat().st_size
        f_active = self._active(f, end)
        f_active.pgp = True
        self._state.active = f_active
        self._save()
        with open(encrypted, "rb") as source:
            if size < self.part_size:
                body = source.read()
                result = self._put_object(f.key, body)
                if not already_complete(result):  # 412: delivered already
                    self.stats.bytes_out += len(body)
                return result
            f.upload_id, note = self._create_upload(f.key)
            f_active.upload_id = f.upload_id
            self._save()
            self._notes.remove(note)
            while block := source.read(self.part_size):
                number = len(f.parts) + 1
                etag = self._call(
                    "UploadPart",
                    Key=f.key,
                    UploadId=f.upload_id,
                    PartNumber=number,
                    Body=block,
                )["ETag"]
                f.parts.append(Part(number, etag, f.start, 0))
                f_active.parts = list(f.parts)
                self._save()
                self.stats.parts += 1
                self.stats.bytes_out += len(block)
            return self._complete(f.key, f.upload_id, f.parts)
    finally:
        f.spill_path.unlink(missing_ok=True)
        encrypted.unlink(missing_ok=True)


def _encrypt_file(source: Path, target: Path, key: pgp.PublicKey) -> None:
    """Stream-encrypt `source` to `target` as one binary OpenPGP message (memory stays flat
    whatever the file size; `pgp.encrypt` would hold the whole file twice)."""
    try:
        pysequoia.encrypt_file(str(source), str(target), [key.cert], armor=False)
    except Exception as exc:
        raise InputError(
            "public_key", f"cannot encrypt to key {key.fingerprint} ({exc}).".splitlines()[0]
        ) from None
