"""`logferry role policies|create`: the customer's half of the setup.

The selector options (`--for`, `--bucket`, `--prefix`, `--stream-arn`, `--external-id`,
`--vendor-account`) and `resolve_destination` are public so other `role` commands (e.g.
`role check`) declare and validate them the same way.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any

import typer
from rich.markup import escape

from logferry.aws.clients import AwsClients, AwsTarget
from logferry.aws.destination import default_policy_name, default_role_name, resolve_destination
from logferry.aws.names import (
    FASTLY_ACCOUNT_ID,
    parse_role_arn,
    role_arn,
    validate_account_id,
    validate_external_id,
    validate_policy_name,
    validate_region,
    validate_role_name,
)
from logferry.aws.policies import (
    Destination,
    KinesisDestination,
    build_policies,
)
from logferry.aws.provision import ProvisionResult, RoleRequest, provision_role
from logferry.aws.render import (
    cli_commands,
    cloudformation_template,
    terraform_config,
    terraform_json,
)
from logferry.commands.common import (
    EndpointUrlOption,
    JsonOption,
    ProfileOption,
    RegionOption,
    cli_errors,
    err,
    out,
    print_json,
    validated,
)
from logferry.errors import InputError

app = typer.Typer(
    help="Customer side: the IAM role that lets the vendor deliver logs into your account.",
    no_args_is_help=True,
)


class TargetKind(StrEnum):
    s3 = "s3"
    kinesis = "kinesis"


class OutputFormat(StrEnum):
    policies = "policies"
    cli = "cli"
    cloudformation = "cloudformation"
    terraform = "terraform"


# --- shared options (reuse these in every `role` command) ---------------------------------------

ForOption = typer.Option(
    None,
    "--for",
    help="Destination type: s3 or kinesis (inferred from --bucket / --stream-arn if omitted).",
    case_sensitive=False,
)
BucketOption = typer.Option(None, "--bucket", help="S3 bucket the logs are written to.")
PrefixOption = typer.Option(
    "",
    "--prefix",
    help="Only allow keys starting with this prefix (e.g. 'cdn/'); default: the whole bucket.",
)
StreamArnOption = typer.Option(
    None,
    "--stream-arn",
    help="Kinesis data stream ARN (gives partition, region and account).",
)
ExternalIdOption = typer.Option(
    ...,
    "--external-id",
    help="The external ID the vendor gave you (2-1224 chars of letters, digits, _+=,.@:/-).",
)
VendorAccountOption = typer.Option(
    FASTLY_ACCOUNT_ID,
    "--vendor-account",
    help="The vendor's 12-digit AWS account ID allowed to assume the role.",
)


def check_external_id(value: str) -> str:
    return validated("--external-id", validate_external_id, value)


def check_vendor_account(value: str) -> str:
    return validated("--vendor-account", validate_account_id, value)


# --- role policies ------------------------------------------------------------------------------

POLICIES_EPILOG = (
    "Examples:\n\n"
    "  logferry role policies --bucket my-logs --prefix cdn/ --external-id 4Bxz8Qf2 --json\n\n"
    "  logferry role policies --for kinesis --stream-arn "
    "arn:aws:kinesis:us-east-1:123456789012:stream/logs --external-id 4Bxz8Qf2 --output cli\n\n"
    "  logferry role policies --bucket my-logs --external-id 4Bxz8Qf2 "
    "--output cloudformation > role.json\n\n"
    "  logferry role policies --bucket my-logs --external-id 4Bxz8Qf2 "
    "--output terraform > main.tf"
)


POLICIES_HELP = (
    "Print the trust, permission and (Kinesis) stream resource policies for the vendor's role."
    "\n\n"
    "Nothing is sent to AWS. The documents are those of Fastly's guide \"Creating an AWS IAM "
    'role for Fastly logging", with your bucket (and optional key prefix) or stream filled in. '
    "Each document is printed as plain JSON, ready to paste into the AWS console. "
    "--output cli prints the equivalent AWS CLI commands, --output cloudformation a template, "
    "--output terraform a main.tf (with --json: main.tf.json)."
)


@app.command("policies", help=POLICIES_HELP, epilog=POLICIES_EPILOG)
def policies_command(
    kind: TargetKind | None = ForOption,
    bucket: str | None = BucketOption,
    prefix: str = PrefixOption,
    stream_arn: str | None = StreamArnOption,
    external_id: str = ExternalIdOption,
    vendor_account: str = VendorAccountOption,
    role_arn_opt: str | None = typer.Option(
        None,
        "--role-arn",
        help="Kinesis: the role to allow in the stream's resource policy.",
    ),
    role_name: str | None = typer.Option(
        None,
        "--role-name",
        help="Role name for --output cli/cloudformation (and the resource policy's role "
        "ARN, in the stream's account). Default: logferry-<s3|kinesis>-logging.",
    ),
    policy_name: str | None = typer.Option(
        None, "--policy-name", help="Managed policy name. Default: <role-name>-policy."
    ),
    partition: str | None = typer.Option(
        None, "--partition", help="S3: aws (default), aws-cn or aws-us-gov."
    ),
    output: OutputFormat = typer.Option(
        OutputFormat.policies,
        "--output",
        help="policies (the JSON documents), cli (AWS CLI commands and files), cloudformation "
        "or terraform.",
        case_sensitive=False,
    ),
    as_json: bool = JsonOption,
) -> None:
    """Print the role's policy documents (see POLICIES_HELP); nothing is sent to AWS."""
    with cli_errors(as_json):
        dest = resolve_destination(kind, bucket, prefix, stream_arn, partition)
        ext = check_external_id(external_id)
        vendor = check_vendor_account(vendor_account)
        parsed_role = None
        if role_arn_opt is not None:
            if not isinstance(dest, KinesisDestination):
                raise InputError(
                    "--role-arn",
                    "applies to Kinesis only (the stream's resource policy).",
                    fix="Use --role-name to name the role for S3.",
                )
            try:
                parsed_role = parse_role_arn(role_arn_opt)
            except InputError as exc:
                raise InputError("--role-arn", exc.message, fix=exc.fix) from None
        if role_name is not None:
            role_name = validated("--role-name", validate_role_name, role_name)
            if parsed_role is not None and parsed_role.name != role_name:
                raise InputError(
                    "--role-name",
                    f"{role_name!r} differs from the name in --role-arn ({parsed_role.name!r}).",
                    fix="Give only one of them.",
                )
        name = role_name or (parsed_role.name if parsed_role else default_role_name(dest))
        pname = validated(
            "--policy-name", validate_policy_name, policy_name or default_policy_name(name)
        )

        the_role_arn: str | None = None
        if isinstance(dest, KinesisDestination):
            the_role_arn = (
                parsed_role.arn
                if parsed_role
                else role_arn(dest.partition, dest.stream.account_id, name)
            )
        policies = build_policies(dest, ext, vendor, the_role_arn)

        if output is OutputFormat.cli:
            rendering = cli_commands(policies, dest, role_name=name, policy_name=pname)
            if as_json:
                print_json(rendering.as_json())
            else:
                sys.stdout.write(rendering.script())
            return
        if output is OutputFormat.cloudformation:
            template = cloudformation_template(
                dest, ext, role_name=name, policy_name=pname, vendor_account=vendor
            )
            if as_json:
                print_json(template)
            else:
                sys.stdout.write(json.dumps(template, indent=2) + "\n")
            return
        if output is OutputFormat.terraform:
            if as_json:
                print_json(
                    terraform_json(policies, dest, vendor, role_name=name, policy_name=pname)
                )
            else:
                sys.stdout.write(
                    terraform_config(policies, dest, vendor, role_name=name, policy_name=pname)
                )
            return
        if as_json:
            print_json(policies.as_json())
            return
        _print_policies_human(dest, policies.as_json(), name, vendor, ext)


def _print_policies_human(
    dest: Destination, docs: dict[str, Any], role_name: str, vendor: str, external_id: str
) -> None:
    """Headings as plain lines, each document as bare JSON: copy it as is into the console."""
    write = sys.stdout.write
    write(f"Policies for {dest.describe()}, vendor account {vendor}, external ID {external_id}\n")
    titles = {
        "trust_policy": "Trust policy: the role's trust relationship (who may assume it).\n"
        "  Console: IAM > Roles > Create role > Custom trust policy",
        "permission_policy": "Permission policy: a customer-managed policy attached to the role.\n"
        "  Console: IAM > Policies > Create policy > JSON",
        "resource_policy": f"Stream resource policy: on the stream (allows {role_name}).\n"
        "  Console: Kinesis > Data streams > the stream > Data stream sharing",
    }
    for key, doc in docs.items():
        write(f"\n# {titles[key]}\n\n{json.dumps(doc, indent=2)}\n")
    write(
        "\nLet logferry create them: logferry role create with the same flags and "
        "--role-name NAME.\n"
    )


# --- role create --------------------------------------------------------------------------------

CREATE_EPILOG = (
    "Examples:\n\n"
    "  logferry role create --bucket my-logs --prefix cdn/ --external-id 4Bxz8Qf2 "
    "--role-name vendor-logs --abort-incomplete-multipart-days 7\n\n"
    "  logferry role create --for kinesis --stream-arn "
    "arn:aws:kinesis:us-east-1:123456789012:stream/logs --external-id 4Bxz8Qf2 "
    "--role-name vendor-logs --resource-policy --dry-run"
)


CREATE_HELP = (
    "Create the role, its policy and attachment (or bring them up to date) and print the role "
    "ARN to give to the vendor."
    "\n\n"
    "Safe to re-run: what is already right is left alone and the ARN stays the same. The trust "
    "policy always requires the external ID and is fixed before any permission is granted. "
    "Uses the standard AWS credential chain (or --profile)."
)


@app.command("create", help=CREATE_HELP, epilog=CREATE_EPILOG)
def create_command(
    kind: TargetKind | None = ForOption,
    bucket: str | None = BucketOption,
    prefix: str = PrefixOption,
    stream_arn: str | None = StreamArnOption,
    external_id: str = ExternalIdOption,
    vendor_account: str = VendorAccountOption,
    role_name: str = typer.Option(..., "--role-name", help="Name of the IAM role to create."),
    policy_name: str | None = typer.Option(
        None, "--policy-name", help="Customer-managed policy name. Default: <role-name>-policy."
    ),
    resource_policy: bool = typer.Option(
        False,
        "--resource-policy",
        help="Kinesis: also put the FastlyWrite statement into the stream's resource policy "
        "(merged with existing statements).",
    ),
    abort_days: int | None = typer.Option(
        None,
        "--abort-incomplete-multipart-days",
        help="S3: add a lifecycle rule aborting incomplete multipart uploads after N days "
        "(merged with existing rules).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would be created or updated; write nothing."
    ),
    profile: str | None = ProfileOption,
    region: str | None = RegionOption,
    endpoint_url: str | None = EndpointUrlOption,
    as_json: bool = JsonOption,
) -> None:
    """Create or update the role (see CREATE_HELP)."""
    with cli_errors(as_json):
        dest = resolve_destination(kind, bucket, prefix, stream_arn)
        request = RoleRequest(
            dest=dest,
            role_name=validated("--role-name", validate_role_name, role_name),
            external_id=check_external_id(external_id),
            policy_name=validated(
                "--policy-name", validate_policy_name, policy_name or default_policy_name(role_name)
            ),
            vendor_account=check_vendor_account(vendor_account),
            resource_policy=resource_policy,
            abort_multipart_days=abort_days,
        )
        if region is not None:
            region = validated("--region", validate_region, region)
        if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
            raise InputError(
                "--endpoint-url",
                f"{endpoint_url!r} is not an http(s) URL.",
                fix="Use e.g. http://127.0.0.1:5000.",
            )
        clients = make_clients(profile, endpoint_url)
        result = provision_role(clients, request, region=region, dry_run=dry_run)
        if as_json:
            print_json(result.model_dump(mode="json"))
        else:
            print_create_result(result)


def make_clients(profile: str | None, endpoint_url: str | None) -> AwsClients:
    """Clients from the standard credential chain (or `--profile`), optionally to an emulator."""
    from botocore.exceptions import ProfileNotFound

    try:
        return AwsClients(target=AwsTarget(endpoint_url=endpoint_url), profile=profile)
    except ProfileNotFound as exc:
        raise InputError(
            "--profile", f"{exc}.", fix="List profiles with `aws configure list-profiles`."
        ) from None


_SYMBOL = {
    "create-role": "+",
    "create-policy": "+",
    "attach-policy": "+",
    "update-trust-policy": "~",
    "create-policy-version": "~",
    "put-stream-policy": "~",
    "put-bucket-lifecycle": "~",
    "delete-policy-version": "-",
}


def print_create_result(result: ProvisionResult) -> None:
    if result.dry_run:
        head = "Plan (dry run, nothing written):" if result.changes else "Plan (dry run):"
    else:
        head = "Changes made:" if result.changes else ""
    if result.changes:
        out.print(f"[bold]{head}[/]", highlight=False)
        for change in result.changes:
            out.print(
                f"  {_SYMBOL[change.action]} [bold]{change.action}[/] {change.target}\n"
                f"      {change.detail}",
                highlight=False,
            )
    else:
        out.print("Everything is already up to date; nothing to change.", highlight=False)
    for warning in result.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    verb = "would be" if result.dry_run else "is"
    out.print(f"\nRole ARN ({verb}): [bold]{result.role_arn}[/]", highlight=False)
    out.print("Give it to the vendor as the endpoint's iam_role.", highlight=False)
    out.print(f"\n[bold]Next step:[/] {result.next_step}", highlight=False)
