"""`logferry admin …`: the operator's terminal over the management API of a running `serve`.

Everything the README used to show as `curl` calls (customers, tokens, endpoints, verify,
status), with the CLI's usual contract: tables by default, one JSON document with `--json`,
exit 2 for bad flags (naming the flag), exit 1 with the server's own error and fix otherwise.
This module holds the `admin` app, customers and tokens; endpoints and status have their own
modules (`admin_endpoints`, `admin_status`), shared helpers are in `admin_common`.
"""

from __future__ import annotations

from typing import Any

import typer

from logferry.commands.admin_common import (
    TokenEnvOption,
    admin_client,
    cell,
    new_table,
    path_part,
)
from logferry.commands.admin_endpoints import (
    endpoints_app,
    print_check_report,
    read_endpoint_file,
)
from logferry.commands.admin_status import STATUS_EPILOG, STATUS_HELP, status_command
from logferry.commands.api_client import (
    ADMIN_TOKEN_ENV,
    ApiError,
    ApiProfileOption,
    UrlOption,
)
from logferry.commands.common import JsonOption, cli_errors, err, out, print_json

__all__ = ["app", "print_check_report", "read_endpoint_file"]

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
app.add_typer(customers_app, name="customers")
app.add_typer(tokens_app, name="tokens")
app.add_typer(endpoints_app, name="endpoints")


app.command("status", help=STATUS_HELP, epilog=STATUS_EPILOG)(status_command)


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
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        customers = api.json("GET", "/v1/customers")
        if as_json:
            print_json(customers)
            return
        table = new_table("customer", "external ID", "endpoints", "created")
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
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        document = api.json("GET", f"/v1/customers/{path_part(customer)}")
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
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        body = {"external_id": external_id} if external_id is not None else {}
        response = api.request("PUT", f"/v1/customers/{path_part(customer)}", json=body)
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
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        api.json("DELETE", f"/v1/customers/{path_part(customer)}")
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
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        document = api.json("POST", f"/v1/customers/{path_part(customer)}/tokens")
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
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        tokens = api.json("GET", f"/v1/customers/{path_part(customer)}/tokens")
        if as_json:
            print_json(tokens)
            return
        table = new_table("token id", "source", "created", "revoked")
        for t in tokens:
            table.add_row(
                t["id"], cell(t.get("source")), cell(t.get("created")), cell(t.get("revoked"))
            )
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
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        api.json("DELETE", f"/v1/customers/{path_part(customer)}/tokens/{path_part(token_id)}")
        if as_json:
            print_json({"revoked": token_id, "customer_id": customer})
        else:
            out.print(f"Revoked token {token_id} of {customer}.", highlight=False)
