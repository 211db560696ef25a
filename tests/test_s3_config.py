"""S3Endpoint: Fastly's field names and defaults, one clear message per bad field, key building."""

from __future__ import annotations

import calendar

import pytest
from pydantic import ValidationError

from logferry.sinks.codecs import GzipCodec, NoneCodec, SnappyCodec, ZstdCodec
from logferry.sinks.s3_config import S3Endpoint
from s3_helpers import pgp_keypair

ROLE = "arn:aws:iam::123456789012:role/fastly-logs"
BASE = {"name": "cdn", "bucket_name": "acme-logs", "iam_role": ROLE}
T0 = calendar.timegm((2024, 7, 4, 22, 37, 26))  # 2024-07-04T22:37:26Z


def make(**fields: object) -> S3Endpoint:
    return S3Endpoint.model_validate({**BASE, **fields})


def error_of(**fields: object) -> tuple[tuple[object, ...], str]:
    with pytest.raises(ValidationError) as info:
        make(**fields)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], errors[0]["msg"]


def test_fastly_defaults() -> None:
    ep = make()
    assert ep.period == 3600
    assert ep.timestamp_format == "%Y-%m-%dT%H:%M:%S.000"
    assert ep.message_type == "blank"
    assert ep.file_max_bytes == 0
    assert ep.path == ""
    assert isinstance(ep.codec(), NoneCodec)
    assert ep.effective_region == "us-east-1"
    assert ep.endpoint_url is None
    assert ep.put_args() == {"ContentType": "text/plain; charset=utf-8"}


def test_round_trip_through_json_like_the_api_stores_it() -> None:
    ep = make(
        path="/logs/%Y/", compression_codec="zstd", region="eu-west-1", redundancy="GLACIER_IR"
    )
    again = S3Endpoint.model_validate(ep.model_dump(mode="json", exclude_none=True))
    assert again == ep
    assert again.redundancy == "glacier_ir"
    assert again.storage_class == "GLACIER_IR"


@pytest.mark.parametrize(
    ("fields", "codec_type", "level", "suffix"),
    [
        ({}, NoneCodec, None, ".log"),
        ({"gzip_level": 0}, NoneCodec, None, ".log"),
        ({"gzip_level": 7}, GzipCodec, 7, ".log.gz"),
        ({"compression_codec": "gzip"}, GzipCodec, 3, ".log.gz"),
        ({"compression_codec": "gzip", "gzip_level": 0}, GzipCodec, 3, ".log.gz"),
        ({"compression_codec": "zstd"}, ZstdCodec, 3, ".log.zst"),
        ({"compression_codec": "snappy"}, SnappyCodec, None, ".log.snappy"),
    ],
)
def test_codec_selection(
    fields: dict[str, object], codec_type: type, level: int | None, suffix: str
) -> None:
    ep = make(**fields)
    codec = ep.codec()
    assert isinstance(codec, codec_type)
    assert codec.level == level
    assert ep.suffix == suffix


def test_gzip_level_and_codec_together_is_an_error() -> None:
    _, msg = error_of(gzip_level=5, compression_codec="zstd")
    assert "gzip_level" in msg and "compression_codec" in msg


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ({"gzip_level": 10}, "gzip_level", "0 to 9"),
        ({"compression_codec": "lz4"}, "compression_codec", "gzip"),
        ({"message_type": "json"}, "message_type", "classic"),
        ({"period": 0}, "period", "at least 1"),
        ({"file_max_bytes": 1048575}, "file_max_bytes", "1 MiB"),
        ({"file_max_bytes": "lots"}, "file_max_bytes", "not a size"),
        ({"iam_role": "fastly-logs"}, "iam_role", "not an IAM role ARN"),
        ({"region": "US-East-1"}, "region", "us-east-1"),
        ({"redundancy": "cold"}, "redundancy", "standard_ia"),
        ({"acl": "everyone"}, "acl", "bucket-owner-full-control"),
        ({"server_side_encryption": "aes"}, "server_side_encryption", "AES256"),
        ({"domain": "not a host/x y"}, "domain", "host name"),
        ({"public_key": "not a key"}, "public_key", "OpenPGP"),
        ({"timestamp_format": ""}, "timestamp_format", "empty"),
        ({"name": "a/b"}, "name", "'/'"),
    ],
)
def test_bad_field_names_the_field(fields: dict[str, object], field: str, needle: str) -> None:
    loc, msg = error_of(**fields)
    assert loc[0] == field
    assert needle in msg


def test_bucket_name_is_checked_against_s3_rules() -> None:
    _, msg = error_of(bucket_name="Acme_Logs")
    assert msg.startswith("Value error, bucket_name:")
    assert "lowercase" in msg or "cannot" in msg
    # S3-compatible services have their own naming rules: only the basics are checked there.
    assert make(bucket_name="Acme_Logs", domain="storage.example.com").bucket_name == "Acme_Logs"


def test_kms_key_id_rules() -> None:
    _, msg = error_of(server_side_encryption="aws:kms")
    assert "server_side_encryption_kms_key_id is required" in msg
    _, msg = error_of(server_side_encryption_kms_key_id="alias/logs")
    assert "server_side_encryption to aws:kms" in msg
    ep = make(server_side_encryption="aws:kms", server_side_encryption_kms_key_id="alias/logs")
    assert ep.put_args()["ServerSideEncryption"] == "aws:kms"
    assert ep.put_args()["SSEKMSKeyId"] == "alias/logs"


def test_static_access_keys_are_refused_with_the_role_way() -> None:
    with pytest.raises(ValidationError) as info:
        make(access_key="AKIA...", secret_key="x")
    assert "iam_role" in str(info.value)


def test_unknown_fields_are_refused() -> None:
    loc, _ = error_of(format_version=2)
    assert loc == ("format_version",)


def test_file_max_bytes_accepts_sizes() -> None:
    assert make(file_max_bytes=1048576).file_max_bytes == 1048576
    assert make(file_max_bytes="10MiB").file_max_bytes == 10 * 1024 * 1024


def test_key_layout_folder_prefix_strftime_and_utc() -> None:
    ep = make(path="/logs/%Y/%m/%d/", compression_codec="gzip", period=3600)
    start = ep.period_start(T0)
    assert start == calendar.timegm((2024, 7, 4, 22, 0, 0))
    assert ep.object_key(start, "ab00000000000000ff") == (
        "logs/2024/07/04/2024-07-04T22:00:00.000-ab00000000000000ff.log.gz"
    )
    assert ep.key_prefix == "logs/"
    assert ep.resource_arn == "arn:aws:s3:::acme-logs/logs/*"
    # Without a trailing slash the path is a name prefix, not a folder.
    named = make(path="logs/cdn-", timestamp_format="%Y%m%d%H%M", period=300)
    assert named.object_key(named.period_start(T0), "u1") == "logs/cdn-202407042235-u1.log"
    assert named.key_prefix == "logs/cdn-"
    # No path: the bucket root; a literal '%%' stays a percent sign.
    assert make().object_key(0, "u") == "1970-01-01T00:00:00.000-u.log"
    assert make(path="100%%/").object_key(0, "u").startswith("100%/")


def test_domain_becomes_an_endpoint_url() -> None:
    assert make(domain="storage.example.com").endpoint_url == "https://storage.example.com"
    assert make(domain="http://127.0.0.1:9000/").endpoint_url == "http://127.0.0.1:9000"


def test_headers_for_every_upload() -> None:
    ep = make(
        compression_codec="zstd",
        redundancy="standard_ia",
        server_side_encryption="AES256",
        acl="bucket-owner-full-control",
    )
    assert ep.put_args() == {
        "ContentType": "application/zstd",
        "StorageClass": "STANDARD_IA",
        "ServerSideEncryption": "AES256",
        "ACL": "bucket-owner-full-control",
    }


def test_public_key_adds_pgp_suffix_and_type() -> None:
    public, _ = pgp_keypair()
    ep = make(public_key=public, compression_codec="gzip")
    assert ep.suffix == ".log.gz.pgp"
    assert ep.content_type == "application/pgp-encrypted"
    assert ep.pgp_key is not None and len(ep.pgp_key.fingerprint) == 40


def test_partition_of_role_and_region_must_agree() -> None:
    _, msg = error_of(region="cn-north-1")
    assert "partition" in msg


def test_overlong_keys_are_refused() -> None:
    loc, msg = error_of(path="a/" * 420)
    assert loc == ("path",)
    assert "1024" in msg
