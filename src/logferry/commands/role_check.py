"""`logferry role check`: does the role work in every STS region, is it safe, is it minimal?"""

from __future__ import annotations

import re

import typer
from botocore.exceptions import ProfileNotFound
from pydantic import ValidationError
from rich.table import Table

from logferry.aws.clients import AwsTarget
from logferry.aws.destination import resolve_destination
from logferry.aws.names import StreamArn, validate_region
from logferry.aws.policies import KinesisDestination, S3Destination
from logferry.aws.role_check import KinesisTarget, Report, S3Target, check_role
from logferry.aws.sts_broker import DEFAULT_STS_REGIONS, CredentialBroker
from logferry.commands.common import (
    EXIT_FAILED,
    EndpointUrlOption,
    JsonOption,
    ProfileOption,
    cli_errors,
    out,
    print_json,
    validated,
)
from logferry.commands.role import (
    BucketOption,
    ExternalIdOption,
    PrefixOption,
    StreamArnOption,
    VendorAccountOption,
    check_external_id,
    check_vendor_account,
)
from logferry.errors import InputError
from logferry.sinks.s3_config import S3Endpoint

CHECK_HELP = (
    "Check that the vendor can assume the role in each STS region, that the external ID is "
    "required, that the role can write (a multipart upload that is aborted at once, so nothing "
    "is left behind; ListShards for Kinesis), and that it grants nothing more.\n\n"
    "Runs with the vendor's credentials (standard AWS chain or --profile). Exit 0 only when no "
    "check failed; warnings do not fail."
)
CHECK_EPILOG = (
    "Examples:\n\n"
    "  logferry role check --role-arn arn:aws:iam::123456789012:role/logferry-s3-logging "
    "--external-id 4Bxz8Qf2 --bucket my-logs --prefix cdn/\n\n"
    "  logferry role check --role-arn arn:aws:iam::123456789012:role/logferry-kinesis-logging "
    "--external-id 4Bxz8Qf2 --stream-arn arn:aws:kinesis:us-east-1:123456789012:stream/logs "
    "--sts-endpoint us-east-1=http://127.0.0.1:5000 --endpoint-url http://127.0.0.1:5000 --json"
)

_STYLE = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}


def parse_sts_endpoints(values: list[str]) -> dict[str, str]:
    endpoints: dict[str, str] = {}
    for value in values:
        region, sep, url = value.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise InputError(
                "--sts-endpoint",
                f"{value!r} is not REGION=URL.",
                fix="Example: --sts-endpoint us-west-2=https://sts.us-west-2.amazonaws.com",
            )
        endpoints[validated("--sts-endpoint", validate_region, region)] = url
    return endpoints


def endpoint_put_args(
    dest: S3Destination, region: str, role_arn: str, headers: dict[str, str | None]
) -> tuple[tuple[str, str], ...]:
    """The headers delivery would send for an endpoint with these settings, validated by the
    endpoint model itself (so the flags accept exactly what an endpoint's fields accept)."""
    fields = {k: v for k, v in headers.items() if v is not None}
    try:
        endpoint = S3Endpoint(
            name="role-check",
            bucket_name=dest.bucket,
            path=dest.prefix,
            region=region,
            iam_role=role_arn,
            **fields,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        for name in sorted(headers, key=len, reverse=True):  # flags, not field names
            flag_name = "--" + name.replace("_", "-")
            message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag_name, message)
        field = str(error["loc"][0]) if error["loc"] else ""
        named = [n for n in headers if "--" + n.replace("_", "-") in message]
        flag_of = field if field in headers else (named[-1] if named else "")
        flag = "--" + flag_of.replace("_", "-") if flag_of else "the S3 settings"
        message = message if message.endswith(".") else message + "."
        raise InputError(flag, message, fix="See logferry role check --help.") from None
    if not fields:
        return ()
    return tuple(sorted(endpoint.put_args().items()))


def print_report(report: Report) -> None:
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("result")
    table.add_column("check")
    table.add_column("detail / fix", overflow="fold")
    for check in report.checks:
        text = check.detail + (f"\n[cyan]fix:[/] {check.fix}" if check.fix else "")
        table.add_row(_STYLE[check.status], check.name, text)
    out.print(table)
    verdict = "[green]role OK[/]" if report.ok else "[bold red]role check FAILED[/]"
    out.print(f"{verdict}: {report.role_arn}")


def check_command(
    role_arn: str = typer.Option(..., "--role-arn", help="The customer's role to check."),
    external_id: str = ExternalIdOption,
    bucket: str | None = BucketOption,
    prefix: str = PrefixOption,
    stream_arn: str | None = StreamArnOption,
    bucket_region: str = typer.Option(
        "us-east-1", "--bucket-region", help="Region of the S3 bucket."
    ),
    sts_region: list[str] = typer.Option(
        list(DEFAULT_STS_REGIONS),
        "--sts-region",
        help="STS regions the vendor uses (repeatable); each is checked separately.",
    ),
    sts_endpoint: list[str] = typer.Option(
        [], "--sts-endpoint", help="REGION=URL override for one STS region (repeatable)."
    ),
    vendor_account: str = VendorAccountOption,
    vendor_name: str = typer.Option("logferry", "--vendor-name", help="Shown in CloudTrail."),
    put_test_record: bool = typer.Option(
        False, "--put-test-record", help="Kinesis: also write one marked test record."
    ),
    redundancy: str | None = typer.Option(
        None,
        "--redundancy",
        help="S3: the endpoint's storage class (standard_ia, glacier_ir, …): the write probe "
        "sends it, as delivery will.",
    ),
    server_side_encryption: str | None = typer.Option(
        None,
        "--server-side-encryption",
        help="S3: AES256 or aws:kms — with aws:kms the probe proves kms:GenerateDataKey too.",
    ),
    server_side_encryption_kms_key_id: str | None = typer.Option(
        None, "--server-side-encryption-kms-key-id", help="S3: the KMS key for aws:kms."
    ),
    acl: str | None = typer.Option(
        None, "--acl", help="S3: the endpoint's canned ACL (needs s3:PutObjectAcl)."
    ),
    endpoint_url: str | None = EndpointUrlOption,
    profile: str | None = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json):
        dest = resolve_destination(None, bucket, prefix, stream_arn)
        external_id = check_external_id(external_id)
        vendor_account = check_vendor_account(vendor_account)
        from logferry.aws.names import parse_role_arn

        try:
            parse_role_arn(role_arn)
        except InputError as exc:
            raise InputError("--role-arn", exc.message, fix=exc.fix) from None
        regions = [validated("--sts-region", validate_region, r) for r in sts_region]
        endpoints = parse_sts_endpoints(sts_endpoint)
        try:
            broker = CredentialBroker(
                vendor_name=vendor_name,
                vendor_account_id=vendor_account,
                regions=regions,
                sts_endpoints=endpoints,
                target=AwsTarget(endpoint_url=endpoint_url),
                profile=profile,
            )
        except ProfileNotFound as exc:
            raise InputError("--profile", f"{exc}.") from None
        target: S3Target | KinesisTarget
        headers = {
            "redundancy": redundancy,
            "server_side_encryption": server_side_encryption,
            "server_side_encryption_kms_key_id": server_side_encryption_kms_key_id,
            "acl": acl,
        }
        if isinstance(dest, S3Destination):
            region = validated("--bucket-region", validate_region, bucket_region)
            put_args = endpoint_put_args(dest, region, role_arn, headers)
            target = S3Target(dest.bucket, dest.prefix, region, put_args=put_args)
        else:
            given = [k for k, v in headers.items() if v is not None]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise InputError(flag, "is for S3 endpoints only.", fix=f"Drop {flag}.")
            assert isinstance(dest, KinesisDestination)
            stream: StreamArn = dest.stream
            target = KinesisTarget(stream)
        report = check_role(
            broker=broker,
            role_arn=role_arn,
            external_id=external_id,
            target=target,
            put_test_record=put_test_record,
        )
    if as_json:
        print_json(report.as_json())
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)
