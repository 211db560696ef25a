"""What every `logferry admin …` command shares: the token option, the API client, table cells."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer
from rich.table import Table

from logferry.commands.api_client import ADMIN_TOKEN_ENV, ApiClient, resolve_target

TokenEnvOption = typer.Option(
    None,
    "--token-env",
    help=f"Environment variable holding the admin token (default: {ADMIN_TOKEN_ENV}).",
    show_default=False,
)


def admin_client(url: str | None, token_env: str | None, profile: str | None) -> ApiClient:
    """The management API client from --url / --token-env / --profile (or their defaults)."""
    return ApiClient(resolve_target(url, token_env, profile, default_token_env=ADMIN_TOKEN_ENV))


def path_part(value: str) -> str:
    """One URL path segment (customer IDs and endpoint names may hold '/'-free punctuation)."""
    return quote(value, safe="")


def new_table(*columns: str) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def cell(value: Any) -> str:
    """A table cell: "-" for nothing."""
    return "-" if value is None or value == "" else str(value)
