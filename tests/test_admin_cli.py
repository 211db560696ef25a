"""`logferry admin …` against a real `logferry serve` and the emulator: every README flow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from aws_helpers import free_port
from logferry.cli import app
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, read_objects
from service_helpers import ADMIN_TOKEN, ServeProcess, base_config, reap_all, wait_for

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
runner = CliRunner()


@pytest.fixture(scope="module")
def served(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory):
    """One server for the module (each test uses its own customers)."""
    workdir = tmp_path_factory.mktemp("admin")
    serve = ServeProcess(emulator, base_config(emulator, workdir / "spool"), workdir).start()
    try:
        yield serve
    finally:
        serve.terminate()
        reap_all()


def admin(serve: ServeProcess, *args: str, env: dict[str, str] | None = None):
    environment = {"LOGFERRY_ADMIN_TOKEN": ADMIN_TOKEN, "COLUMNS": "200", **(env or {})}
    return runner.invoke(app, ["admin", *args, "--url", serve.url], env=environment)


def admin_json(serve: ServeProcess, *args: str):
    result = admin(serve, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_whole_operator_flow(served: ServeProcess, emulator: Emulator, unique, tmp_path):
    customer = unique("acme")
    role = make_s3_role(emulator, unique, external_id=customer)

    created = admin_json(served, "customers", "create", customer, "--external-id", customer)
    assert created["created_now"] is True and created["external_id"] == customer
    assert RFC3339.match(created["created"])
    again = admin_json(served, "customers", "create", customer)
    assert again["created_now"] is False and again["external_id"] == customer
    clash = admin(served, "customers", "create", customer, "--external-id", "another-id")
    assert clash.exit_code == 1 and "was not changed to 'another-id'" in clash.stderr
    listed = admin_json(served, "customers", "list")
    assert customer in [c["id"] for c in listed]
    human = admin(served, "customers", "get", customer)
    assert human.exit_code == 0 and customer in human.stdout and "role create" in human.stdout

    token = admin_json(served, "tokens", "create", customer)
    assert token["id"] and token["token"]
    tokens = admin_json(served, "tokens", "list", customer)
    assert [t["id"] for t in tokens] == [token["id"]]
    assert RFC3339.match(tokens[0]["created"]) and tokens[0]["revoked"] is None

    toml_file = tmp_path / "s3.toml"
    toml_file.write_text(
        f'type = "s3"\nname = "s3"\nbucket_name = "{role.bucket}"\npath = "cli/"\n'
        f'iam_role = "{role.role_arn}"\nperiod = 1\ngzip_level = 0\n'
    )
    put = admin(served, "endpoints", "put", customer, "--file", str(toml_file))  # name from file
    assert put.exit_code == 0, put.output
    assert "Created endpoint s3" in put.stdout
    updated = admin_json(served, "endpoints", "put", customer, "s3", "-f", str(toml_file))
    assert updated["created_now"] is False and updated["bucket_name"] == role.bucket
    json_file = tmp_path / "second.json"
    json_file.write_text(
        json.dumps({"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn})
    )
    assert admin_json(served, "endpoints", "put", customer, "two", "--file", str(json_file))
    names = [e["name"] for e in admin_json(served, "endpoints", "list", customer)]
    assert names == ["s3", "two"]
    # The destination column comes from the endpoint type's model (sinks.registry).
    human_list = admin(served, "endpoints", "list", customer)
    assert human_list.exit_code == 0 and f"s3://{role.bucket}/cli/" in human_list.stdout
    assert admin_json(served, "endpoints", "get", customer, "s3")["path"] == "cli/"
    verify = admin(served, "endpoints", "verify", customer, "s3")
    assert verify.exit_code == 0 and "role OK" in verify.stdout

    with httpx.Client(base_url=served.url, timeout=60) as http:
        auth = {"Authorization": f"Bearer {token['token']}"}
        answer = http.post(f"/v1/ingest/{customer}/s3", content=b"one\ntwo\n", headers=auth)
        assert answer.status_code == 202
        status = wait_for(
            lambda: (
                (s := admin_json(served, "status", customer, "s3"))["lines"]["delivered"] == 2 and s
            )
        )
        assert RFC3339.match(status["last_success"])
        overview = admin_json(served, "status")
        assert {(s["customer_id"], s["name"]) for s in overview["endpoints"]} >= {
            (customer, "s3"),
            (customer, "two"),
        }
        table = admin(served, "status", customer)
        assert table.exit_code == 0 and "2 endpoint(s), 0 in error" in table.stdout

        revoked = admin(served, "tokens", "revoke", customer, token["id"])
        assert revoked.exit_code == 0
        denied = http.post(f"/v1/ingest/{customer}/s3", content=b"three\n", headers=auth)
        assert denied.status_code == 401
    (obj,) = read_objects(emulator, role.bucket).values()
    assert obj.body == b"one\ntwo\n"

    assert admin(served, "endpoints", "delete", customer, "two").exit_code == 0
    assert admin(served, "customers", "delete", customer).exit_code == 0
    gone = admin(served, "customers", "get", customer)
    assert gone.exit_code == 1
    assert f"no customer '{customer}'" in gone.stderr and "404" in gone.stderr


def test_status_shows_errors_with_rfc3339_times(served: ServeProcess, emulator: Emulator, unique):
    customer = unique("broken")
    ghost = make_s3_role(emulator, unique, external_id=customer, create_bucket=False)
    admin_json(served, "customers", "create", customer, "--external-id", customer)
    with served.admin() as http:
        body = {"type": "s3", "bucket_name": ghost.bucket, "iam_role": ghost.role_arn, "period": 1}
        assert http.put(f"/v1/customers/{customer}/endpoints/e?verify=false", json=body).is_success
        assert http.post(f"/v1/ingest/{customer}/e", content=b"kept\n").status_code == 202
    status = wait_for(lambda: (s := admin_json(served, "status", customer, "e"))["errors"] and s)
    assert status["state"] == "error" and status["errors"][0]["code"] == "NoSuchBucket"
    assert RFC3339.match(status["errors"][0]["time"])
    assert RFC3339.match(status["last_error"]["time"])
    human = admin(served, "status", customer, "e")
    assert human.exit_code == 0 and "NoSuchBucket" in human.stdout and "fix" in human.stdout
    overview = admin(served, "status", customer)
    assert "1 in error" in overview.stdout


def test_put_refused_by_the_role_check_shows_the_report(
    served: ServeProcess, emulator: Emulator, unique, tmp_path: Path
) -> None:
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id="some-other-id")  # trust: wrong external ID
    admin_json(served, "customers", "create", customer, "--external-id", customer)
    body = tmp_path / "e.json"
    endpoint = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
    body.write_text(json.dumps(endpoint))
    result = admin(served, "endpoints", "put", customer, "e", "--file", str(body))
    assert result.exit_code == 1
    assert "role check failed" in result.stderr and "FAIL" in result.stderr
    as_json = admin(served, "endpoints", "put", customer, "e", "--file", str(body), "--json")
    document = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and document["status"] == 422 and document["fix"]
    skipped = admin(served, "endpoints", "put", customer, "e", "--file", str(body), "--no-verify")
    assert skipped.exit_code == 0, skipped.output


def test_field_errors_come_back_per_field(served: ServeProcess, unique, tmp_path: Path) -> None:
    customer = unique("cust")
    admin_json(served, "customers", "create", customer)
    body = tmp_path / "e.toml"
    body.write_text('type = "s3"\nbucket_name = "b-ok"\niam_role = "nope"\ngzip_level = 42\n')
    result = admin(served, "endpoints", "put", customer, "e", "--file", str(body), "--no-verify")
    assert result.exit_code == 1
    assert "gzip_level" in result.stderr and "iam_role" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["customers", "list"], {"LOGFERRY_ADMIN_TOKEN": ""}, "--token-env"),
        (["customers", "list", "--token-env", "NOPE_UNSET"], {}, "--token-env"),
        (["customers", "list", "--url", "ftp://x"], {}, "--url"),
        (["customers", "list", "--profile", "nope"], {}, "--profile"),
        (["endpoints", "put", "c1", "e", "--file", "/nonexistent.toml"], {}, "--file"),
    ],
)
def test_invalid_input_exits_2_naming_the_flag(
    args: list[str], env: dict[str, str], flag: str, tmp_path: Path
) -> None:
    environment = {
        "LOGFERRY_ADMIN_TOKEN": "x",
        "LOGFERRY_PROFILE_FILE": str(tmp_path / "none.toml"),
        **env,
    }
    result = runner.invoke(app, ["admin", *args], env=environment)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr


def test_unparsable_endpoint_file_names_the_flag(tmp_path: Path) -> None:
    bad = tmp_path / "e.toml"
    bad.write_text("type = s3 this is not toml\n")
    result = runner.invoke(
        app, ["admin", "endpoints", "put", "c1", "e", "--file", str(bad)], env={"X": "1"}
    )
    assert result.exit_code == 2 and "--file" in result.stderr and "TOML" in result.stderr


def test_server_failures_exit_1_with_the_servers_message(served: ServeProcess) -> None:
    wrong = admin(served, "customers", "list", env={"LOGFERRY_ADMIN_TOKEN": "wrong-token"})
    assert wrong.exit_code == 1
    assert "401" in wrong.stderr and "unknown or revoked token" in wrong.stderr
    assert "$LOGFERRY_ADMIN_TOKEN" in wrong.stderr  # the fix names where the token came from
    down = runner.invoke(
        app,
        ["admin", "status", "--url", f"http://127.0.0.1:{free_port()}"],
        env={"LOGFERRY_ADMIN_TOKEN": "x"},
    )
    assert down.exit_code == 1 and "cannot reach logferry" in down.stderr
    as_json = admin(served, "customers", "get", "nobody-here", "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["status"] == 404


def test_profile_file_gives_url_and_token(served: ServeProcess, tmp_path: Path, unique) -> None:
    secret = tmp_path / "admin-token"
    secret.write_text(ADMIN_TOKEN + "\n")
    profiles = tmp_path / "admin.toml"
    profiles.write_text(
        f'[local]\nurl = "{served.url}"\ntoken_file = "{secret}"\n'
        f'[byenv]\nurl = "{served.url}"\ntoken_env = "MY_ADMIN"\n'
    )
    env = {"LOGFERRY_PROFILE_FILE": str(profiles), "LOGFERRY_ADMIN_TOKEN": ""}
    customer = unique("prof")
    result = runner.invoke(
        app, ["admin", "customers", "create", customer, "--profile", "local"], env=env
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["admin", "customers", "list", "--profile", "byenv", "--json"],
        env={**env, "MY_ADMIN": ADMIN_TOKEN},
    )
    assert result.exit_code == 0 and customer in [c["id"] for c in json.loads(result.stdout)]


def test_every_admin_command_has_help_with_an_example() -> None:
    commands = [["customers", c] for c in ("list", "get", "create", "delete")] + [
        ["tokens", c] for c in ("create", "list", "revoke")
    ]
    commands += [["endpoints", c] for c in ("list", "get", "put", "delete", "verify")]
    commands += [["status"], []]
    for command in commands:
        result = runner.invoke(app, ["admin", *command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, command
        assert "Example" in result.stdout and "logferry admin" in result.stdout, command


def test_status_stays_readable_at_80_columns_and_piped(
    served: ServeProcess, emulator: Emulator, unique
) -> None:
    """A squeezed table folded every cell (`demo-c` / `ustome` / `r`): ids and times must stay
    whole on one line, whatever the width, when piped (a real process, not a terminal)."""
    customer = unique("demo-customer-with-a-longer-name")
    role = make_s3_role(emulator, unique, external_id=customer)
    admin_json(served, "customers", "create", customer, "--external-id", customer)
    names = ("s3-delivery-endpoint", "second-endpoint")
    with served.admin() as http:
        for name in names:
            body = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
            body |= {"period": 1, "path": f"{name}/"}
            assert http.put(f"/v1/customers/{customer}/endpoints/{name}", json=body).is_success
            assert http.post(f"/v1/ingest/{customer}/{name}", content=b"x\n").status_code == 202
    for name in names:
        wait_for(lambda n=name: admin_json(served, "status", customer, n)["last_success"])
    statuses = {n: admin_json(served, "status", customer, n) for n in names}
    command = [sys.executable, "-m", "logferry.cli", "admin", "status", customer]
    for columns in ("80", "60", "200"):
        shown = subprocess.run(
            [*command, "--url", served.url],
            capture_output=True,  # piped: not a terminal
            text=True,
            env={**os.environ, "LOGFERRY_ADMIN_TOKEN": ADMIN_TOKEN, "COLUMNS": columns},
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        for name, status in statuses.items():
            assert any(customer in line and name in line for line in lines), (columns, shown.stdout)
            assert any(status["last_success"] in line for line in lines), (columns, shown.stdout)
        assert "2 endpoint(s), 0 in error" in shown.stdout
