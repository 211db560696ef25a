"""STS regions down (dead loopback ports, or answering RegionDisabledException) at start-up and
while serve runs: serve starts, delivers, and takes new roles through whichever region works."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import (
    Ledger,
    OpGate,
    Tally,
    assert_no_secrets,
    compare,
    gated_proxy,
    outputs_of,
    write_tally,
)
from e2e_helpers import bucket_content, put_customer, put_endpoint, wait_pending_zero
from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import Forward, LatencyProxy, ProxyRequest, ProxyResponse
from logferry.local.serve_process import free_port
from s3_helpers import make_s3_role
from service_helpers import ADMIN_TOKEN, ServeProcess, base_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REGIONS = ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]
TOKEN = "chaos-sts-customer-token-0123456789"


async def region_disabled(request: ProxyRequest, forward: Forward) -> ProxyResponse:
    """STS as it answers in a region the role's account has not activated (DESIGN §4)."""
    body = (
        b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
        b"<Type>Sender</Type><Code>RegionDisabledException</Code><Message>STS is not "
        b"activated in this region for account:123456789012. Your account administrator can "
        b"activate STS in this region using the IAM Console.</Message></Error>"
        b"<RequestId>c0ffee00-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
    )
    return ProxyResponse(403, {"content-type": "text/xml"}, body)


class Region:
    """One regional STS endpoint: a proxy to the emulator on a fixed port, or nothing there."""

    def __init__(self, emulator: Emulator, gate: OpGate) -> None:
        self.emulator, self.gate = emulator, gate
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proxy: LatencyProxy | None = None

    def up(self, *, disabled: bool = False) -> None:
        self.down()
        middlewares = [region_disabled] if disabled else [self.gate]
        self.proxy = LatencyProxy(
            self.emulator.url,
            None,
            middlewares,
            port=self.port,
            rewrite_token=self.emulator.rewrite_token,
        ).start()

    def down(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None


@dataclass
class Regions:
    by_name: dict[str, Region]
    gate: OpGate
    aws_url: str
    """Where S3 goes (through the gate, so assumed-role secrets are seen)."""


@pytest.fixture
def regions(emulator: Emulator) -> Iterator[Regions]:
    """Four regional STS endpoints (all down until a test brings them up) and the S3 proxy."""
    with ExitStack() as stack, gated_proxy(emulator) as (proxy, gate):
        made = {name: Region(emulator, gate) for name in REGIONS}
        for region in made.values():
            stack.callback(region.down)
        yield Regions(made, gate, proxy.url)


def s3_endpoint(role: Any) -> dict[str, Any]:
    return {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn, "period": 1}


def serve_for(
    emulator: Emulator,
    tmp_path: Path,
    regions: Regions,
    backend: dict[str, Any],
    customer: str,
    role: Any,
) -> ServeProcess:
    made = regions.by_name
    config = base_config(
        emulator,
        tmp_path / "spool",
        vendor={
            "sts_regions": REGIONS,
            "sts_endpoints": {name: made[name].url for name in REGIONS},
        },
        aws={"endpoint_url": regions.aws_url},
        spool={**backend},
        customers=[
            {
                "id": customer,
                "token_env": "CHAOS_TOKEN",
                "endpoints": [{"name": "s3", **s3_endpoint(role)}],
            }
        ],
    )
    return ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN})


def send(serve: ServeProcess, customer: str, ledger: Ledger, tag: str, token: str) -> None:
    lines = ledger.batch(tag, 2000, 120)
    with serve.as_token(token) as client:
        r = client.post(f"/v1/ingest/{customer}/s3", content=b"\n".join(lines) + b"\n")
    assert r.status_code == 202, r.text
    ledger.acked.extend(lines)


def test_sts_regions_dead_at_startup_and_while_running(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
    regions: Regions,
) -> None:
    made, gate = regions.by_name, regions.gate
    tally = Tally("sts-regions-dead", seed)
    dead_at_start = set(rng.sample(REGIONS, rng.randint(1, 3)))
    for name in REGIONS:
        if name not in dead_at_start:
            made[name].up()
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    serve = serve_for(emulator, tmp_path, regions, spool_backend, customer, role).start()
    ledgers = {customer: Ledger()}
    send(serve, customer, ledgers[customer], "start", TOKEN)
    wait_pending_zero(serve, customer, "s3")
    tally.moments[f"dead at start-up: {len(dead_at_start)}"] += 1
    # While running: another 1-3 regions dead (regions dead before may come back).
    dead_now = set(rng.sample(REGIONS, rng.randint(1, 3)))
    for name in REGIONS:
        if name in dead_now:
            made[name].down()
        elif made[name].proxy is None:
            made[name].up()
    tally.moments[f"dead while running: {len(dead_now)}"] += 1
    other = unique("chaos")
    other_role = make_s3_role(emulator, unique, external_id=other)
    with serve.admin() as admin:
        put_customer(admin, other)
        # verify=True: the write probe needs a fresh AssumeRole through a live region.
        created = put_endpoint(admin, other, "s3", s3_endpoint(other_role), verify=True)
        assert created.status_code == 201, created.text
        token = admin.post(f"/v1/customers/{other}/tokens").json()["token"]
    ledgers[other] = Ledger()
    send(serve, customer, ledgers[customer], "running", TOKEN)
    send(serve, other, ledgers[other], "new", token)
    for who in ledgers:
        wait_pending_zero(serve, who, "s3")
    texts = outputs_of(serve, [(customer, "s3"), (other, "s3")])
    assert serve.terminate() == 0
    for who, bucket in ((customer, role.bucket), (other, other_role.bucket)):
        found = bucket_content(emulator, bucket).lines
        lost, duplicated, foreign = compare(found, ledgers[who])
        tally.acked += len(ledgers[who].acked)
        tally.checked += sum(found.values())
        tally.lost += lost
        tally.duplicated += duplicated
        assert (lost, duplicated, foreign) == (0, 0, 0), (who, tally.line())
    write_tally(tally)
    assert_no_secrets(
        emulator,
        gate,
        texts,
        {"admin token": ADMIN_TOKEN, "customer token": TOKEN, "issued token": token},
    )


def test_startup_fails_over_past_a_region_disabled_region(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    seed: int,
    spool_backend: dict[str, Any],
    regions: Regions,
) -> None:
    made = regions.by_name
    # The field report: us-east-1/2 unreachable, us-west-1 not activated, us-west-2 fine.
    made["us-west-1"].up(disabled=True)
    made["us-west-2"].up()
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    serve = serve_for(emulator, tmp_path, regions, spool_backend, customer, role).start()
    ledger = Ledger()
    send(serve, customer, ledger, "disabled", TOKEN)
    wait_pending_zero(serve, customer, "s3")
    assert serve.terminate() == 0
    lost, duplicated, foreign = compare(bucket_content(emulator, role.bucket).lines, ledger)
    assert (lost, duplicated, foreign) == (0, 0, 0)
