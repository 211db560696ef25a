"""`logferry admin …`: the operator's terminal over the management API of a running `serve`.

Everything the README used to show as `curl` calls (customers, tokens, endpoints, verify,
status), with the CLI's usual contract: tables by default, one JSON document with `--json`,
exit 2 for bad flags (naming the flag), exit 1 with the server's own error and fix otherwise.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from logferry.commands.api_client import (
    ADMIN_TOKEN_ENV,
    ApiClient,
    ApiError,
    ApiProfileOption,
    UrlOption,
    resolve_target,
)
from logferry.commands.common import JsonOption, cli_errors, err, out, print_json
from logferry.errors import InputError

TokenEnvOption = typer.Option(
    None,
    "--token-env",
    help=f"Environment variable holding the admin token (default: {ADMIN_TOKEN_ENV}).",
    show_default=False,
)

ADMIN_HELP = (
    "Operator CLI over the management API of a running `logferry serve`: customers, their "
    "ingest tokens, endpoints, and delivery status.\n\n"
    f"The server is --url (or $LOGFERRY_URL, default http://127.0.0.1:8080); the admin token "
    f"is read from ${ADMIN_TOKEN_ENV} (or --token-env NAME), or both come from --profile NAME "
    "in ~/.config/logferry/admin.toml:\n\n"
    '  \\[prod]\n  url = "https://logs.example.com"\n  token_env = "PROD_ADMIN_TOKEN"   '
    '# or token_file = "~/.secrets/logferry"'
)
ADMIN_EPILOG = (
    "Examples:\n\n"
    "  logferry admin customers create acme\n\n"
    "  logferry admin tokens create acme --json\n\n"
    "  logferry admin endpoints put acme s3 --file s3.toml\n\n"
    "  logferry admin status"
)

app = typer.Typer(help=ADMIN_HELP, epilog=ADMIN_EPILOG, no_args_is_help=True)
customers_app = typer.Typer(
    help="Create, show and delete customers (each gets its external ID).",
    no_args_is_help=True,
    epilog="Example:  logferry admin customers create acme --external-id 4Bxz8Qf2",
)
tokens_app = typer.Typer(
    help="A customer's ingest tokens: create (shown once), list, revoke.",
    no_args_is_help=True,
    epilog="Example:  logferry admin tokens create acme",
)
endpoints_app = typer.Typer(
    help="A customer's S3 / Kinesis endpoints: list, get, put from a TOML or JSON file, "
    "delete, verify (the role check).",
    no_args_is_help=True,
    epilog="Example:  logferry admin endpoints put acme s3 --file s3.toml",
)
app.add_typer(customers_app, name="customers")
app.add_typer(tokens_app, name="tokens")
app.add_typer(endpoints_app, name="endpoints")


def _client(url: str | None, token_env: str | None, profile: str | None) -> ApiClient:
    return ApiClient(resolve_target(url, token_env, profile, default_token_env=ADMIN_TOKEN_ENV))


def _p(value: str) -> str:
    return quote(value, safe="")


def _table(*columns: str) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _s(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


# --- customers ----------------------------------------------------------------------------------


def _print_customer(customer: dict[str, Any]) -> None:
    out.print(f"[bold]customer[/]     {customer['id']}", highlight=False)
    out.print(f"[bold]external ID[/]  {customer['external_id']}", highlight=False)
    out.print(f"[bold]created[/]      {customer['created']}", highlight=False)
    out.print(
        f"[bold]endpoints[/]    {', '.join(customer.get('endpoints') or []) or '-'}",
        highlight=False,
    )
    if customer.get("trust_policy_hint"):
        out.print(f"\nThe customer creates the role with:\n  {customer['trust_policy_hint']}")


@customers_app.command(
    "list", epilog="Example:  logferry admin customers list --json", help="List all customers."
)
def customers_list(
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        customers = api.json("GET", "/v1/customers")
        if as_json:
            print_json(customers)
            return
        table = _table("customer", "external ID", "endpoints", "created")
        for c in customers:
            table.add_row(c["id"], c["external_id"], ", ".join(c["endpoints"]) or "-", c["created"])
        out.print(table)
        out.print(f"{len(customers)} customer(s)", highlight=False)


@customers_app.command(
    "get",
    help="Show a customer: external ID, endpoints, and the trust policy its role needs.",
    epilog="Example:  logferry admin customers get acme",
)
def customers_get(
    customer: str = typer.Argument(..., help="Customer ID."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        document = api.json("GET", f"/v1/customers/{_p(customer)}")
        print_json(document) if as_json else _print_customer(document)


@customers_app.command(
    "create",
    help="Create a customer (or show it if it exists; nothing changes then). Its external ID "
    "follows the server's vendor.external_id_mode unless --external-id is given.",
    epilog="Example:  logferry admin customers create acme --external-id 4Bxz8Qf2",
)
def customers_create(
    customer: str = typer.Argument(..., help="Customer ID (2-128 of letters, digits, _+=,.@:-)."),
    external_id: str | None = typer.Option(
        None, "--external-id", help="Use this external ID instead of the server's default."
    ),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        body = {"external_id": external_id} if external_id is not None else {}
        response = api.request("PUT", f"/v1/customers/{_p(customer)}", json=body)
        document = response.json()
        if external_id is not None and document["external_id"] != external_id:
            raise ApiError(
                f"customer {customer} already exists with external ID "
                f"{document['external_id']!r}; it was not changed to {external_id!r}",
                fix="the external ID is in the customer's trust policy: keep it, or delete and "
                "re-create the customer (its role's trust policy must then change too).",
            )
        if as_json:
            print_json({**document, "created_now": response.status_code == 201})
            return
        out.print(
            "Created." if response.status_code == 201 else "Already exists (unchanged).",
            highlight=False,
        )
        _print_customer(document)


@customers_app.command(
    "delete",
    help="Delete a customer with its endpoints, tokens and undelivered data.",
    epilog="Example:  logferry admin customers delete acme",
)
def customers_delete(
    customer: str = typer.Argument(..., help="Customer ID."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        api.json("DELETE", f"/v1/customers/{_p(customer)}")
        if as_json:
            print_json({"deleted": customer})
        else:
            out.print(f"Deleted customer {customer}.", highlight=False)


# --- tokens -------------------------------------------------------------------------------------


@tokens_app.command(
    "create",
    help="Issue an ingest token for a customer. The token is shown once (only its hash is "
    "stored): hand it to the customer.",
    epilog="Example:  export LOGFERRY_TOKEN=$(logferry admin tokens create acme --json | "
    "jq -r .token)",
)
def tokens_create(
    customer: str = typer.Argument(..., help="Customer ID."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        document = api.json("POST", f"/v1/customers/{_p(customer)}/tokens")
        if as_json:
            print_json(document)
            return
        out.print(f"token id  {document['id']}", highlight=False)
        out.print(f"token     {document['token']}", highlight=False)
        err.print("Shown once: only its hash is kept. Revoke with `logferry admin tokens revoke`.")


@tokens_app.command(
    "list",
    help="List a customer's tokens (IDs and dates, never the secrets).",
    epilog="Example:  logferry admin tokens list acme",
)
def tokens_list(
    customer: str = typer.Argument(..., help="Customer ID."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        tokens = api.json("GET", f"/v1/customers/{_p(customer)}/tokens")
        if as_json:
            print_json(tokens)
            return
        table = _table("token id", "source", "created", "revoked")
        for t in tokens:
            table.add_row(t["id"], _s(t.get("source")), _s(t.get("created")), _s(t.get("revoked")))
        out.print(table)


@tokens_app.command(
    "revoke",
    help="Revoke one token; requests with it answer 401 from then on. A token from the config "
    'file ([[customers]] token_env / token_file, source "config" in `tokens list`) is refused '
    "(409): remove or rotate it in the config instead.",
    epilog="Example:  logferry admin tokens revoke acme 3f9a1c2d7e4b",
)
def tokens_revoke(
    customer: str = typer.Argument(..., help="Customer ID."),
    token_id: str = typer.Argument(..., help="Token ID (from `tokens list`), not the secret."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        api.json("DELETE", f"/v1/customers/{_p(customer)}/tokens/{_p(token_id)}")
        if as_json:
            print_json({"revoked": token_id, "customer_id": customer})
        else:
            out.print(f"Revoked token {token_id} of {customer}.", highlight=False)


# --- endpoints ----------------------------------------------------------------------------------


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
    table = _table("field", "value")
    for key, value in document.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    out.print(table)


def print_check_report(report: dict[str, Any], *, to_stderr: bool = False) -> None:
    """The role-check report as the `role check` table."""
    style = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}
    table = _table("result", "check", "detail / fix")
    for check in report.get("checks", []):
        text = check["detail"] + (f"\n[cyan]fix:[/] {check['fix']}" if check.get("fix") else "")
        table.add_row(style.get(check["status"], check["status"]), check["name"], text)
    console = err if to_stderr else out
    console.print(table)
    verdict = "[green]role OK[/]" if report.get("ok") else "[bold red]role check FAILED[/]"
    console.print(f"{verdict}: {report.get('role_arn')}", highlight=False)


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
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        endpoints = api.json("GET", f"/v1/customers/{_p(customer)}/endpoints")
        if as_json:
            print_json(endpoints)
            return
        table = _table("name", "type", "destination", "iam_role")
        for e in endpoints:
            dest = (
                f"s3://{e.get('bucket_name')}/{e.get('path', '')}"
                if e["type"] == "s3"
                else f"{e.get('topic')} ({e.get('region', '-')})"
            )
            table.add_row(e["name"], e["type"], dest, _s(e.get("iam_role")))
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
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        document = api.json("GET", f"/v1/customers/{_p(customer)}/endpoints/{_p(name)}")
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
        with _client(url, token_env, profile) as api:
            path = f"/v1/customers/{_p(customer)}/endpoints/{_p(name)}"
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
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        api.json("DELETE", f"/v1/customers/{_p(customer)}/endpoints/{_p(name)}")
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
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        report = api.json("POST", f"/v1/customers/{_p(customer)}/endpoints/{_p(name)}/verify")
    if as_json:
        print_json(report)
    else:
        print_check_report(report)
    if not report.get("ok"):
        raise typer.Exit(1)


# --- status -------------------------------------------------------------------------------------


def _status_rows(api: ApiClient, customer: str | None) -> list[dict[str, Any]]:
    if customer is not None:
        ids = [customer]
    else:
        ids = [c["id"] for c in api.json("GET", "/v1/customers")]
    rows = []
    for cid in ids:
        for e in api.json("GET", f"/v1/customers/{_p(cid)}/endpoints"):
            rows.append(
                api.json("GET", f"/v1/customers/{_p(cid)}/endpoints/{_p(e['name'])}/status")
            )
    return rows


def _state(state: str) -> str:
    colour = {"error": "bold red", "retrying": "yellow", "active": "green", "idle": "dim"}
    return f"[{colour[state]}]{state}[/]" if state in colour else state


def _print_status(status: dict[str, Any]) -> None:
    lines, size = status["lines"], status["bytes"]
    unit = "objects" if "objects" in status else "records"
    out.print(
        f"[bold]{status['customer_id']}/{status['name']}[/] ({status['type']}): "
        f"{_state(status['state'])}",
        highlight=False,
    )
    table = _table("", "accepted", "delivered", "pending")
    table.add_row("lines", *(f"{lines[k]:,}" for k in ("accepted", "delivered", "pending")))
    table.add_row("bytes", *(f"{size[k]:,}" for k in ("accepted", "delivered", "pending")))
    out.print(table)
    out.print(f"{unit}: {status.get(unit, 0):,}   last success: {_s(status.get('last_success'))}")
    last = status.get("last_error")
    if last:
        out.print(
            f"[bold red]last error[/] {last.get('time')} {last.get('code')}: {last.get('message')}"
            + (f"\n  [cyan]fix:[/] {last['fix']}" if last.get("fix") else ""),
            highlight=False,
        )
    errors = status.get("errors") or []
    if errors:
        table = _table("time", "code", "message / fix")
        for e in errors[:10]:
            table.add_row(
                _s(e.get("time")),
                _s(e.get("code")),
                _s(e.get("message")) + (f"\nfix: {e['fix']}" if e.get("fix") else ""),
            )
        out.print(f"recent errors ({len(errors)} kept, newest first):")
        out.print(table)


_STATUS_COLUMNS = (
    "customer",
    "endpoint",
    "type",
    "state",
    "accepted",
    "delivered",
    "pending",
    "last success",
    "last error",
)


def _status_cells(s: dict[str, Any]) -> list[str]:
    last = s.get("last_error") or {}
    return [
        s["customer_id"],
        s["name"],
        s["type"],
        s["state"],
        f"{s['lines']['accepted']:,}",
        f"{s['lines']['delivered']:,}",
        f"{s['lines']['pending']:,}",
        _s(s.get("last_success")),
        _s(last.get("code")),
    ]


def _print_status_rows(rows: list[dict[str, Any]]) -> None:
    """A table when it fits the terminal (80 columns when piped), else one record per endpoint.

    A table squeezed into too few columns folds every cell over several lines (`demo-c` /
    `ustome` / `r`): ids and times must stay whole so they can be read, copied and grepped.
    """
    cells = [_status_cells(s) for s in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(_STATUS_COLUMNS)]
    needed = sum(widths) + 3 * len(widths) + 1  # rich's box: "│ " + " │ " between + " │"
    if needed <= out.width:
        table = Table(show_header=True, header_style="bold", expand=False)
        for column in _STATUS_COLUMNS:
            numeric = column in ("accepted", "delivered", "pending")
            table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
        for s, row in zip(rows, cells, strict=True):
            table.add_row(*row[:3], _state(s["state"]), *row[4:])
        out.print(table)
        return
    for s, row in zip(rows, cells, strict=True):
        customer, name, type_, _, accepted, delivered, pending, success, error = row
        head = f"[bold]{escape(customer)}[/] / [bold]{escape(name)}[/]  {type_}"
        out.print(f"{head}  {_state(s['state'])}", highlight=False)
        out.print(
            f"  lines         {accepted} accepted, {delivered} delivered, {pending} pending",
            highlight=False,
        )
        out.print(f"  last success  {success}", highlight=False)
        if error != "-":
            out.print(f"  last error    {escape(error)}", highlight=False)


STATUS_HELP = (
    "Delivery status. No argument: one row per endpoint of every customer; CUSTOMER: that "
    "customer's endpoints; CUSTOMER ENDPOINT: the full status with recent errors and fixes."
)
STATUS_EPILOG = "Examples:\n\n  logferry admin status\n\n  logferry admin status acme s3 --json"


@app.command("status", help=STATUS_HELP, epilog=STATUS_EPILOG)
def status_command(
    customer: str | None = typer.Argument(None, help="Customer ID (default: all)."),
    name: str | None = typer.Argument(None, help="Endpoint name (default: all of them)."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), _client(url, token_env, profile) as api:
        if customer is not None and name is not None:
            status = api.json("GET", f"/v1/customers/{_p(customer)}/endpoints/{_p(name)}/status")
            print_json(status) if as_json else _print_status(status)
            return
        rows = _status_rows(api, customer)
        if as_json:
            print_json({"endpoints": rows})
            return
        _print_status_rows(rows)
        failing = sum(1 for s in rows if s["state"] == "error")
        out.print(
            f"{len(rows)} endpoint(s), {failing} in error"
            + ("; details: logferry admin status CUSTOMER ENDPOINT" if failing else ""),
            highlight=False,
        )
