"""`logferry role policies|create` on the command line: inputs, JSON, AWS CLI, CloudFormation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
from cfnlint.api import lint
from typer.testing import CliRunner

from logferry.cli import app

runner = CliRunner()
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/logs"
S3 = ["role", "policies", "--bucket", "my-logs", "--external-id", "cust-1"]
KIN = ["role", "policies", "--stream-arn", STREAM_ARN, "--external-id", "cust-1"]

GUIDE_TRUST = {
    "Version": "2012-10-17",
    "Statement": {
        "Sid": "S3LoggingTrustPolicy",
        "Effect": "Allow",
        "Principal": {"AWS": "717331877981"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": "cust-1"}},
    },
}
GUIDE_S3_PERMISSION = {
    "Version": "2012-10-17",
    "Statement": {
        "Effect": "Allow",
        "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
        "Resource": "arn:aws:s3:::my-logs/*",
    },
}


def invoke(*args: str):
    return runner.invoke(app, list(args))


# --- invalid input: exit 2, message names the flag ----------------------------------------------

POLICIES_BAD = [
    (["--bucket", "My_Bucket", "--external-id", "cust-1"], "--bucket"),
    (["--bucket", "ab", "--external-id", "cust-1"], "--bucket"),
    (["--bucket", "192.168.1.1", "--external-id", "cust-1"], "--bucket"),
    (["--bucket", "my-logs", "--prefix", "/x", "--external-id", "cust-1"], "--prefix"),
    (["--bucket", "my-logs", "--prefix", "x*", "--external-id", "cust-1"], "--prefix"),
    (["--bucket", "my-logs", "--external-id", "x"], "--external-id"),
    (["--bucket", "my-logs", "--external-id", "has space"], "--external-id"),
    (["--bucket", "my-logs"], "--external-id"),  # missing
    (
        ["--bucket", "my-logs", "--external-id", "cust-1", "--vendor-account", "123"],
        "--vendor-account",
    ),
    (["--bucket", "my-logs", "--external-id", "cust-1", "--role-name", "a b"], "--role-name"),
    (
        ["--bucket", "my-logs", "--external-id", "cust-1", "--policy-name", "p" * 129],
        "--policy-name",
    ),
    (["--bucket", "my-logs", "--external-id", "cust-1", "--partition", "aws-iso"], "--partition"),
    (["--bucket", "my-logs", "--external-id", "cust-1", "--output", "yaml"], "--output"),
    (["--for", "gcs", "--bucket", "my-logs", "--external-id", "cust-1"], "--for"),
    (["--for", "s3", "--external-id", "cust-1"], "--bucket"),
    (["--for", "kinesis", "--external-id", "cust-1"], "--stream-arn"),
    (["--external-id", "cust-1"], "--bucket/--stream-arn"),
    (["--bucket", "b-1", "--stream-arn", STREAM_ARN, "--external-id", "cust-1"], "--bucket"),
    (["--stream-arn", "logs", "--external-id", "cust-1"], "--stream-arn"),
    (["--stream-arn", STREAM_ARN + " x", "--external-id", "cust-1"], "--stream-arn"),
    (["--stream-arn", STREAM_ARN, "--prefix", "a/", "--external-id", "cust-1"], "--prefix"),
    (["--stream-arn", STREAM_ARN, "--external-id", "cust-1", "--role-arn", "r"], "--role-arn"),
    (
        [
            "--bucket",
            "my-logs",
            "--external-id",
            "cust-1",
            "--role-arn",
            "arn:aws:iam::123456789012:role/r",
        ],
        "--role-arn",
    ),
    (
        ["--stream-arn", STREAM_ARN, "--external-id", "cust-1", "--partition", "aws-cn"],
        "--partition",
    ),
]


@pytest.mark.parametrize(("args", "flag"), POLICIES_BAD)
def test_policies_rejects_invalid_input(args: list[str], flag: str) -> None:
    result = invoke("role", "policies", *args)
    assert result.exit_code == 2, result.output
    assert flag in result.output
    assert result.stdout == ""  # human errors go to stderr


CREATE_BASE = ["--bucket", "my-logs", "--external-id", "cust-1", "--role-name", "r1"]
CREATE_BAD = [
    (["--bucket", "my-logs", "--external-id", "cust-1"], "--role-name"),  # missing
    ([*CREATE_BASE[:-1], "x" * 65], "--role-name"),
    ([*CREATE_BASE, "--region", "us-east"], "--region"),
    ([*CREATE_BASE, "--endpoint-url", "localhost:5000"], "--endpoint-url"),
    ([*CREATE_BASE, "--abort-incomplete-multipart-days", "0"], "abort-incomplete-multipart-days"),
    ([*CREATE_BASE, "--abort-incomplete-multipart-days", "x"], "abort-incomplete-multipart-days"),
    ([*CREATE_BASE, "--resource-policy"], "resource-policy"),
    (
        [
            "--stream-arn",
            STREAM_ARN,
            "--external-id",
            "cust-1",
            "--role-name",
            "r1",
            "--abort-incomplete-multipart-days",
            "1",
        ],
        "abort-incomplete-multipart-days",
    ),
    ([*CREATE_BASE, "--profile", "no-such-profile-xyz"], "--profile"),
]


@pytest.mark.parametrize(("args", "flag"), CREATE_BAD)
def test_create_rejects_invalid_input_before_calling_aws(
    args: list[str], flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Point every AWS call at a closed port: a validation failure must happen before any call.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    result = invoke("role", "create", *args)
    assert result.exit_code == 2, result.output
    assert flag in result.output


def test_invalid_input_with_json_is_one_json_document() -> None:
    result = invoke(*S3[:-1], "x", "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["where"] == "--external-id"
    assert "2-1224" in doc["error"]


# --- --json -------------------------------------------------------------------------------------


def test_json_s3_equals_the_guide() -> None:
    result = invoke(*S3, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "trust_policy": GUIDE_TRUST,
        "permission_policy": GUIDE_S3_PERMISSION,
    }


def test_json_s3_prefix_and_vendor() -> None:
    result = invoke(*S3, "--prefix", "cdn/", "--vendor-account", "111122223333", "--json")
    doc = json.loads(result.stdout)
    assert doc["permission_policy"]["Statement"]["Resource"] == "arn:aws:s3:::my-logs/cdn/*"
    assert doc["trust_policy"]["Statement"]["Principal"] == {"AWS": "111122223333"}


def test_json_kinesis_resource_policy_from_role_arn_or_name() -> None:
    role = "arn:aws:iam::123456789012:role/team/vendor"
    doc = json.loads(invoke(*KIN, "--role-arn", role, "--json").stdout)
    assert doc["trust_policy"]["Statement"]["Sid"] == "KinesisLoggingTrustPolicy"
    assert doc["permission_policy"]["Statement"] == {
        "Effect": "Allow",
        "Action": ["kinesis:PutRecords", "kinesis:ListShards"],
        "Resource": STREAM_ARN,
    }
    res = doc["resource_policy"]
    assert (res["Id"], res["Statement"][0]["Sid"]) == ("writePolicy", "FastlyWrite")
    assert res["Statement"][0]["Principal"]["AWS"] == ["arn:aws:iam::717331877981:root", role]
    derived = json.loads(invoke(*KIN, "--role-name", "vendor-logs", "--json").stdout)
    assert derived["resource_policy"]["Statement"][0]["Principal"]["AWS"][1] == (
        "arn:aws:iam::123456789012:role/vendor-logs"
    )


def printed_documents(text: str) -> list[tuple[str, Any]]:
    """Each JSON document in human output (from a line `{` to the next line `}`) with the
    heading line above it; json.loads must take each as is, as a person would paste it."""
    lines = text.splitlines()
    found = []
    for start, line in enumerate(lines):
        if line == "{":
            end = lines.index("}", start)
            heading = next(h for h in reversed(lines[:start]) if h.startswith("# "))
            found.append((heading, json.loads("\n".join(lines[start : end + 1]))))
    return found


@pytest.mark.parametrize(
    "args",
    [
        [*S3, "--prefix", "cdn/"],
        [*KIN, "--role-arn", "arn:aws:iam::123456789012:role/vendor-logs"],
    ],
)
def test_human_output_is_paste_ready_json(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0
    documents = printed_documents(result.stdout)
    expected = json.loads(invoke(*args, "--json").stdout)
    assert [doc for _, doc in documents] == list(expected.values())
    headings = [heading for heading, _ in documents]
    assert headings[0].startswith("# Trust policy") and headings[1].startswith("# Permission")
    assert not set("│╭╮╰╯─┃━") & set(result.stdout)  # no box drawing around what gets copied
    assert "logferry role create" in result.stdout


@pytest.mark.parametrize("command", ["policies", "create"])
def test_help_has_an_example(command: str) -> None:
    result = invoke("role", command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert f"logferry role {command} " in result.stdout


# --- --output cli -------------------------------------------------------------------------------

FAKE_AWS = """#!/usr/bin/env bash
echo "$*" >> "$AWS_CALLS"
if [[ "$1 $2" == "sts get-caller-identity" ]]; then echo 123456789012; fi
"""


def test_cli_script_runs_and_references_its_files(tmp_path: Path) -> None:
    """Run the printed script with a stand-in `aws` that records its arguments."""
    role = "arn:aws:iam::123456789012:role/vendor-logs"
    result = invoke(*KIN, "--role-arn", role, "--policy-name", "vendor-write", "--output", "cli")
    assert result.exit_code == 0, result.output
    (tmp_path / "setup.sh").write_text(result.stdout)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "aws"
    fake.write_text(FAKE_AWS)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWS_CALLS": str(calls)}
    subprocess.run(["bash", "setup.sh"], cwd=tmp_path, env=env, check=True, timeout=30)

    policies = json.loads(invoke(*KIN, "--role-arn", role, "--json").stdout)
    assert json.loads((tmp_path / "trust-policy.json").read_text()) == policies["trust_policy"]
    assert (
        json.loads((tmp_path / "permission-policy.json").read_text())
        == (policies["permission_policy"])
    )
    assert (
        json.loads((tmp_path / "resource-policy.json").read_text()) == (policies["resource_policy"])
    )
    lines = calls.read_text().splitlines()
    assert lines == [
        "sts get-caller-identity --query Account --output text",
        "iam create-policy --policy-name vendor-write "
        "--policy-document file://permission-policy.json",
        "iam create-role --role-name vendor-logs "
        "--assume-role-policy-document file://trust-policy.json",
        "iam attach-role-policy --role-name vendor-logs "
        "--policy-arn arn:aws:iam::123456789012:policy/vendor-write",
        f"kinesis put-resource-policy --region us-east-1 --resource-arn {STREAM_ARN} "
        "--policy file://resource-policy.json",
        "iam get-role --role-name vendor-logs --query Role.Arn --output text",
    ]


def test_cli_json_lists_files_and_commands() -> None:
    doc = json.loads(invoke(*S3, "--output", "cli", "--json").stdout)
    assert doc["files"] == {
        "permission-policy.json": GUIDE_S3_PERMISSION,
        "trust-policy.json": GUIDE_TRUST,
    }
    joined = "\n".join(doc["commands"])
    for command in ("aws iam create-policy", "aws iam create-role", "aws iam attach-role-policy"):
        assert command in joined
    assert "kinesis" not in joined


# --- --output cloudformation --------------------------------------------------------------------


def _lint(template_text: str) -> list[str]:
    return [str(m) for m in lint(template_text, regions=["us-east-1"])]


@pytest.mark.parametrize(
    "args",
    [
        [*S3, "--prefix", "cdn/"],
        [*KIN, "--role-name", "vendor-logs"],
        [
            "role",
            "policies",
            "--stream-arn",
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/l",
            "--external-id",
            "cust-1",
        ],
    ],
)
def test_cloudformation_is_cfn_lint_clean(args: list[str]) -> None:
    result = invoke(*args, "--output", "cloudformation")
    assert result.exit_code == 0, result.output
    assert _lint(result.stdout) == []
    template = json.loads(result.stdout)
    types = {r["Type"] for r in template["Resources"].values()}
    expected = {"AWS::IAM::Role", "AWS::IAM::ManagedPolicy"}
    if "--stream-arn" in args:
        expected.add("AWS::Kinesis::ResourcePolicy")
    assert types == expected


def test_cloudformation_carries_the_same_documents() -> None:
    template = json.loads(invoke(*S3, "--output", "cloudformation", "--json").stdout)
    role = template["Resources"]["LoggingRole"]["Properties"]
    policy = template["Resources"]["LoggingPolicy"]["Properties"]
    assert role["AssumeRolePolicyDocument"] == GUIDE_TRUST
    assert policy["PolicyDocument"] == GUIDE_S3_PERMISSION
    assert policy["Roles"] == [{"Ref": "LoggingRole"}]
    assert role["RoleName"] == "logferry-s3-logging"


def test_cloudformation_stream_policy_names_the_created_role() -> None:
    template = json.loads(invoke(*KIN, "--output", "cloudformation").stdout)
    res = template["Resources"]["StreamResourcePolicy"]["Properties"]
    assert res["ResourceArn"] == STREAM_ARN
    principals = res["ResourcePolicy"]["Statement"][0]["Principal"]["AWS"]
    assert principals == [
        "arn:aws:iam::717331877981:root",
        {"Fn::GetAtt": ["LoggingRole", "Arn"]},
    ]


def test_cfn_lint_catches_a_broken_template() -> None:
    """Guard for the lint assertion above: a bad template must produce findings."""
    template = json.loads(invoke(*S3, "--output", "cloudformation").stdout)
    del template["Resources"]["LoggingRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert _lint(json.dumps(template)) != []


# --- --output terraform -------------------------------------------------------------------------

HCL_OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)


def _jsonencoded(expression: str) -> Any:
    """python-hcl2 keeps `jsonencode(...)` as an expression string: parse its argument as HCL."""
    assert expression.startswith("${jsonencode(") and expression.endswith(")}"), expression
    inner = expression[len("${jsonencode(") : -2]
    return hcl2.loads(f"x = {inner}\n", serialization_options=HCL_OPTIONS)["x"]


def _resources(hcl_text: str) -> dict[str, dict[str, Any]]:
    parsed = hcl2.loads(hcl_text, serialization_options=HCL_OPTIONS)
    resources: dict[str, dict[str, Any]] = {}
    for block in parsed["resource"]:
        for kind, named in block.items():
            for name, body in named.items():
                resources[f"{kind}.{name}"] = body
    return resources


@pytest.mark.parametrize(
    "args",
    [
        [*S3, "--prefix", "cdn/"],
        [*S3, "--vendor-account", "111122223333", "--role-name", "vendor-logs"],
        [*KIN, "--role-arn", "arn:aws:iam::123456789012:role/vendor-logs"],
    ],
)
def test_terraform_carries_the_same_documents(args: list[str]) -> None:
    result = invoke(*args, "--output", "terraform")
    assert result.exit_code == 0
    expected = json.loads(invoke(*args, "--json").stdout)
    resources = _resources(result.stdout)
    role = resources["aws_iam_role.logging"]
    assert _jsonencoded(role["assume_role_policy"]) == expected["trust_policy"]
    policy = resources["aws_iam_policy.logging"]
    assert _jsonencoded(policy["policy"]) == expected["permission_policy"]
    attachment = resources["aws_iam_role_policy_attachment.logging"]
    assert attachment == {
        "role": "${aws_iam_role.logging.name}",
        "policy_arn": "${aws_iam_policy.logging.arn}",
    }
    parsed = hcl2.loads(result.stdout, serialization_options=HCL_OPTIONS)
    assert parsed["output"][0]["role_arn"]["value"] == "${aws_iam_role.logging.arn}"
    if "resource_policy" in expected:
        stream = resources["aws_kinesis_resource_policy.logging"]
        assert _jsonencoded(stream["policy"]) == expected["resource_policy"]
        assert stream["resource_arn"] == STREAM_ARN
        assert stream["count"] == "${var.put_stream_resource_policy ? 1 : 0}"
        assert parsed["variable"][0]["put_stream_resource_policy"]["default"] is True
    else:
        assert "aws_kinesis_resource_policy.logging" not in resources
    if "--role-name" in args:
        assert role["name"] == "vendor-logs" and policy["name"] == "vendor-logs-policy"


def test_terraform_json_syntax_carries_the_same_documents() -> None:
    args = [*KIN, "--role-arn", "arn:aws:iam::123456789012:role/vendor-logs"]
    document = json.loads(invoke(*args, "--output", "terraform", "--json").stdout)
    expected = json.loads(invoke(*args, "--json").stdout)
    resources = document["resource"]
    role = resources["aws_iam_role"]["logging"]
    assert json.loads(role["assume_role_policy"]) == expected["trust_policy"]
    assert (
        json.loads(resources["aws_iam_policy"]["logging"]["policy"])
        == (expected["permission_policy"])
    )
    stream = resources["aws_kinesis_resource_policy"]["logging"]
    assert json.loads(stream["policy"]) == expected["resource_policy"]


def test_terraform_escapes_template_sequences() -> None:
    from logferry.aws.render import hcl_value

    text = hcl_value({"k": 'a ${b} %{c} "d"'})
    assert hcl2.loads(f"x = {text}\n", serialization_options=HCL_OPTIONS)["x"] == {
        "k": 'a $${b} %%{c} "d"'  # python-hcl2 keeps the escapes; Terraform reads ${b}
    }
