"""`logferry send`: ship lines from stdin or files to a running `logferry serve`.

The command is the display and the exit code; `commands.sender` does the batching and the
retries. A progress line appears only when stderr is a terminal, so pipelines and logs get
nothing but the summary.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from logferry.commands.api_client import (
    CUSTOMER_TOKEN_ENV,
    ApiError,
    ApiProfileOption,
    ApiTarget,
    UrlOption,
    resolve_target,
)
from logferry.commands.common import EXIT_FAILED, JsonOption, cli_errors, err, out, print_json
from logferry.commands.sender import ReadFailure, Sender, SendOptions, SendStats, total_size
from logferry.errors import InputError
from logferry.spool.size import parse_size

SEND_HELP = (
    "Send log lines from stdin or files to `POST /v1/ingest/CUSTOMER/ENDPOINT` of a running "
    "`logferry serve`.\n\n"
    "Lines are batched (--batch-bytes, --batch-lines, or --linger seconds after a batch's first "
    "line, so a live `tail -F` ships promptly), gzipped, and sent one batch at a time. 429 and "
    "503 answers and connection failures are retried with jittered backoff, never sooner than "
    "the server's Retry-After; a batch is counted delivered only on a 2xx (the server has it on "
    "disk) and is never sent again after one. Ctrl-C stops reading and delivers what was read; "
    "a second Ctrl-C quits at once.\n\n"
    f"The token (the customer's, or the admin token) is read from ${CUSTOMER_TOKEN_ENV} or "
    "--token-env NAME. Exit 0 only when every line read was delivered."
)
SEND_EPILOG = (
    "Examples:\n\n"
    "  tail -F /var/log/nginx/access.log | logferry send acme s3\n\n"
    "  logferry send acme s3 access.log.1 access.log --json\n\n"
    "  zcat old.log.gz | logferry send acme s3 --url http://127.0.0.1:8080 "
    "--token-env ACME_TOKEN"
)


def _size(flag: str, value: str) -> int:
    size = parse_size(value, where=flag)
    if size < 1024:
        raise InputError(flag, f"{value!r} is under 1 KiB.", fix="Use e.g. 1MiB.")
    return size


def _check_sources(files: list[Path]) -> list[str]:
    sources = [str(f) for f in files] or ["-"]
    for source in sources:
        if source == "-":
            continue
        path = Path(source)
        if not path.exists():
            raise InputError("FILES", f"{source} does not exist.")
        if path.is_dir():
            raise InputError("FILES", f"{source} is a directory.", fix="Name the files in it.")
        if not os.access(path, os.R_OK):
            raise InputError("FILES", f"{source} is not readable.")
    if sources.count("-") > 1:
        raise InputError("FILES", "'-' (stdin) given more than once.")
    return sources


def _describe(stats: SendStats) -> str:
    text = (
        f"{stats.lines_delivered:,} lines · {stats.bytes_delivered / 1e6:,.1f} MB delivered · "
        f"{stats.requests:,} requests"
    )
    if stats.retries:
        text += f" · {stats.retries:,} retries ({stats.status_429:,}× 429)"
    return text


def _print_summary(stats: SendStats, target: str) -> None:
    rate = stats.lines_delivered / stats.seconds if stats.seconds > 0 else 0.0
    out.print(
        f"Sent to {target}: {stats.lines_delivered:,} of {stats.lines_read:,} lines "
        f"({stats.bytes_delivered:,} bytes, {stats.bytes_sent:,} on the wire) in "
        f"{stats.seconds:.1f} s ({rate:,.0f} lines/s)",
        highlight=False,
    )
    out.print(
        f"requests {stats.requests:,} (batches {stats.batches:,}), retries {stats.retries:,}: "
        f"429 ×{stats.status_429:,}, 503 ×{stats.status_503:,}, "
        f"connection errors ×{stats.connection_errors:,}; waited {stats.retry_wait_seconds:.1f} s",
        highlight=False,
    )
    adjusted = {k: v for k, v in stats.server.items() if k != "accepted" and v}
    if adjusted:
        out.print(
            "server adjusted: " + ", ".join(f"{k} {v:,}" for k, v in adjusted.items()),
            highlight=False,
        )
    if stats.ambiguous_retries:
        err.print(
            f"[yellow]warning:[/] {stats.ambiguous_retries} request(s) failed after the body was "
            "sent and were retried: those batches may have arrived twice.",
            highlight=False,
        )


def send_command(
    customer: str = typer.Argument(..., help="Customer ID."),
    endpoint: str = typer.Argument(..., help="Endpoint name."),
    files: list[Path] = typer.Argument(
        None, help="Files to send in order ('-' = stdin; default: stdin).", show_default=False
    ),
    url: str | None = UrlOption,
    token_env: str | None = typer.Option(
        None,
        "--token-env",
        help=f"Environment variable holding the bearer token (default: {CUSTOMER_TOKEN_ENV}).",
        show_default=False,
    ),
    profile: str | None = ApiProfileOption,
    batch_bytes: str = typer.Option("1MiB", "--batch-bytes", help="Close a batch at this size."),
    batch_lines: int = typer.Option(10_000, "--batch-lines", help="…or at this many lines."),
    linger: float = typer.Option(
        0.2, "--linger", help="…or this many seconds after its first line arrived."
    ),
    gzip: bool = typer.Option(True, "--gzip/--no-gzip", help="Compress request bodies."),
    max_retry_seconds: float = typer.Option(
        600.0,
        "--max-retry-seconds",
        help="Give up (exit 1) when one batch is still refused after this long; 0 = never.",
    ),
    as_json: bool = JsonOption,
) -> None:
    with cli_errors(as_json):
        if batch_lines < 1:
            raise InputError("--batch-lines", f"must be at least 1 (got {batch_lines}).")
        if not 0 <= linger <= 60:
            raise InputError("--linger", f"must be 0-60 seconds (got {linger}).")
        if max_retry_seconds < 0:
            raise InputError("--max-retry-seconds", "must be 0 (forever) or more.")
        options = SendOptions(
            batch_bytes=_size("--batch-bytes", batch_bytes),
            batch_lines=batch_lines,
            linger=linger,
            gzip=gzip,
            max_retry_seconds=max_retry_seconds,
        )
        sources = _check_sources(files or [])
        target = resolve_target(url, token_env, profile, default_token_env=CUSTOMER_TOKEN_ENV)
        path = f"/v1/ingest/{quote(customer, safe='')}/{quote(endpoint, safe='')}"
        if "-" in sources and os.isatty(0):
            err.print("reading lines from the terminal; Ctrl-D ends", highlight=False)
        stats, error, read_error = _run(target, path, sources, options)
        if as_json:
            document = stats.as_json()
            if read_error is not None:
                document["read_error"] = f"{read_error.source}: {read_error.error}"
            if error is not None:
                document["error"], document["fix"] = error.message, error.fix
                document["status"] = error.status
            print_json(document)
        else:
            _print_summary(stats, f"{target.url}{path}")
        if read_error is not None and not as_json:
            err.print(
                f"[bold red]error:[/] cannot read {read_error.source}: {read_error.error}",
                highlight=False,
            )
        if error is not None:
            if not as_json:
                err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
                err.print(
                    f"{stats.lines_undelivered:,} line(s) read were not delivered.",
                    highlight=False,
                )
            raise typer.Exit(EXIT_FAILED)
        if read_error is not None or stats.lines_undelivered:
            raise typer.Exit(EXIT_FAILED)


def _run(
    target: ApiTarget, path: str, sources: list[str], options: SendOptions
) -> tuple[SendStats, ApiError | None, ReadFailure | None]:
    """Run the sender with a progress display on a terminal and graceful Ctrl-C / SIGTERM."""
    progress: Progress | None = None
    task = None
    if err.is_terminal:
        total = total_size(sources)
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            *([BarColumn()] if total else []),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        task = progress.add_task("starting…", total=total or None)

    def on_progress(stats: SendStats) -> None:
        if progress is not None and task is not None:
            progress.update(task, description=_describe(stats), completed=stats.bytes_delivered)

    sender = Sender(target, path, sources, options, on_progress)
    previous: dict[signal.Signals, Any] = {}  # what signal.getsignal returned

    def stop(signum: int, _frame: FrameType | None) -> None:
        sender.stopping.set()
        err.print("stopping: delivering what was read (Ctrl-C again to quit now)")
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, stop)
    try:
        if progress is not None:
            with progress:
                stats = sender.run()
        else:
            stats = sender.run()
    except KeyboardInterrupt:
        stats = sender.snapshot()
        sender.error = ApiError("interrupted", fix="run it again for the lines not delivered.")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stats, sender.error, sender.read_error
