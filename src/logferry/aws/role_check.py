"""The role doctor: does the customer's role work, is it safe, and does it grant only what we need?

Used by `logferry role check` (customer / support side) and by the service before it accepts an
endpoint. Every probe leaves nothing behind: S3 writes are a multipart upload that is aborted
(`aws/write_probe.py`, the same probe the S3 sink runs before delivering), Kinesis is probed with
ListShards (a test record only on request, and marked as such).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from botocore.client import BaseClient
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from logferry.aws.address_guard import REFUSAL_FIX, DomainRefused, refusal_message
from logferry.aws.clients import DELIVERY_CONFIG, AwsClients, AwsTarget
from logferry.aws.errors import error_code, is_denied
from logferry.aws.names import StreamArn
from logferry.aws.sts_broker import AssumeResult, CredentialBroker, RoleKey
from logferry.aws.write_probe import S3Target, probe_s3_write, s3_call, was_answered, was_denied
from logferry.errors import AwsError, SetupError, TransientError

__all__ = ["Check", "KinesisTarget", "Report", "S3Target", "Status", "check_role"]

Status = Literal["pass", "warn", "fail"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class Report:
    role_arn: str
    external_id: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(name, status, detail, fix))

    def write_proven(self) -> bool:
        """No check failed and the write probe passed (S3 write / Kinesis ListShards): the same
        proof the delivery worker's own probe gives."""
        return self.ok and any(
            c.status == "pass" and c.name in ("s3 write", "kinesis list-shards")
            for c in self.checks
        )

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "role_arn": self.role_arn,
            "external_id": self.external_id,
            "checks": [asdict(c) for c in self.checks],
        }

    def summary(self) -> str:
        """One line per failed check with its fix (for API errors and logs)."""
        return "; ".join(
            f"{c.name}: {c.detail}" + (f" Fix: {c.fix}" if c.fix else "") for c in self.failures()
        )


@dataclass(frozen=True)
class KinesisTarget:
    stream: StreamArn


def check_role(
    *,
    broker: CredentialBroker,
    role_arn: str,
    external_id: str,
    target: S3Target | KinesisTarget,
    customer_id: str | None = None,
    aws_target: AwsTarget | None = None,
    put_test_record: bool = False,
    probe_id: Callable[[], str] = lambda: secrets.token_hex(6),
) -> Report:
    """Run every check; never raises for what it finds (that is the report), only for bugs."""
    report = Report(role_arn=role_arn, external_id=external_id)
    key = broker.role_key(role_arn, external_id, customer_id=customer_id)
    good: AssumeResult | None = None

    # 1. AssumeRole in each configured region separately.
    for region in broker.regions:
        name = f"assume-role {region}"
        try:
            result = broker.assume_in_region(key, region)
        except SetupError as exc:
            if exc.code == "AccessDenied":
                report.add(
                    name,
                    "fail",
                    f"AccessDenied: the trust policy does not let account "
                    f"{broker.vendor_account_id or '(vendor)'} assume {role_arn} with external "
                    f"ID {external_id!r}.",
                    exc.fix,
                )
            else:
                report.add(name, "fail", f"{exc.code}: {exc.info.message}", exc.fix)
            continue
        except TransientError as exc:
            if exc.code == "RegionDisabledException":
                report.add(
                    name,
                    "fail",
                    f"STS is not activated in {region} for account {role_arn.split(':')[4]}.",
                    f"activate STS in {region}: IAM console → Account settings → Security Token "
                    "Service (STS) → Endpoints → Activate",
                )
            else:
                report.add(
                    name,
                    "warn",
                    f"STS {region} could not be reached or answered {exc.code}; "
                    "delivery will use the other regions.",
                    exc.fix,
                )
            continue
        report.add(name, "pass", f"assumed as {result.assumed_role_arn}")
        good = good or result

    if good is None:
        report.add(
            "credentials",
            "fail",
            "no STS region issued credentials, so write checks were skipped.",
            "fix the failures above, then run the check again",
        )
        return report

    # 2. Confused deputy: the external ID must be required.
    _confused_deputy(report, broker, key, good.region)

    # 3. Write probes and 4. over-privilege probes, as the role, with delivery's client settings
    # (DELIVERY_CONFIG; for a `domain` also DOMAIN_CONFIG and the address guard, in AwsClients).
    clients = AwsClients(
        Credentials(good.access_key, good.secret_key, good.token),
        aws_target or broker.target,
        config=DELIVERY_CONFIG,
    )
    if isinstance(target, S3Target):
        _s3_probes(report, clients, target, probe_id())
    else:
        _kinesis_probes(report, clients, target, probe_id(), put_test_record)
    return report


def _confused_deputy(report: Report, broker: CredentialBroker, key: RoleKey, region: str) -> None:
    wrong = RoleKey(
        key.role_arn, f"logferry-probe-{secrets.token_hex(4)}", key.session_name, key.duration
    )
    missing = RoleKey(key.role_arn, None, key.session_name, key.duration)
    leaks = []
    for label, probe in (("a wrong external ID", wrong), ("no external ID", missing)):
        try:
            broker.assume_in_region(probe, region)
            leaks.append(label)
        except SetupError:
            pass
        except TransientError as exc:
            report.add(
                "external-id required",
                "warn",
                f"could not probe with {label}: {exc.code}",
                exc.fix,
            )
            return
    if leaks:
        report.add(
            "external-id required",
            "fail",
            f"the role can be assumed with {' and '.join(leaks)}: it trusts the vendor without "
            "requiring the external ID (confused-deputy risk).",
            f'add Condition {{"StringEquals": {{"sts:ExternalId": "{report.external_id}"}}}} to '
            "the trust policy (re-run `logferry role create`)",
        )
    else:
        report.add("external-id required", "pass", "wrong and missing external IDs are denied")


def _domain_unusable(report: Report, domain: str) -> None:
    """One text for a customer `domain` that is inside, refused, silent or unknown: no oracle."""
    report.add("s3 write", "fail", refusal_message(domain), REFUSAL_FIX)


def _s3_probes(report: Report, clients: AwsClients, target: S3Target, probe: str) -> None:
    domain = clients.target.customer_url("s3")
    if domain is not None:
        try:
            clients.check_customer_url("s3")  # resolve and check, before any connection
        except (DomainRefused, OSError):
            _domain_unusable(report, domain)
            return
    s3 = clients.client("s3", target.region)
    key = f"{target.prefix}logferry-role-check-{probe}.probe"
    headers = dict(target.put_args)
    shown = sorted(k for k in headers if k not in ("ContentType", "ContentEncoding"))
    with_headers = f" with {', '.join(shown)}" if shown else ""
    opened: list[str] = []
    try:
        probe_s3_write(s3_call(s3), target, key, created=opened.append)
        report.add(
            "s3 write",
            "pass",
            f"CreateMultipartUpload{with_headers} + AbortMultipartUpload under "
            f"s3://{target.bucket}/{target.prefix} (nothing left behind)",
        )
    except AwsError as exc:
        if exc.info.operation == "AbortMultipartUpload" and was_answered(exc):
            report.add(
                "s3 abort",
                "fail",
                f"AbortMultipartUpload was denied ({exc.code}): s3:AbortMultipartUpload is "
                f"missing. The probe's upload {opened[0]} of {key} is still open.",
                exc.fix,
            )
        elif exc.info.operation == "AbortMultipartUpload":
            report.add(
                "s3 abort",
                "warn",
                f"S3 unreachable for AbortMultipartUpload: {exc.info.message}. The probe's "
                f"upload {opened[0]} of {key} may still be open.",
                exc.fix,
            )
        elif not was_answered(exc):
            if domain is not None:  # refused at connect time, connection refused, timeout, TLS
                _domain_unusable(report, domain)
                return
            report.add("s3 write", "warn", f"S3 unreachable: {exc.info.message}", None)
        elif was_denied(exc):
            report.add(
                "s3 write",
                "fail",
                f"CreateMultipartUpload{with_headers} on s3://{target.bucket}/{key} was denied "
                f"({exc.code}).",
                exc.fix,
            )
        elif exc.code == "NoSuchBucket":
            report.add(
                "s3 write",
                "fail",
                f"bucket {target.bucket} does not exist.",
                "create the bucket or correct the bucket name",
            )
        else:
            report.add("s3 write", "fail", f"CreateMultipartUpload failed: {exc.code}", None)

    # Over-privilege: every one of these should be denied.
    extra: list[str] = []

    def allowed(label: str, call: Callable[[], object], ok_codes: set[str]) -> None:
        try:
            call()
            extra.append(label)
        except ClientError as exc:
            if error_code(exc) in ok_codes:
                extra.append(label)
        except BotoCoreError:
            pass

    allowed("s3:GetObject", lambda: s3.get_object(Bucket=target.bucket, Key=key), {"NoSuchKey"})
    allowed("s3:ListBucket (HeadBucket)", lambda: s3.head_bucket(Bucket=target.bucket), set())
    allowed("s3:ListBucket", lambda: s3.list_objects_v2(Bucket=target.bucket, MaxKeys=1), set())
    if target.prefix:
        outside = f"logferry-role-check-outside-{probe}.probe"

        def write_outside() -> None:
            made = s3.create_multipart_upload(Bucket=target.bucket, Key=outside)["UploadId"]
            try:
                s3.abort_multipart_upload(Bucket=target.bucket, Key=outside, UploadId=made)
            except ClientError:
                pass

        allowed(f"s3:PutObject outside {target.prefix}", write_outside, set())
    _over_privilege(report, extra)


def _over_privilege(report: Report, extra: list[str]) -> None:
    if extra:
        report.add(
            "least privilege",
            "warn",
            f"the role also grants {', '.join(extra)}; logferry needs only write access.",
            "remove those actions from the role's permission policy (see `logferry role policies`)",
        )
    else:
        report.add("least privilege", "pass", "no read or list access beyond what is needed")


def _kinesis_probes(
    report: Report, clients: AwsClients, target: KinesisTarget, probe: str, put_test_record: bool
) -> None:
    stream = target.stream
    kinesis: BaseClient = clients.client("kinesis", stream.region)
    first_shard = "shardId-000000000000"
    try:
        shards = kinesis.list_shards(StreamARN=stream.arn)["Shards"]
        if shards:
            first_shard = shards[0]["ShardId"]
        open_shards = [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
        report.add("kinesis list-shards", "pass", f"{len(open_shards)} open shard(s)")
    except ClientError as exc:
        code = error_code(exc)
        if is_denied(exc):
            fix = f"the role's permission policy must allow kinesis:ListShards on {stream.arn}"
        elif code == "ResourceNotFoundException":
            fix = f"create the stream {stream.name} in {stream.region} or correct the stream ARN"
        else:
            fix = None
        report.add("kinesis list-shards", "fail", f"ListShards failed: {code}", fix)
    except BotoCoreError as exc:
        report.add("kinesis list-shards", "warn", f"Kinesis unreachable: {exc}")
    if put_test_record:
        data = (
            json.dumps(
                {
                    "logferry_role_check": probe,
                    "note": "test record written by logferry role check",
                    "time": int(time.time()),
                }
            ).encode()
            + b"\n"
        )
        try:
            result = kinesis.put_records(
                StreamARN=stream.arn,
                Records=[{"Data": data, "PartitionKey": f"logferry-role-check-{probe}"}],
            )
            if result.get("FailedRecordCount"):
                error = result["Records"][0].get("ErrorCode")
                report.add("kinesis put-records", "warn", f"test record not accepted: {error}")
            else:
                report.add("kinesis put-records", "pass", f"test record {probe} written")
        except ClientError as exc:
            report.add(
                "kinesis put-records",
                "fail",
                f"PutRecords failed: {error_code(exc)}",
                f"the role's permission policy must allow kinesis:PutRecords on {stream.arn}",
            )
    extra: list[str] = []
    for label, call in (
        ("kinesis:DescribeStream", lambda: kinesis.describe_stream(StreamARN=stream.arn)),
        (
            "kinesis:GetShardIterator (read)",
            lambda: kinesis.get_shard_iterator(
                StreamARN=stream.arn,
                ShardId=first_shard,
                ShardIteratorType="LATEST",
            ),
        ),
    ):
        try:
            call()
            extra.append(label)
        except ClientError as exc:
            if not is_denied(exc) and error_code(exc) != "ResourceNotFoundException":
                extra.append(label)
        except BotoCoreError:
            pass
    _over_privilege(report, extra)
