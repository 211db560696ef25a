"""`logferry local`: run the embedded AWS emulator in the foreground."""

from __future__ import annotations

import json
import shlex
import signal
import threading
from pathlib import Path

import typer

from logferry.commands.common import JsonOption, cli_errors, out, print_json
from logferry.errors import InputError
from logferry.local.emulator import CUSTOMER_ACCOUNT_ID, VENDOR_ACCOUNT_ID, start_emulator

app = typer.Typer(
    help="The embedded AWS emulator (moto, IAM enforcement on) for trying logferry without AWS.",
)


@app.callback(invoke_without_command=True, epilog="Example:  logferry local --port 5000")
def run(
    ctx: typer.Context,
    port: int = typer.Option(5000, help="Loopback port to listen on (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Loopback address (127.0.0.1 or ::1)."),
    vendor_account: str = typer.Option(VENDOR_ACCOUNT_ID, help="Vendor AWS account ID."),
    customer_account: str = typer.Option(CUSTOMER_ACCOUNT_ID, help="Demo customer account ID."),
    as_json: bool = JsonOption,
) -> None:
    """Run the emulator until Ctrl-C and print both accounts' credentials as shell exports.

    The vendor user may only call sts:AssumeRole; the customer user is an administrator.
    """
    if ctx.invoked_subcommand is not None:
        return
    emulator = start_emulator(
        host=host,
        port=port,
        vendor_account_id=vendor_account,
        customer_account_id=customer_account,
    )
    try:
        if as_json:
            print_json(
                {
                    "endpoint_url": emulator.url,
                    "accounts": [
                        {**a.env(emulator.url), "account_id": a.account_id, "role": a.role}
                        for a in emulator.accounts
                    ],
                }
            )
        else:
            out.print(f"# logferry local AWS emulator at {emulator.url} (Ctrl-C stops it)")
            for account in emulator.accounts:
                who = (
                    "vendor (sts:AssumeRole only)" if account.role == "vendor" else "customer admin"
                )
                out.print(f"\n# {who}: account {account.account_id}, user {account.user_name}")
                for key, value in account.env(emulator.url).items():
                    out.print(f"export {key}={shlex.quote(value)}", highlight=False)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        emulator.stop()


@app.command("ls", epilog="Example:  logferry local ls --lines 3")
def list_landed(
    state: Path = typer.Option(
        Path(".logferry-local/demo.json"), "--state", help="Written by `logferry serve --local`."
    ),
    lines: int = typer.Option(2, "--lines", help="Show the first N lines of each object/shard."),
    as_json: bool = JsonOption,
) -> None:
    """Show what landed in the demo customer's bucket and stream (as the customer's admin)."""
    from logferry.local.inspect import read_demo

    with cli_errors(as_json):
        if not state.exists():
            raise InputError(
                "--state",
                f"{state} does not exist.",
                fix="Start the demo first: logferry serve --local",
            )
        doc = read_demo(json.loads(state.read_text()))
    if as_json:
        print_json(doc)
        return
    out.print(f"[bold]s3://{doc['bucket']}[/]: {len(doc['objects'])} object(s)")
    for obj in doc["objects"]:
        out.print(f"  {obj['key']}  {obj['size']} B  {obj['lines']} line(s)", highlight=False)
        for line in obj["sample"][:lines]:
            out.print(f"      {line}", highlight=False, markup=False)
    out.print(f"[bold]kinesis {doc['stream']}[/]: {doc['records']} record(s)")
    for shard in doc["shards"]:
        out.print(f"  {shard['shard_id']}: {shard['records']} record(s)", highlight=False)
        for line in shard["sample"][:lines]:
            out.print(f"      {line}", highlight=False, markup=False)
