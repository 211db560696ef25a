"""`logferry admin endpoints …`: a customer's endpoints over the management API.

list, get, put (from a TOML or JSON file, role check first), delete, verify. What an endpoint's
destination looks like in `list` comes from its type's endpoint model (`sinks.registry`), so no
command here names a destination.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import typer

from logferry.commands.admin_common import (
    TokenEnvOption,
    admin_client,
    cell,
    new_table,
    path_part,
)
from logferry.commands.api_client import ApiError, ApiProfileOption, UrlOption
from logferry.commands.common import JsonOption, cli_errors, err, out, print_json
from logferry.errors import InputError
from logferry.sinks.registry import FACTORIES

endpoints_app = typer.Typer(
    help="A customer's S3 / Kinesis endpoints: list, get, put from a TOML or JSON file, "
    "delete, verify (the role check).",
    no_args_is_help=True,
    epilog="Example:  logferry admin endpoints put acme s3 --file s3.toml",
)


def read_endpoint_file(path: Path) -> dict[str, Any]:
    """An endpoint body from TOML (`type = "s3"` …) or JSON; the suffix decides, else try both."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError("--file", f"cannot read {path}: {exc.strerror or exc}.") from None
    suffix = path.suffix.lower()
    errors: list[str] = []
    for kind in ("json", "toml") if suffix != ".toml" else ("toml",):
        if suffix == ".json" and kind == "toml":
            break
        try:
            data = json.loads(text) if kind == "json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            errors.append(f"not {kind.upper()} ({exc})")
            continue
        if not isinstance(data, dict):
            raise InputError("--file", f"{path} must hold one object/table, not {type(data)}.")
        return data
    raise InputError(
        "--file",
        f"{path}: {'; '.join(errors)}.",
        fix='Write e.g. type = "s3"\\nbucket_name = "my-logs"\\niam_role = "arn:aws:iam::…" '
        "in a .toml file, or the same as a JSON object.",
    )


def _print_endpoint(document: dict[str, Any]) -> None:
    table = new_table("field", "value")
    for key, value in document.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    out.print(table)


def print_check_report(report: dict[str, Any], *, to_stderr: bool = False) -> None:
    """The role-check report as the `role check` table."""
    style = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}
    table = new_table("result", "check", "detail / fix")
    for check in report.get("checks", []):
        text = check["detail"] + (f"\n[cyan]fix:[/] {check['fix']}" if check.get("fix") else "")
        table.add_row(style.get(check["status"], check["status"]), check["name"], text)
    console = err if to_stderr else out
    console.print(table)
    verdict = "[green]role OK[/]" if report.get("ok") else "[bold red]role check FAILED[/]"
    console.print(f"{verdict}: {report.get('role_arn')}", highlight=False)


def _destination(endpoint: dict[str, Any]) -> str:
    """Where an endpoint delivers, in its own type's words ("-" for a type this CLI lacks)."""
    factory = FACTORIES.get(str(endpoint.get("type")))
    return factory.model.destination_of(endpoint) if factory is not None else "-"


@endpoints_app.command(
    "list",
    help="List a customer's endpoints.",
    epilog="Example:  logferry admin endpoints list acme",
)
def endpoints_list(
    customer: str = typer.Argument(..., help="Customer ID."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        endpoints = api.json("GET", f"/v1/customers/{path_part(customer)}/endpoints")
        if as_json:
            print_json(endpoints)
            return
        table = new_table("name", "type", "destination", "iam_role")
        for e in endpoints:
            dest = _destination(e)
            table.add_row(e["name"], e["type"], dest, cell(e.get("iam_role")))
        out.print(table)


@endpoints_app.command(
    "get",
    help="Show one endpoint's configuration.",
    epilog="Example:  logferry admin endpoints get acme s3 --json",
)
def endpoints_get(
    customer: str = typer.Argument(..., help="Customer ID."),
    name: str = typer.Argument(..., help="Endpoint name."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        document = api.json(
            "GET", f"/v1/customers/{path_part(customer)}/endpoints/{path_part(name)}"
        )
        print_json(document) if as_json else _print_endpoint(document)


PUT_HELP = (
    "Create or replace an endpoint from a TOML or JSON file holding the body: `type` (s3 or "
    "kinesis) and Fastly's field names. The server runs the role check first and refuses the "
    "endpoint (exit 1, with the report) when a check fails; --no-verify skips it.\n\n"
    "NAME may be omitted when the file has `name`."
)
PUT_EPILOG = (
    "Example (s3.toml):\n\n"
    '  type = "s3"\n  bucket_name = "acme-logs"\n  path = "cdn/"\n  period = 300\n'
    '  iam_role = "arn:aws:iam::123456789012:role/logferry-s3-logging"\n\n'
    "  logferry admin endpoints put acme s3 --file s3.toml"
)


@endpoints_app.command("put", help=PUT_HELP, epilog=PUT_EPILOG)
def endpoints_put(
    customer: str = typer.Argument(..., help="Customer ID."),
    name: str | None = typer.Argument(None, help="Endpoint name (default: the file's `name`)."),
    file: Path = typer.Option(..., "--file", "-f", help="Endpoint body: .toml or .json."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Run the role check before accepting (default on)."
    ),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json):
        body = read_endpoint_file(file)
        if name is None:
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise InputError(
                    "NAME", "not given and the file has no `name`.", fix="Pass NAME after CUSTOMER."
                )
        with admin_client(url, token_env, profile) as api:
            path = f"/v1/customers/{path_part(customer)}/endpoints/{path_part(name)}"
            params = {} if verify else {"verify": "false"}
            try:
                response = api.request("PUT", path, json=body, params=params)
            except ApiError as exc:
                report = exc.body.get("report") if isinstance(exc.body, dict) else None
                if report and not as_json:
                    print_check_report(report, to_stderr=True)
                raise
        document = response.json()
        if as_json:
            print_json({**document, "created_now": response.status_code == 201})
            return
        verb = "Created" if response.status_code == 201 else "Updated"
        out.print(f"{verb} endpoint {name} of {customer}.", highlight=False)
        _print_endpoint(document)


@endpoints_app.command(
    "delete",
    help="Delete an endpoint (its undelivered data is dropped).",
    epilog="Example:  logferry admin endpoints delete acme s3",
)
def endpoints_delete(
    customer: str = typer.Argument(..., help="Customer ID."),
    name: str = typer.Argument(..., help="Endpoint name."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        api.json("DELETE", f"/v1/customers/{path_part(customer)}/endpoints/{path_part(name)}")
        if as_json:
            print_json({"deleted": name, "customer_id": customer})
        else:
            out.print(f"Deleted endpoint {name} of {customer}.", highlight=False)


@endpoints_app.command(
    "verify",
    help="Run the role check for an endpoint now (and retry delivery at once if it passes). "
    "Exit 1 when a check failed.",
    epilog="Example:  logferry admin endpoints verify acme s3",
)
def endpoints_verify(
    customer: str = typer.Argument(..., help="Customer ID."),
    name: str = typer.Argument(..., help="Endpoint name."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        report = api.json(
            "POST", f"/v1/customers/{path_part(customer)}/endpoints/{path_part(name)}/verify"
        )
    if as_json:
        print_json(report)
    else:
        print_check_report(report)
    if not report.get("ok"):
        raise typer.Exit(1)
