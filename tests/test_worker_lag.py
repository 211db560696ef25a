"""An endpoint whose lines wait past their period + 5 s says so (issue 15): status `lag.late`
with its `budget_seconds`, and the delivery-capacity gauges in /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_helpers import body_of, ingest, make_lines, put_customer, put_endpoint, status
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role
from service_helpers import ServeProcess, base_config, reap_all, wait_for


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


def test_lines_waiting_past_period_plus_5s_show_late(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    customer = unique("cust")
    # The role trusts another external ID: AssumeRole fails, so the lines cannot leave.
    role = make_s3_role(emulator, unique, external_id=unique("someone-else"))
    serve = ServeProcess(emulator, base_config(emulator, tmp_path / "spool"), tmp_path).start()
    try:
        with serve.admin() as admin:
            put_customer(admin, customer)
            body = {
                "type": "s3",
                "bucket_name": role.bucket,
                "iam_role": role.role_arn,
                "path": "logs/",
                "period": 1,
            }
            assert put_endpoint(admin, customer, "s3", body).status_code == 201
            before = status(admin, customer, "s3")
            assert before["lag"]["late"] is False
            assert before["lag"]["budget_seconds"] == 6.0
            assert ingest(admin, customer, "s3", body_of(make_lines("late", 5))) == 5
            late = wait_for(
                lambda: (s := status(admin, customer, "s3"))["lag"]["late"] and s, timeout=120
            )
            assert late["lines"]["pending"] == 5
            assert late["lag"]["oldest_undelivered_seconds"] > 6.0
            assert late["last_error"] is not None  # and why: the failing AssumeRole
            metrics = admin.get("/metrics").text
            for family in (
                "logferry_endpoints_late",
                "logferry_delivery_queue_wait_seconds",
                "logferry_delivery_queued_steps",
            ):
                assert f"\n{family} " in metrics, family
            # The metrics say what the status says, although no line was ever read from the
            # spool (the role never worked): the age comes from the spool's oldest record.
            samples = {
                (s.name, s.labels.get("customer", "")): s.value
                for family in text_string_to_metric_families(metrics)
                for s in family.samples
            }
            assert samples[("logferry_endpoints_late", "")] == 1.0
            age = samples[("logferry_endpoint_oldest_undelivered_seconds", customer)]
            assert age > 6.0
    finally:
        assert serve.terminate() == 0
