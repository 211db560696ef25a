"""The S3 endpoint as users configure it (Fastly's field names), validated up front.

Fields and defaults follow Fastly's S3 logging endpoint (DESIGN.md §3). What we define
precisely, because Fastly leaves it implicit:

- `path` is prepended *literally* to every object name: `<path><timestamp>-<uid>.log<suffix>`.
  A trailing slash makes it a folder (`logs/` → `logs/2024-…`); without one it is a name prefix
  (`logs/cdn-` → `logs/cdn-2024-…`). Leading slashes are dropped (Fastly's UI shows paths as
  `/logs/`, but an S3 key starting with `/` lands in an empty-named folder). strftime tokens
  (`logs/%Y/%m/%d/`) are expanded with the start of the file's period, in UTC.
- `timestamp_format` is applied to the start of the period (UTC).
- `file_max_bytes` caps the log data in one file *after* `message_type` framing and *before*
  compression, so an object never holds more than that many bytes of lines (compression only
  shrinks it; PGP adds a few hundred bytes). Measuring before compression keeps file boundaries a
  pure function of the data, which is what makes replay after a crash write identical files.
  A single line longer than the limit gets a file of its own; lines are never split.
- `acl` sends the canned ACL header; AWS then also requires `s3:PutObjectAcl` (not part of the
  guide's policy), and buckets with Object Ownership "bucket owner enforced" reject any ACL.

The external ID is not a field: the vendor binds it to the customer (DESIGN.md §3).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Final, Literal

from pydantic import field_validator, model_validator

from logferry.aws.names import (
    Partition,
    RoleArn,
    object_arn,
    parse_role_arn,
    partition_for_region,
    validate_bucket_name,
    validate_region,
)
from logferry.errors import InputError
from logferry.sinks import pgp
from logferry.sinks.codecs import Codec, resolve_codec
from logferry.sinks.endpoint_base import CONTROL_RE as _CONTROL_RE
from logferry.sinks.endpoint_base import EndpointBase
from logferry.sinks.endpoint_base import as_value_error as _as_value_error
from logferry.sinks.framing import DEFAULT_MESSAGE_TYPE, MessageType
from logferry.spool.size import parse_size

MIB: Final = 1024 * 1024
FILE_MAX_MIN: Final = MIB  # Fastly: 0 (no limit) or at least 1 MiB
FILE_MAX_MAX: Final = 5 * 1024**4  # S3's largest object
DEFAULT_PERIOD: Final = 3600
DEFAULT_TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.000"
DEFAULT_REGION: Final = "us-east-1"
KEY_MAX_BYTES: Final = 1024  # S3 object keys

# Fastly's `redundancy` values → S3 StorageClass.
STORAGE_CLASSES: Final[dict[str, str]] = {
    "standard": "STANDARD",
    "intelligent_tiering": "INTELLIGENT_TIERING",
    "standard_ia": "STANDARD_IA",
    "onezone_ia": "ONEZONE_IA",
    "glacier": "GLACIER",
    "glacier_ir": "GLACIER_IR",
    "deep_archive": "DEEP_ARCHIVE",
    "reduced_redundancy": "REDUCED_REDUNDANCY",
}
CANNED_ACLS: Final = (
    "private",
    "public-read",
    "public-read-write",
    "aws-exec-read",
    "authenticated-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
SSE_ALGORITHMS: Final = ("AES256", "aws:kms")

_SAMPLE_TIME: Final = 1_700_000_000.0  # for rendering example keys in validation


def _utc_strftime(fmt: str, when: float) -> str:
    return time.strftime(fmt, time.gmtime(when))


class S3Endpoint(EndpointBase):
    """One S3 logging endpoint: where files go, as whom, named and encoded how."""

    bucket_name: str
    """The customer's bucket."""
    path: str = ""
    """Prefix of every object key (see the module docstring for slash and strftime rules)."""
    period: int = DEFAULT_PERIOD
    """Seconds per file: a new file starts at every multiple of `period` (UTC epoch aligned)."""
    gzip_level: int | None = None
    """1-9: gzip at that level; 0 or unset: no gzip (Fastly)."""
    compression_codec: Literal["gzip", "zstd", "snappy"] | None = None
    """gzip (level 3), zstd or snappy; exclusive with a non-zero gzip_level."""
    timestamp_format: str = DEFAULT_TIMESTAMP_FORMAT
    """strftime format of the period start in object names."""
    message_type: MessageType = DEFAULT_MESSAGE_TYPE
    """Per-line framing: classic, loggly, logplex or blank (no prefix)."""
    file_max_bytes: int = 0
    """0 (no limit) or at least 1 MiB: log bytes per file (framed, before compression)."""
    domain: str | None = None
    """S3-compatible endpoint host (or URL), e.g. storage.example.com; unset = AWS S3."""
    region: str | None = None
    """The bucket's region (default us-east-1)."""
    redundancy: str | None = None
    """Storage class: standard, intelligent_tiering, standard_ia, onezone_ia, glacier,
    glacier_ir, deep_archive, reduced_redundancy."""
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    """SSE-S3 (AES256) or SSE-KMS (aws:kms, needs server_side_encryption_kms_key_id)."""
    server_side_encryption_kms_key_id: str | None = None
    """KMS key ID/ARN/alias for aws:kms."""
    acl: str | None = None
    """Canned ACL for each object (needs s3:PutObjectAcl; see the module docstring)."""
    public_key: str | None = None
    """ASCII-armored PGP public key: each file is encrypted to it after compression (.pgp)."""

    @classmethod
    def destination_of(cls, body: Mapping[str, Any]) -> str:
        return f"s3://{body.get('bucket_name')}/{body.get('path', '')}"

    # --- field checks -------------------------------------------------------------------------

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            return validate_region(value)
        except InputError as exc:
            raise _as_value_error(exc) from None

    @field_validator("path", mode="before")
    @classmethod
    def _path_null_is_root(cls, value: Any) -> Any:
        return "" if value is None else value  # Fastly's default path is null: the bucket root

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        value = value.lstrip("/")
        if _CONTROL_RE.search(value):
            raise ValueError("contains control characters. Use printable characters only.")
        try:
            rendered = _utc_strftime(value, _SAMPLE_TIME)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a valid strftime pattern ({exc}). Write '%%' for a literal %."
            ) from None
        if len(rendered.encode()) > KEY_MAX_BYTES - 200:
            raise ValueError(
                f"expands to {len(rendered.encode())} bytes; S3 keys are at most {KEY_MAX_BYTES} "
                "bytes and the file name needs about 100. Use a shorter path."
            )
        return value

    @field_validator("period")
    @classmethod
    def _check_period(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1 second, got {value}. The default is 3600.")
        return value

    @field_validator("timestamp_format")
    @classmethod
    def _check_timestamp_format(cls, value: str) -> str:
        if not value:
            raise ValueError(f"is empty. Use e.g. the default {DEFAULT_TIMESTAMP_FORMAT!r}.")
        if _CONTROL_RE.search(value):
            raise ValueError("contains control characters. Use printable characters only.")
        try:
            rendered = _utc_strftime(value, _SAMPLE_TIME)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid strftime format ({exc}).") from None
        if len(rendered.encode()) > 200:
            raise ValueError("renders longer than 200 bytes. Use a shorter format.")
        return value

    @field_validator("file_max_bytes", mode="before")
    @classmethod
    def _check_file_max(cls, value: Any) -> int:
        try:
            size = parse_size(value, where="file_max_bytes")
        except InputError as exc:
            raise _as_value_error(exc) from None
        if size != 0 and not FILE_MAX_MIN <= size <= FILE_MAX_MAX:
            raise ValueError(
                f"is {size} bytes; it must be 0 (no limit) or from 1 MiB ({FILE_MAX_MIN}) to "
                "5 TiB. Use e.g. 104857600 for 100 MiB."
            )
        return size

    @field_validator("gzip_level")
    @classmethod
    def _check_gzip_level(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 9:
            raise ValueError(
                f"must be from 0 to 9, got {value}. Use 1 (fastest) to 9 (smallest), or 0 / "
                "unset for no gzip."
            )
        return value

    @field_validator("domain")
    @classmethod
    def _check_domain(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        url = value if "://" in value else f"https://{value}"
        match = re.fullmatch(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?/?", url)
        if match is None:
            raise ValueError(
                f"{value!r} is not a host name or http(s) URL. Use e.g. "
                "'storage.example.com' or 'https://s3.eu-central-1.example.com:9000'."
            )
        return value.rstrip("/")

    @field_validator("redundancy")
    @classmethod
    def _check_redundancy(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        key = value.lower()
        if key not in STORAGE_CLASSES:
            raise ValueError(
                f"{value!r} is not a storage class. Use one of: {', '.join(STORAGE_CLASSES)}."
            )
        return key

    @field_validator("acl")
    @classmethod
    def _check_acl(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value not in CANNED_ACLS:
            raise ValueError(
                f"{value!r} is not a canned object ACL. Use one of: {', '.join(CANNED_ACLS)}."
            )
        return value

    @field_validator("public_key")
    @classmethod
    def _check_public_key(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            pgp.load_public_key(value)
        except InputError as exc:
            raise _as_value_error(exc) from None
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> S3Endpoint:
        try:
            resolve_codec(compression_codec=self.compression_codec, gzip_level=self.gzip_level)
        except InputError as exc:
            raise ValueError(f"{exc.where}: {exc.message} {exc.fix or ''}".strip()) from None
        if self.server_side_encryption == "aws:kms" and not self.server_side_encryption_kms_key_id:
            raise ValueError(
                "server_side_encryption_kms_key_id is required when server_side_encryption is "
                "aws:kms. Set it to the KMS key's ID, ARN or alias."
            )
        if self.server_side_encryption_kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError(
                "server_side_encryption_kms_key_id is set but server_side_encryption is "
                f"{self.server_side_encryption!r}. Set server_side_encryption to aws:kms or "
                "remove the key ID."
            )
        if self.domain is None:
            try:
                validate_bucket_name(self.bucket_name)
            except InputError as exc:
                raise ValueError(f"bucket_name: {exc.message} {exc.fix or ''}".strip()) from None
            role = parse_role_arn(self.iam_role)
            expected = partition_for_region(self.effective_region)
            if role.partition != expected:
                raise ValueError(
                    f"iam_role is in partition {role.partition} but region "
                    f"{self.effective_region} belongs to {expected}. Use a role and bucket "
                    "region of the same partition."
                )
        elif not 1 <= len(self.bucket_name) <= 255 or "/" in self.bucket_name:
            raise ValueError(
                f"bucket_name {self.bucket_name!r} must be 1-255 characters without '/'."
            )
        sample = self.object_key(_SAMPLE_TIME, "x" * 32)
        if len(sample.encode()) > KEY_MAX_BYTES:
            raise ValueError(
                f"path and timestamp_format make keys of {len(sample.encode())} bytes; S3 allows "
                f"{KEY_MAX_BYTES}. Shorten path or timestamp_format."
            )
        return self

    # --- derived values -----------------------------------------------------------------------

    def codec(self) -> Codec:
        """The compression codec these fields select (Fastly's rules: gzip_level / codec)."""
        return resolve_codec(compression_codec=self.compression_codec, gzip_level=self.gzip_level)

    @cached_property
    def pgp_key(self) -> pgp.PublicKey | None:
        return pgp.load_public_key(self.public_key) if self.public_key else None

    @property
    def effective_region(self) -> str:
        return self.region or DEFAULT_REGION

    @property
    def endpoint_url(self) -> str | None:
        """URL of an S3-compatible `domain` (https unless a scheme is given); None for AWS."""
        if self.domain is None:
            return None
        return self.domain if "://" in self.domain else f"https://{self.domain}"

    @property
    def role(self) -> RoleArn:
        return parse_role_arn(self.iam_role)

    @property
    def partition(self) -> Partition:
        return self.role.partition

    @property
    def key_prefix(self) -> str:
        """The literal part of `path` before its first strftime token: every key starts with
        it, so it is the policy prefix (`arn:aws:s3:::BUCKET/PREFIX*`) and where healthchecks
        write."""
        cut = self.path.find("%")
        literal = self.path if cut < 0 else self.path[:cut]
        return literal

    @property
    def resource_arn(self) -> str:
        """The IAM resource the role must cover: `arn:PARTITION:s3:::BUCKET/PREFIX*`."""
        return object_arn(self.bucket_name, self.key_prefix, self.partition)

    @property
    def suffix(self) -> str:
        """`.log` + codec suffix (+ `.pgp` with public_key)."""
        return ".log" + self.codec().suffix + (pgp.SUFFIX if self.public_key else "")

    @property
    def content_type(self) -> str:
        return pgp.CONTENT_TYPE if self.public_key else self.codec().content_type

    @property
    def content_encoding(self) -> str | None:
        return None if self.public_key else self.codec().content_encoding

    @property
    def storage_class(self) -> str | None:
        return STORAGE_CLASSES[self.redundancy] if self.redundancy else None

    def period_start(self, when: float) -> int:
        """Start of the period containing unix time `when` (epoch-aligned)."""
        return int(when // self.period) * self.period

    def object_key(self, period_start: float, uid: str) -> str:
        """`<path><timestamp>-<uid>.log<suffix>` for a file of the period starting then."""
        folder = _utc_strftime(self.path, period_start) if "%" in self.path else self.path
        stamp = _utc_strftime(self.timestamp_format, period_start)
        return f"{folder}{stamp}-{uid}{self.suffix}"

    def put_args(self) -> dict[str, str]:
        """Headers shared by PutObject and CreateMultipartUpload (type, class, SSE, ACL)."""
        args: dict[str, str] = {"ContentType": self.content_type}
        if self.content_encoding:
            args["ContentEncoding"] = self.content_encoding
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.server_side_encryption:
            args["ServerSideEncryption"] = self.server_side_encryption
        if self.server_side_encryption_kms_key_id:
            args["SSEKMSKeyId"] = self.server_side_encryption_kms_key_id
        if self.acl:
            args["ACL"] = self.acl
        return args
