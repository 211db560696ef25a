"""Test helpers for S3 delivery: a customer role made exactly as the guide says, the vendor's
view of it (assumed with the external ID), and the customer admin's view of what arrived.

Reused by the service tests: `make_s3_role` → `role_clients` → run a sink or the service →
`read_objects` / `pending_uploads` / `decode_object` to check what landed in the bucket.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pysequoia
from botocore.credentials import Credentials

from logferry.aws.clients import AwsClients
from logferry.aws.policies import S3_ACTIONS, s3_permission_policy, trust_policy
from logferry.local.emulator import Emulator
from logferry.sinks.codecs import Codec
from logferry.spool.chunk import Chunk


@dataclass(frozen=True)
class S3Role:
    role_name: str
    role_arn: str
    policy_arn: str
    external_id: str
    bucket: str
    prefix: str


def _policy_document(bucket: str, prefix: str, actions: Iterable[str] | None) -> dict[str, Any]:
    doc: dict[str, Any] = dict(s3_permission_policy(bucket, prefix))
    if actions is not None:
        doc["Statement"] = {**doc["Statement"], "Action": list(actions)}
    return doc


def make_s3_role(
    emulator: Emulator,
    unique: Callable[[str], str],
    *,
    bucket: str | None = None,
    prefix: str = "",
    actions: Iterable[str] | None = None,
    create_bucket: bool = True,
    external_id: str | None = None,
) -> S3Role:
    """Bucket + role in the customer account, the guide's way: trust policy for the vendor
    account with the external ID, a managed permission policy (`iam create-policy`) attached
    with `iam attach-role-policy`. `actions` replaces the guide's two actions (to test a
    policy missing one)."""
    bucket = bucket or unique("logs")
    external_id = external_id or unique("cust")
    if create_bucket:
        emulator.client("s3").create_bucket(Bucket=bucket)
    iam = emulator.client("iam")
    role_name = unique("fastly-logs")
    role_arn = iam.create_role(
        RoleName=role_name,
        AssumeRolePolicyDocument=json.dumps(
            trust_policy("s3", external_id, emulator.vendor.account_id)
        ),
    )["Role"]["Arn"]
    policy_arn = iam.create_policy(
        PolicyName=unique("fastly-s3"),
        PolicyDocument=json.dumps(_policy_document(bucket, prefix, actions)),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role_name, PolicyArn=policy_arn)
    return S3Role(role_name, role_arn, policy_arn, external_id, bucket, prefix)


def set_policy_actions(
    emulator: Emulator, role: S3Role, actions: Iterable[str] = S3_ACTIONS
) -> None:
    """Publish a new default version of the role's permission policy with `actions`."""
    iam = emulator.client("iam")
    for version in iam.list_policy_versions(PolicyArn=role.policy_arn)["Versions"]:
        if not version["IsDefaultVersion"]:
            iam.delete_policy_version(PolicyArn=role.policy_arn, VersionId=version["VersionId"])
    iam.create_policy_version(
        PolicyArn=role.policy_arn,
        PolicyDocument=json.dumps(_policy_document(role.bucket, role.prefix, actions)),
        SetAsDefault=True,
    )


def role_credentials(emulator: Emulator, role: S3Role) -> Credentials:
    """AssumeRole as the vendor, with the external ID, the way the broker does."""
    sts = emulator.client("sts", emulator.vendor)
    got = sts.assume_role(
        RoleArn=role.role_arn, RoleSessionName="logferry-test", ExternalId=role.external_id
    )["Credentials"]
    return Credentials(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"])


def role_clients(emulator: Emulator, role: S3Role) -> AwsClients:
    return AwsClients(role_credentials(emulator, role), emulator.target)


@dataclass(frozen=True)
class S3Object:
    key: str
    body: bytes
    content_type: str | None
    content_encoding: str | None
    storage_class: str | None
    sse: str | None


def read_objects(emulator: Emulator, bucket: str, prefix: str = "") -> dict[str, S3Object]:
    """Every object under `prefix`, downloaded with the customer's admin credentials."""
    s3 = emulator.client("s3")
    found: dict[str, S3Object] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            got = s3.get_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"]] = S3Object(
                key=item["Key"],
                body=got["Body"].read(),
                content_type=got.get("ContentType"),
                content_encoding=got.get("ContentEncoding"),
                storage_class=got.get("StorageClass"),
                sse=got.get("ServerSideEncryption"),
            )
    return found


def pending_uploads(emulator: Emulator, bucket: str) -> list[dict[str, Any]]:
    """Multipart uploads still open in the bucket (admin ListMultipartUploads)."""
    return list(emulator.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def pgp_keypair(user_id: str = "Logs <logs@example.com>") -> tuple[str, pysequoia.Tsk]:
    """(armored public key, secret key) for PGP tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        secret = pysequoia.Tsk.generate(user_id)
        public = str(secret.extract_certificate())
    return public, secret


def decode_object(body: bytes, codec: Codec, secret: pysequoia.Tsk | None = None) -> bytes:
    """An object's lines: decrypt (if `secret`), then decompress every member."""
    if secret is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            body = bytes(pysequoia.decrypt(body, secret.decryptor()).bytes)
    return codec.decompress(body)


def line_counter(blobs: Iterable[bytes]) -> Counter[bytes]:
    """Multiset of lines over newline-terminated blobs."""
    counts: Counter[bytes] = Counter()
    for blob in blobs:
        assert blob.endswith(b"\n") or not blob, "a file must end with a newline"
        counts.update(blob.split(b"\n")[:-1])
    return counts


def make_chunks(
    lines: Iterable[bytes],
    *,
    start: int = 0,
    per_chunk: int = 100,
    accepted_at: float | Callable[[int], float] = 0.0,
) -> Iterator[Chunk]:
    """Chunks of `per_chunk` lines laid end to end from offset `start` (like the spool)."""
    batch: list[bytes] = []
    offset = start
    index = 0

    def emit() -> Chunk:
        nonlocal offset, index
        data = b"".join(line + b"\n" for line in batch)
        when = accepted_at(index) if callable(accepted_at) else accepted_at
        chunk = Chunk(offset, offset + len(data), when, data, len(batch))
        offset += len(data)
        index += 1
        batch.clear()
        return chunk

    for line in lines:
        batch.append(line)
        if len(batch) == per_chunk:
            yield emit()
    if batch:
        yield emit()
