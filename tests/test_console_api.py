"""The API routes behind the web console, against a real `logferry serve` and the emulator:
the policies route equals `logferry role policies`, customers stay inside their own data, the
history counts delivered lines, and the console's files are served with no external asset."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from e2e_helpers import body_of, ingest, make_lines, put_customer, wait_pending_zero
from logferry.cli import app
from logferry.local.emulator import Emulator
from logferry.service.console_api import CONSOLE_DIR
from s3_helpers import make_s3_role
from service_helpers import ServeProcess, base_config, reap_all

runner = CliRunner()
STREAM_ARN = "arn:aws:kinesis:us-west-2:123456789012:stream/cdn-logs"


@pytest.fixture(scope="module")
def served(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("console-api")
    config = base_config(emulator, workdir / "spool", server={"idle_flush_seconds": 1})
    serve = ServeProcess(emulator, config, workdir).start()
    try:
        yield serve
    finally:
        serve.terminate()
        reap_all()


def customer_with_token(serve: ServeProcess, customer: str) -> tuple[httpx.Client, str]:
    """(the customer's own client, its external ID)."""
    with serve.admin() as admin:
        put_customer(admin, customer)
        token = admin.post(f"/v1/customers/{customer}/tokens").json()["token"]
        external_id = admin.get(f"/v1/customers/{customer}").json()["external_id"]
    return serve.as_token(token), external_id


def cli_json(*args: str) -> Any:
    result = runner.invoke(app, ["role", "policies", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def cli_text(*args: str) -> str:
    result = runner.invoke(app, ["role", "policies", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("query", "flags"),
    [
        (
            {"for": "s3", "bucket": "my-logs", "prefix": "cdn/"},
            ["--bucket", "my-logs", "--prefix", "cdn/"],
        ),
        ({"bucket": "my-logs"}, ["--bucket", "my-logs"]),
        ({"stream_arn": STREAM_ARN}, ["--stream-arn", STREAM_ARN]),
        (
            {"for": "kinesis", "stream_arn": STREAM_ARN, "role_name": "vendor-logs"},
            ["--for", "kinesis", "--stream-arn", STREAM_ARN, "--role-name", "vendor-logs"],
        ),
    ],
)
def test_policies_equal_the_cli(
    served: ServeProcess,
    unique: Callable[[str], str],
    query: dict[str, str],
    flags: list[str],
) -> None:
    customer = unique("cust")
    client, external_id = customer_with_token(served, customer)
    vendor = served.config["vendor"]["account_id"]
    with client:
        r = client.get(f"/v1/customers/{customer}/policies", params=query)
    assert r.status_code == 200, r.text
    page = r.json()
    same = [*flags, "--external-id", external_id, "--vendor-account", vendor]
    assert page["policies"] == cli_json(*same)
    assert page["cloudformation"] == cli_json(*same, "--output", "cloudformation")
    assert page["terraform"] == cli_text(*same, "--output", "terraform")
    assert page["cli_script"] == cli_text(*same, "--output", "cli")
    assert page["external_id"] == external_id and page["vendor_account"] == vendor
    regions = [step["region"] for step in page["sts_regions"]]
    assert regions[:4] == ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]
    assert [s["always_active"] for s in page["sts_regions"]][:2] == [True, False]
    assert all("account_settings" in s["console_url"] for s in page["sts_regions"])


def test_policies_name_the_bad_parameter(
    served: ServeProcess, unique: Callable[[str], str]
) -> None:
    customer = unique("cust")
    client, _ = customer_with_token(served, customer)
    with client:
        bad_bucket = client.get(f"/v1/customers/{customer}/policies", params={"bucket": "No_Such"})
        none = client.get(f"/v1/customers/{customer}/policies")
        bad_arn = client.get(
            f"/v1/customers/{customer}/policies", params={"stream_arn": "arn:nope"}
        )
    assert bad_bucket.status_code == 422 and bad_bucket.json()["detail"][0]["loc"] == [
        "query",
        "bucket",
    ]
    assert none.status_code == 422 and "no destination" in none.text
    assert bad_arn.status_code == 422
    assert bad_arn.json()["detail"][0]["loc"] == ["query", "stream_arn"]
    assert bad_arn.json()["detail"][0]["fix"]


def test_a_customer_token_never_reaches_another_customer(
    served: ServeProcess, emulator: Emulator, unique: Callable[[str], str]
) -> None:
    alice_id, bob_id = unique("alice"), unique("bob")
    alice, alice_ext = customer_with_token(served, alice_id)
    bob, _ = customer_with_token(served, bob_id)
    role = make_s3_role(emulator, unique, external_id=alice_ext)
    body = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
    with alice, bob:
        # Alice creates her own endpoint with her token: the role check runs and passes.
        created = alice.put(f"/v1/customers/{alice_id}/endpoints/web", json=body)
        assert created.status_code == 201, created.text
        # She may not skip the role check.
        skip = alice.put(f"/v1/customers/{alice_id}/endpoints/web2?verify=false", json=body)
        assert skip.status_code == 403 and "admin" in skip.text
        base = f"/v1/customers/{alice_id}"
        for method, path in [
            ("GET", base),
            ("GET", f"{base}/policies?bucket=x-logs"),
            ("GET", f"{base}/endpoints"),
            ("GET", f"{base}/endpoints/web"),
            ("GET", f"{base}/endpoints/web/status"),
            ("GET", f"{base}/endpoints/web/history"),
            ("POST", f"{base}/endpoints/web/verify"),
            ("POST", f"{base}/verify"),
            ("PUT", f"{base}/endpoints/web"),
            ("DELETE", f"{base}/endpoints/web"),
            ("GET", "/v1/customers"),
            ("GET", "/v1/endpoints/status"),
        ]:
            kwargs: dict[str, Any] = {"json": body} if method in ("PUT", "POST") else {}
            r = bob.request(method, path, **kwargs)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert alice_id not in r.text or "does not belong" in r.text, r.text
        # Alice's endpoint is untouched; she can delete it herself.
        assert alice.get(f"{base}/endpoints/web").status_code == 200
        assert alice.delete(f"{base}/endpoints/web").status_code == 204
        assert alice.get(f"{base}/endpoints/web").status_code == 404


def test_unsaved_verify_reports_each_check(
    served: ServeProcess, emulator: Emulator, unique: Callable[[str], str]
) -> None:
    customer = unique("cust")
    client, external_id = customer_with_token(served, customer)
    good = make_s3_role(emulator, unique, external_id=external_id)
    no_put = make_s3_role(
        emulator, unique, external_id=external_id, actions=["s3:AbortMultipartUpload"]
    )
    with client:
        ok = client.post(
            f"/v1/customers/{customer}/verify",
            json={"type": "s3", "bucket_name": good.bucket, "iam_role": good.role_arn},
        ).json()
        bad = client.post(
            f"/v1/customers/{customer}/verify",
            json={"type": "s3", "bucket_name": no_put.bucket, "iam_role": no_put.role_arn},
        ).json()
        assert client.get(f"/v1/customers/{customer}/endpoints").json() == []  # nothing saved
    assert ok["ok"] is True and all(c["status"] != "fail" for c in ok["checks"])
    assert bad["ok"] is False
    failed = [c for c in bad["checks"] if c["status"] == "fail"]
    assert failed and all(c["fix"] for c in failed), bad


def test_history_counts_delivered_lines(
    served: ServeProcess, emulator: Emulator, unique: Callable[[str], str]
) -> None:
    customer = unique("cust")
    client, external_id = customer_with_token(served, customer)
    role = make_s3_role(emulator, unique, external_id=external_id)
    body = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
    with client:
        assert client.put(f"/v1/customers/{customer}/endpoints/h", json=body).status_code == 201
        empty = client.get(f"/v1/customers/{customer}/endpoints/h/history").json()
        assert len(empty["buckets"]) == 60 and empty["bucket_seconds"] == 60
        assert sum(b["lines"] for b in empty["buckets"]) == 0
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:00\.000Z$", empty["buckets"][-1]["start"])
        sent = ingest(client, customer, "h", body_of(make_lines("hist", 250)))
        wait_pending_zero(served, customer, "h")
        history = client.get(f"/v1/customers/{customer}/endpoints/h/history").json()
        missing = client.get(f"/v1/customers/{customer}/endpoints/nope/history")
    assert sum(b["lines"] for b in history["buckets"]) == sent == 250
    assert sum(b["bytes"] for b in history["buckets"]) == 250 * 101
    assert sum(b["errors"] for b in history["buckets"]) == 0
    assert missing.status_code == 404


def test_admin_sees_every_endpoint_and_sts_regions(
    served: ServeProcess, emulator: Emulator, unique: Callable[[str], str]
) -> None:
    customer = unique("cust")
    client, external_id = customer_with_token(served, customer)
    role = make_s3_role(emulator, unique, external_id=external_id)
    body = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
    with served.admin() as admin, client:
        assert admin.put(f"/v1/customers/{customer}/endpoints/a?verify=false", json=body).is_success
        rows = admin.get("/v1/endpoints/status").json()
        regions = client.get("/v1/sts/regions").json()
        me = client.get("/v1/whoami").json()
        admin_me = admin.get("/v1/whoami").json()
    row = next(r for r in rows if r["customer_id"] == customer)
    assert row["name"] == "a" and row["type"] == "s3" and "lines" in row
    assert [r["region"] for r in regions] == ["us-east-1", "us-west-2"]
    assert me == {"admin": False, "customer_id": customer}
    assert admin_me == {"admin": True, "customer_id": None}


def test_console_files_are_served_and_self_contained(served: ServeProcess) -> None:
    openapi = httpx.get(f"{served.url}/openapi.json").json()
    for path in (
        "/v1/customers/{customer_id}/policies",
        "/v1/customers/{customer_id}/verify",
        "/v1/customers/{customer_id}/endpoints/{name}/history",
        "/v1/endpoints/status",
        "/v1/whoami",
    ):
        assert path in openapi["paths"], path
    assert httpx.get(f"{served.url}/console").headers.get("location") == "/console/"
    page = httpx.get(f"{served.url}/console/")
    assert page.status_code == 200 and "console.js" in page.text
    for name in ("console.js", "console.css"):
        r = httpx.get(f"{served.url}/console/{name}")
        assert r.status_code == 200 and len(r.text) > 500
        page_text = page.text + r.text
        # No asset from elsewhere: every src/href/import/url() is relative or a hash route.
        for ref in re.findall(
            r"""(?:src|href)=["']([^"']+)|url\(([^)]+)\)|from ["']([^"']+)""", page_text
        ):
            target = next(x for x in ref if x)
            assert not re.match(r"^(https?:)?//", target), target


def test_every_command_the_console_names_exists() -> None:
    """The console's hints name CLI commands (`logferry admin tokens create CUSTOMER`): each one,
    up to its first placeholder or option, must answer `--help` (no stale command names)."""
    script = (CONSOLE_DIR / "console.js").read_text()
    commands = re.findall(r"`(logferry [^`]+)`", script)
    assert any(c.startswith("logferry admin tokens create") for c in commands), commands
    for command in commands:
        words = []
        for word in command.split()[1:]:
            if word.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", word):
                break  # an option or a placeholder (CUSTOMER, ARN, …): the command ends here
            words.append(word)
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command, result.output)


def test_the_console_routes_do_not_import_the_cli_layer() -> None:
    """service/ sits below commands/: the console's role documents come from aws/ directly."""
    code = (
        "import sys, logferry.service.console_api;"
        "print(sorted(m for m in sys.modules if m.startswith('logferry.commands')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
