"""`logferry admin status`: delivery status of one endpoint, a customer's, or every one."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from logferry.commands.admin_common import (
    TokenEnvOption,
    admin_client,
    cell,
    new_table,
    path_part,
)
from logferry.commands.api_client import ApiClient, ApiProfileOption, UrlOption
from logferry.commands.common import JsonOption, cli_errors, out, print_json


def _status_rows(api: ApiClient, customer: str | None) -> list[dict[str, Any]]:
    if customer is not None:
        ids = [customer]
    else:
        ids = [c["id"] for c in api.json("GET", "/v1/customers")]
    rows = []
    for cid in ids:
        for e in api.json("GET", f"/v1/customers/{path_part(cid)}/endpoints"):
            rows.append(
                api.json(
                    "GET", f"/v1/customers/{path_part(cid)}/endpoints/{path_part(e['name'])}/status"
                )
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
    table = new_table("", "accepted", "delivered", "pending")
    table.add_row("lines", *(f"{lines[k]:,}" for k in ("accepted", "delivered", "pending")))
    table.add_row("bytes", *(f"{size[k]:,}" for k in ("accepted", "delivered", "pending")))
    out.print(table)
    out.print(f"{unit}: {status.get(unit, 0):,}   last success: {cell(status.get('last_success'))}")
    last = status.get("last_error")
    if last:
        out.print(
            f"[bold red]last error[/] {last.get('time')} {last.get('code')}: {last.get('message')}"
            + (f"\n  [cyan]fix:[/] {last['fix']}" if last.get("fix") else ""),
            highlight=False,
        )
    errors = status.get("errors") or []
    if errors:
        table = new_table("time", "code", "message / fix")
        for e in errors[:10]:
            table.add_row(
                cell(e.get("time")),
                cell(e.get("code")),
                cell(e.get("message")) + (f"\nfix: {e['fix']}" if e.get("fix") else ""),
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
        cell(s.get("last_success")),
        cell(last.get("code")),
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


def status_command(
    customer: str | None = typer.Argument(None, help="Customer ID (default: all)."),
    name: str | None = typer.Argument(None, help="Endpoint name (default: all of them)."),
    url: str | None = UrlOption,
    token_env: str | None = TokenEnvOption,
    profile: str | None = ApiProfileOption,
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json), admin_client(url, token_env, profile) as api:
        if customer is not None and name is not None:
            status = api.json(
                "GET", f"/v1/customers/{path_part(customer)}/endpoints/{path_part(name)}/status"
            )
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
