"""A 50 MiB object goes up as a streaming multipart upload with bounded memory, survives a
`kill -9` mid-upload, and is completed by the restarted process — with no leftover uploads.

The delivering process is a real subprocess (this file's `run_child`), killed with SIGKILL once
its journal shows two uploaded parts; the restart resumes the *same* upload from the last
journaled part (the caller re-feeds the spool from `recover()`'s offset).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from logferry.local.emulator import Emulator
from logferry.sinks.s3_journal import Journal
from s3_helpers import make_s3_role, pending_uploads, read_objects, role_credentials

CHUNK_LINES = 8192
CHUNK_BYTES = CHUNK_LINES * 128  # 1 MiB of 128-byte lines
CHUNKS = 100  # 100 MiB of lines → ≈ 51 MiB of gzip (hex payload barely compresses)
PART_SIZE = 8 * 1024 * 1024
ACCEPTED_AT = 1_720_132_646.0
TESTS_DIR = Path(__file__).resolve().parent


def make_chunk_data(index: int) -> bytes:
    """Spool chunk `index`: deterministic, so parent and child agree on every byte."""
    rng = random.Random(index)
    hexed = rng.randbytes(57 * CHUNK_LINES).hex().encode()
    return b"".join(
        b"%06d-%05d %s\n" % (index, j, hexed[j * 114 : (j + 1) * 114]) for j in range(CHUNK_LINES)
    )


def run_child(cfg: dict[str, Any]) -> None:
    """The delivering process: recover, feed the spool from the answer, flush, report."""
    import resource
    import tracemalloc

    from botocore.credentials import Credentials

    from logferry.aws.clients import AwsClients, AwsTarget
    from logferry.sinks.s3 import S3Sink
    from logferry.sinks.s3_config import S3Endpoint
    from logferry.spool.chunk import Chunk

    clients = AwsClients(Credentials(*cfg["credentials"]), AwsTarget(endpoint_url=cfg["url"]))
    endpoint = S3Endpoint.model_validate(cfg["endpoint"])
    sink = S3Sink(
        endpoint, clients, Path(cfg["state_dir"]), uid_prefix="crash-", part_size=PART_SIZE
    )
    resume = sink.recover()
    print(json.dumps({"event": "recovered", "offset": resume}), flush=True)
    tracemalloc.start()
    for index in range(resume // CHUNK_BYTES, CHUNKS):
        data = make_chunk_data(index)
        sink.feed(
            Chunk(index * CHUNK_BYTES, (index + 1) * CHUNK_BYTES, ACCEPTED_AT, data, CHUNK_LINES)
        )
        del data
        if cfg.get("pace"):
            time.sleep(cfg["pace"])  # gives the parent time to kill us mid-upload
    sink.flush()
    _, peak = tracemalloc.get_traced_memory()
    print(
        json.dumps(
            {
                "event": "done",
                "peak": peak,
                "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "parts": sink.stats.parts,
                "objects": sink.stats.objects,
                "durable": sink.durable_offset,
            }
        ),
        flush=True,
    )


def _child(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from test_s3_crash import run_child; run_child(json.loads(sys.argv[2]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(TESTS_DIR), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # kill -9 / restart: CI runs it; `make test-fast` stays under 5 min
def test_kill_9_mid_multipart_then_restart_completes_the_same_object(
    emulator: Emulator, unique: Any, tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique)
    creds = role_credentials(emulator, role)
    cfg: dict[str, Any] = {
        "url": emulator.url,
        "credentials": [creds.access_key, creds.secret_key, creds.token],
        "endpoint": {
            "name": "crash",
            "bucket_name": role.bucket,
            "iam_role": role.role_arn,
            "path": "cdn/",
            "gzip_level": 1,
        },
        "state_dir": str(tmp_path),
    }
    journal = Journal(tmp_path)

    # 1. Deliver slowly and SIGKILL the process once two parts are journaled.
    first = _child({**cfg, "pace": 0.05})
    deadline = time.monotonic() + 120
    killed_after: list[Any] = []
    while time.monotonic() < deadline and first.poll() is None:
        state = journal.load() if journal.path.exists() else None
        if state and state.active and len(state.active.parts) >= 2:
            os.kill(first.pid, signal.SIGKILL)
            killed_after = state.active.parts
            break
        time.sleep(0.01)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, first.stderr.read() if first.stderr else ""
    state = journal.load()
    assert state is not None and state.active is not None and state.active.upload_id
    upload_id = state.active.upload_id
    journaled_parts = len(state.active.parts)
    assert journaled_parts >= len(killed_after) >= 2
    assert [u["UploadId"] for u in pending_uploads(emulator, role.bucket)] == [upload_id]
    assert read_objects(emulator, role.bucket) == {}

    # 2. Restart: resume the same upload from the last journaled part and finish the file.
    second = _child(cfg)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {"event": "recovered", "offset": state.active.parts[-1].end}
    done = events[-1]
    assert done["event"] == "done" and done["objects"] == 1
    assert done["durable"] == CHUNKS * CHUNK_BYTES

    # 3. One object, every line exactly once and in order, uploads cleaned up.
    objects = read_objects(emulator, role.bucket)
    assert len(objects) == 1
    (obj,) = objects.values()
    assert obj.key == f"cdn/2024-07-04T22:00:00.000-crash-{0:016x}.log.gz"
    assert obj.content_type == "application/gzip"
    assert len(obj.body) >= 50 * 1024 * 1024
    expected = hashlib.sha256()
    for index in range(CHUNKS):
        expected.update(make_chunk_data(index))
    assert hashlib.sha256(gzip.decompress(obj.body)).hexdigest() == expected.hexdigest()
    etag = emulator.client("s3").head_object(Bucket=role.bucket, Key=obj.key)["ETag"]
    total_parts = journaled_parts + done["parts"]
    assert etag.strip('"').endswith(f"-{total_parts}")  # parts of both processes, one upload
    assert pending_uploads(emulator, role.bucket) == []

    # 4. Memory stayed bounded by a few parts while ~30+ MiB streamed through the restart.
    assert done["parts"] >= 3
    assert done["peak"] < 4 * PART_SIZE, done
    print(
        f"\nrestart uploaded {done['parts']} parts; tracemalloc peak "
        f"{done['peak'] / 2**20:.1f} MiB; max RSS {done['max_rss_kib'] / 1024:.0f} MiB; "
        f"object {len(obj.body) / 2**20:.1f} MiB"
    )
