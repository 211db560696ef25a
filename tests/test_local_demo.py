"""`logferry serve --local`, the README's main job, from a fresh directory."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from aws_helpers import free_port


def test_serve_local_prints_a_working_curl_and_local_ls_shows_what_landed(
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
        base = f"http://127.0.0.1:{port}/v1/ingest/demo-customer"
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        s3 = httpx.post(
            f"{base}/s3-demo", content=b"hello from logferry\nsecond line\n", headers=headers
        )
        kinesis = httpx.post(f"{base}/kinesis-demo", content=b"to kinesis\n", headers=headers)
        assert s3.status_code == kinesis.status_code == 202

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
