"""`logferry serve --local`, the README's main job, from a fresh directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from aws_helpers import free_port


def test_serve_local_prints_working_commands_and_local_ls_shows_what_landed(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "logferry.cli", "serve", "--local", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if "Ctrl-C stops" in line:
                break
        text = "".join(banner)
        token = re.search(r"customer token:\s+(\S+)", text)
        assert token, text
        assert "curl" in text and "logferry local ls" in text
        # The console: its URL, and how to sign in (the tokens printed above).
        console = re.search(r"Console:\s+(\S+)", text)
        assert console and console.group(1) == f"http://127.0.0.1:{port}/console/", text
        assert re.search(r"sign in with the customer token .* or the admin token", text), text
        page = httpx.get(console.group(1), timeout=30)
        assert page.status_code == 200 and "<title>logferry console</title>" in page.text
        # The banner's own commands, run as printed (`logferry` from this interpreter's bin).
        commands = [
            line.strip()
            for line in banner
            if line.strip().startswith(("export LOGFERRY_TOKEN=", "printf "))
        ]
        status = re.search(r"Status:\s+(.+)", text)
        assert len(commands) == 2 and status, text
        shell_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        sent = subprocess.run(
            ["bash", "-c", "set -e; " + "; ".join(commands)],
            capture_output=True,
            text=True,
            env=shell_env,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
        assert "2 of 2 lines" in sent.stdout
        base = f"http://127.0.0.1:{port}/v1/ingest/demo-customer"
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        kinesis = httpx.post(f"{base}/kinesis-demo", content=b"to kinesis\n", headers=headers)
        assert kinesis.status_code == 202
        shown = subprocess.run(
            ["bash", "-c", status.group(1)],
            capture_output=True,
            text=True,
            env={**shell_env, "COLUMNS": "200"},
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        assert "s3-demo" in shown.stdout and "kinesis-demo" in shown.stdout

        deadline = time.monotonic() + 60
        while True:
            listed = subprocess.run(
                [sys.executable, "-m", "logferry.cli", "local", "ls", "--json"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert listed.returncode == 0, listed.stderr
            doc = json.loads(listed.stdout)
            lines = [line for obj in doc["objects"] for line in obj["sample"]]
            if lines and doc["records"]:
                break
            assert time.monotonic() < deadline, doc
            time.sleep(1)
        assert lines == ["hello from logferry", "second line"]
        assert doc["records"] == 1
        assert doc["objects"][0]["key"].startswith("demo/")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_serve_local_reloads_its_config_on_sighup(tmp_path: Path) -> None:
    """`serve --local --config F`: a customer added to F works after SIGHUP, without a restart."""
    port = free_port()
    config = tmp_path / "logferry.toml"
    config.write_text("")
    env = {**os.environ, "LATE_TOKEN": "late-customer-token-0123456789"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "logferry.cli",
            "serve",
            "--local",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C stops" in line:
                break
        url = f"http://127.0.0.1:{port}/v1/whoami"
        headers = {"Authorization": f"Bearer {env['LATE_TOKEN']}"}
        assert httpx.get(url, headers=headers, timeout=30).status_code == 401
        config.write_text('[[customers]]\nid = "late"\ntoken_env = "LATE_TOKEN"\n')
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while (answer := httpx.get(url, headers=headers, timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        assert answer.json()["customer_id"] == "late"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
