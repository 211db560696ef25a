"""`logferry serve --local`: the whole story on a fresh machine, with no AWS account.

Starts the embedded emulator, provisions a demo customer exactly as the guide does (through
our own `role create` code, so the demo exercises the real path), and serves with two endpoints.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from logferry.aws.clients import AwsClients
from logferry.aws.names import parse_stream_arn
from logferry.aws.policies import KinesisDestination, S3Destination
from logferry.aws.provision import RoleRequest, provision_role
from logferry.aws.sts_broker import DEFAULT_STS_REGIONS
from logferry.local.emulator import Emulator, start_emulator
from logferry.service.config import load_config

DEMO_CUSTOMER = "demo-customer"
DEMO_BUCKET = "logferry-demo-logs"
DEMO_STREAM = "logferry-demo"
STATE_FILE = Path(".logferry-local") / "demo.json"

console = Console(soft_wrap=True)


def provision_demo(emulator: Emulator, external_id: str) -> dict[str, str]:
    """Bucket, stream and both roles in the demo customer's account, via `role create` code."""
    clients = AwsClients(emulator.customer.credentials(), emulator.target)
    s3 = clients.client("s3", "us-east-1")
    s3.create_bucket(Bucket=DEMO_BUCKET)
    kinesis = clients.client("kinesis", "us-east-1")
    kinesis.create_stream(StreamName=DEMO_STREAM, ShardCount=2)
    stream_arn = kinesis.describe_stream_summary(StreamName=DEMO_STREAM)[
        "StreamDescriptionSummary"
    ]["StreamARN"]
    vendor = emulator.vendor.account_id
    s3_role = provision_role(
        clients,
        RoleRequest(
            dest=S3Destination(bucket=DEMO_BUCKET, prefix="demo/"),
            role_name="logferry-s3-logging",
            external_id=external_id,
            policy_name="logferry-s3-logging-policy",
            vendor_account=vendor,
            abort_multipart_days=1,
        ),
    ).role_arn
    kinesis_role = provision_role(
        clients,
        RoleRequest(
            dest=KinesisDestination(parse_stream_arn(stream_arn)),
            role_name="logferry-kinesis-logging",
            external_id=external_id,
            policy_name="logferry-kinesis-logging-policy",
            vendor_account=vendor,
        ),
    ).role_arn
    return {"s3_role": s3_role, "kinesis_role": kinesis_role, "stream_arn": stream_arn}


def run_local(config_path: Path | None, overrides: dict[str, Any]) -> None:
    from logferry.commands.serve import run_service

    emulator = start_emulator()
    workdir = Path(tempfile.mkdtemp(prefix="logferry-local-"))
    admin_token = secrets.token_urlsafe(24)
    os.environ["LOGFERRY_LOCAL_ADMIN_TOKEN"] = admin_token
    try:
        roles = provision_demo(emulator, DEMO_CUSTOMER)
        settings: dict[str, Any] = {
            "aws.endpoint_url": emulator.url,
            "vendor.account_id": emulator.vendor.account_id,
            "vendor.sts_endpoints": {r: emulator.url for r in DEFAULT_STS_REGIONS},
            "auth.admin_token_env": "LOGFERRY_LOCAL_ADMIN_TOKEN",
            "log.format": "text",
            "log.level": "warning",
        }
        if "spool.dir" not in overrides:
            settings["spool.dir"] = str(workdir / "spool")
        cfg = load_config(config_path, {**settings, **overrides})

        async def on_ready(service: Any) -> None:
            import asyncio

            service.put_customer(DEMO_CUSTOMER)
            _, token = service.store.issue_token(DEMO_CUSTOMER)
            from logferry.service.endpoints import parse_endpoint

            bodies: dict[str, dict[str, Any]] = {
                "s3-demo": {
                    "type": "s3",
                    "bucket_name": DEMO_BUCKET,
                    "path": "demo/%Y/%m/%d/",
                    "iam_role": roles["s3_role"],
                    "period": 10,
                    "gzip_level": 3,
                },
                "kinesis-demo": {
                    "type": "kinesis",
                    "topic": DEMO_STREAM,
                    "region": "us-east-1",
                    "iam_role": roles["kinesis_role"],
                },
            }
            for name, body in bodies.items():
                type_, model = parse_endpoint(name, body)
                report = await asyncio.to_thread(service.verify, DEMO_CUSTOMER, type_, model)
                if not report.ok:
                    raise RuntimeError(f"demo role check failed: {report.summary()}")
                service.put_endpoint(DEMO_CUSTOMER, name, type_, model)
            _write_state(emulator, roles)
            _print_banner(cfg.server.listen, token, admin_token)

        run_service(
            cfg,
            on_ready=on_ready,
            credentials=emulator.vendor.credentials(),
            # SIGHUP re-reads --config with the same demo settings, as plain `serve` does.
            config_path=config_path,
            overrides={**settings, **overrides},
        )
    finally:
        emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _write_state(emulator: Emulator, roles: dict[str, str]) -> None:
    STATE_FILE.parent.mkdir(exist_ok=True)
    STATE_FILE.write_text(
        json.dumps(
            {
                "endpoint_url": emulator.url,
                "bucket": DEMO_BUCKET,
                "stream": DEMO_STREAM,
                "customer": {
                    "account_id": emulator.customer.account_id,
                    "access_key_id": emulator.customer.access_key_id,
                    "secret_access_key": emulator.customer.secret_access_key,
                },
                **roles,
            },
            indent=2,
        )
    )
    STATE_FILE.chmod(0o600)


def _print_banner(listen: str, token: str, admin_token: str) -> None:
    base = f"http://{listen}"
    url = "" if base == "http://127.0.0.1:8080" else f" --url {base}"
    console.print(
        f"""
[bold green]logferry is running[/] against a local AWS emulator (demo customer
{DEMO_CUSTOMER}: bucket {DEMO_BUCKET}, stream {DEMO_STREAM}, roles made by `role create`).

  ingest URL (S3):      {base}/v1/ingest/{DEMO_CUSTOMER}/s3-demo
  ingest URL (Kinesis): {base}/v1/ingest/{DEMO_CUSTOMER}/kinesis-demo
  customer token:       {token}
  admin token:          {admin_token}

Send lines:
  export LOGFERRY_TOKEN={token}
  printf 'hello from logferry\\nsecond line\\n' | logferry send {DEMO_CUSTOMER} s3-demo{url}
  (or: curl -sS --data-binary @file.log -H 'Authorization: Bearer {token}' \\
         {base}/v1/ingest/{DEMO_CUSTOMER}/s3-demo)

See what landed (S3 files are written every 10 s):
  logferry local ls

Console: {base}/console/
  sign in with the customer token (its endpoints) or the admin token (every customer)

Status:  LOGFERRY_ADMIN_TOKEN={admin_token} logferry admin status{url}
API:     {base}/openapi.json
Metrics: curl -sS -H 'Authorization: Bearer {admin_token}' {base}/metrics
Ctrl-C stops (open files are flushed).
""",
        highlight=False,
    )
