"""The `logferry` console script: one typer app, one sub-app per concern."""

from __future__ import annotations

import typer

from logferry.commands.admin import app as admin_app
from logferry.commands.local import app as local_app
from logferry.commands.role import app as role_app
from logferry.commands.role_check import CHECK_EPILOG, CHECK_HELP, check_command
from logferry.commands.send import SEND_EPILOG, SEND_HELP, send_command
from logferry.commands.serve import SERVE_EPILOG, SERVE_HELP, serve_command

app = typer.Typer(
    name="logferry",
    help=(
        "Stream log lines into customers' own AWS accounts (S3, Kinesis) through a "
        "cross-account IAM role with an external ID.\n\n"
        "Customer side: `logferry role policies|create|check`.  "
        "Vendor side: `logferry serve`, operated with `logferry admin`, fed by `logferry send`.  "
        "Try it with no AWS account: `logferry serve --local`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
role_app.command("check", help=CHECK_HELP, epilog=CHECK_EPILOG)(check_command)
app.add_typer(role_app, name="role")
app.add_typer(local_app, name="local")
app.add_typer(admin_app, name="admin")
app.command("serve", help=SERVE_HELP, epilog=SERVE_EPILOG)(serve_command)
app.command("send", help=SEND_HELP, epilog=SEND_EPILOG)(send_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
