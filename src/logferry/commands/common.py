"""What every command shares: JSON vs human output, error → exit code, AWS options."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from logferry.errors import InputError, LogferryError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_FAILED = 1
EXIT_USAGE = 2

JsonOption = typer.Option(False, "--json", help="Print one JSON document instead of text.")
ProfileOption = typer.Option(None, "--profile", help="AWS profile (standard credential chain).")
RegionOption = typer.Option(None, "--region", help="AWS region for the API calls.")
EndpointUrlOption = typer.Option(
    None,
    "--endpoint-url",
    help="Send every AWS call to this URL (e.g. the local emulator `logferry local`).",
)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def fail(
    message: str, *, as_json: bool = False, exit_code: int = EXIT_FAILED, **extra: Any
) -> NoReturn:
    if as_json:
        print_json({"error": message, **extra})
    else:
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(exit_code)


@contextmanager
def cli_errors(as_json: bool = False) -> Iterator[None]:
    """Turn our exceptions into one clear line and the right exit code."""
    try:
        yield
    except InputError as exc:
        fail(str(exc), as_json=as_json, exit_code=EXIT_USAGE, where=exc.where)
    except LogferryError as exc:
        extra: dict[str, Any] = {}
        info = getattr(exc, "info", None)
        if info is not None:
            extra = {"code": info.code, "region": info.region}
        status = getattr(exc, "status", None)
        if status is not None:
            extra["status"] = status  # an HTTP answer from `logferry serve`
        if exc.fix:
            extra["fix"] = exc.fix
        fail(str(exc), as_json=as_json, **extra)


def validated(where: str, check: Callable[[str], str], value: str) -> str:
    """Run a validator and attach the flag name to its error."""
    try:
        return check(value)
    except InputError as exc:
        raise InputError(where, exc.message, fix=exc.fix) from None
