"""`logferry serve`: the vendor service (placeholder until the service lands)."""

from __future__ import annotations

import typer


def serve_command() -> None:
    """Run the vendor service (not yet available)."""
    raise typer.Exit(1)
