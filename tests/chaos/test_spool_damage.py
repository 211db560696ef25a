"""A damaged byte in the spool after a kill -9: the damaged record is quarantined (kept on disk,
counted in status), every other acknowledged line is delivered exactly once, and no altered or
invented line reaches the bucket."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from chaos.backends import LOCAL_SPOOL_ONLY
from chaos.harness import Ledger, Tally, chaos_s3_customers, compare, gated_proxy, write_tally
from e2e_helpers import bucket_content, endpoint_uid, segment_files, wait_pending_zero
from logferry.local.emulator import Emulator
from logferry.spool.format import _REC_HDR, REC_HEADER_BYTES, SEG_HEADER_BYTES
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-damage-customer-token-0123456789"
S3_CALLS = [
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
]


def records(segment: Path) -> list[tuple[int, int, bytes]]:
    """(file position, header bytes + payload length, payload) of every record, in order."""
    data = segment.read_bytes()
    out, pos = [], SEG_HEADER_BYTES
    while pos + REC_HEADER_BYTES <= len(data):
        magic, _crc, _start, _line, length, _lines, _at = _REC_HDR.unpack_from(data, pos)
        assert magic == b"LFR1", f"{segment.name}: no record at {pos}"
        payload = data[pos + REC_HEADER_BYTES : pos + REC_HEADER_BYTES + length]
        out.append((pos, REC_HEADER_BYTES + length, payload))
        pos += REC_HEADER_BYTES + length
    assert pos == len(data), f"{segment.name}: torn tail at {pos}"
    return out


@LOCAL_SPOOL_ONLY
@pytest.mark.parametrize(
    "where",
    [
        "sealed",
        "newest",
    ],
)
def test_damaged_byte_after_kill_is_quarantined_and_nothing_else_lost(
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
    where: str,
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    ledger = Ledger()
    tally = Tally(f"spool-damaged-byte-{where}", seed)
    spool_dir = tmp_path / "spool"
    with gated_proxy(emulator) as (proxy, gate):
        config = base_config(
            emulator,
            spool_dir,
            vendor={"sts_endpoints": {"us-east-1": proxy.url, "us-west-2": proxy.url}},
            aws={"endpoint_url": proxy.url},
            server={"idle_flush_seconds": 1},
            spool={"segment_bytes": "1MiB", **spool_backend},
            customers=chaos_s3_customers(customer, role, period=3600),
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN})
        gate.pause(S3_CALLS)  # S3 is down: everything stays in the spool
        serve.start()
        uid = endpoint_uid(spool_dir, customer, "s3")

        def enough() -> bool:
            """Three sealed segments, and the newest holds at least five ~100 KB records."""
            segs = segment_files(spool_dir, uid)
            return len(segs) >= 4 and segs[-1].stat().st_size > 5 * 100_600

        with serve.as_token(TOKEN) as client:
            while not enough():
                lines = ledger.batch("dmg", 500, 200)
                r = client.post(f"/v1/ingest/{customer}/s3", content=b"\n".join(lines) + b"\n")
                assert r.status_code == 202, r.text
                ledger.acked.extend(lines)
                if len(ledger.acked) > 100_000:
                    raise RuntimeError("the spool does not roll segments at 1 MiB")
        serve.kill9()
        segments = segment_files(spool_dir, uid)
        if len(segments) < 3:  # a broken setup must not pass as the expected failure
            raise RuntimeError(f"expected sealed segments, found {segments}")
        segment = segments[0] if where == "sealed" else segments[-1]
        recs = records(segment)
        if len(recs) < 3:
            raise RuntimeError(f"{segment.name} holds {len(recs)} records")
        pos, _size, payload = recs[rng.randrange(len(recs) - 1)]  # never the newest's last one
        damaged_lines = set(payload.split(b"\n")[:-1])
        at = pos + REC_HEADER_BYTES + rng.randrange(len(payload))
        with segment.open("r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ rng.randrange(1, 256)]))
        gate.unpause()
        serve.start()
        wait_pending_zero(serve, customer, "s3", timeout=120)
        with serve.admin() as admin:
            status = admin.get(f"/v1/customers/{customer}/endpoints/s3/status").json()
            metrics = admin.get("/metrics").text
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    missing = {line for line in ledger.acked if found[line] == 0}
    lost, duplicated, foreign = compare(found, ledger)
    tally.kills, tally.moments[f"damaged byte in a {where} segment"] = 1, 1
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated = lost - len(damaged_lines & missing), duplicated
    tally.open_uploads = len(pending_uploads(emulator, role.bucket))
    write_tally(tally)
    # Exactly the damaged record is missing: nothing after it, nothing mis-read.
    assert missing == damaged_lines, (len(missing), len(damaged_lines))
    assert (duplicated, foreign, tally.open_uploads) == (0, 0, 0)
    quarantine = status.get("quarantine") or {}
    assert quarantine.get("lines") == len(damaged_lines), status
    kept = Path(quarantine["path"]).read_bytes()
    assert payload[:64] in kept or payload[-64:] in kept, "the quarantine file lacks the record"
    assert "logferry_spool_quarantined_bytes" in metrics
