"""The spool's filesystem turning read-only under a running serve: ingest answers 503 with the fix
(never a 202 it cannot keep, never a 500), nothing acknowledged is lost, and once the filesystem is
repaired and mounted read-write again, a new serve delivers everything and ingest works.

A tmpfs cannot be remounted read-only while serve holds its newest segment open for writing (the
kernel answers EBUSY: `mount -o remount,ro` exits 32), and neither can a read-only bind mount. So
the case does what Linux itself does after an I/O error: an ext4 image on a loop device mounted
`errors=remount-ro`, turned read-only under the open writer through ext4's own
`/sys/fs/ext4/<dev>/trigger_fs_error` (`chaos.disks.Ext4Disk`, fixture `ext4_disk`). Such a
filesystem refuses `remount,rw` ("emergency_ro") until it is unmounted and checked, so recovery
is the operator's: stop serve, `e2fsck`, mount, start serve."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chaos.backends import LOCAL_SPOOL_ONLY
from chaos.disks import Ext4Disk
from chaos.harness import (
    Ledger,
    Tally,
    chaos_s3_customers,
    compare,
    gated_proxy,
    wait_until,
    write_tally,
)
from e2e_helpers import bucket_content, wait_pending_zero
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ServeProcess, base_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "chaos-readonly-customer-token-0123456789"


@LOCAL_SPOOL_ONLY
@pytest.mark.parametrize(
    "moment",
    [
        "after the first delivery",
        # Found by this case: the probe upload stayed open when its note could not be written.
        "while the healthcheck's probe upload is being created",
    ],
)
def test_read_only_spool_answers_503_and_recovers(
    moment: str,
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    ext4_disk: Ext4Disk,
    rng: random.Random,
    seed: int,
    spool_backend: dict[str, Any],
) -> None:
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    ledger = Ledger()
    tally = Tally(f"spool-read-only-ext4-error ({moment})", seed)
    statuses: Counter[int] = Counter()
    path = f"/v1/ingest/{customer}/s3"

    def post(client: Any, tag: str) -> int:
        lines = ledger.batch(tag, 500, 150)
        r = client.post(path, content=b"\n".join(lines) + b"\n")
        statuses[r.status_code] += 1
        if r.status_code == 202:
            ledger.acked.extend(lines)
        else:
            ledger.unsure.update(lines)
            ledger.bodies.append(r.text)
        return int(r.status_code)

    with gated_proxy(emulator) as (proxy, gate):
        config = base_config(
            emulator,
            ext4_disk.path / "spool",
            vendor={"sts_endpoints": {"us-east-1": proxy.url, "us-west-2": proxy.url}},
            aws={"endpoint_url": proxy.url},
            server={"idle_flush_seconds": 1},
            spool={**spool_backend},
            customers=chaos_s3_customers(customer, role, period=1),
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN}).start()
        with serve.as_token(TOKEN) as client:
            probe = gate.arm(["CreateMultipartUpload"], "after") if "probe" in moment else None
            for _ in range(rng.randint(3, 8)):
                assert post(client, "rw") == 202, ledger.bodies[-1:]
            if probe is None:
                wait_until(lambda: bucket_content(emulator, role.bucket).lines, 60, "a delivery")
            else:
                # S3 created the probe's upload; serve gets the reply once the disk has failed.
                assert probe.held.wait(60), "no healthcheck probe upload"
            ext4_disk.fail()
            gate.disarm()
            refused = [post(client, "ro") for _ in range(rng.randint(5, 10))]
            answer = ledger.bodies[-1] if ledger.bodies else ""
        tally.moments.update({f"HTTP {code} while read-only": 1 for code in set(refused)})
        exit_code = serve.terminate()
        tally.moments[f"exit code on SIGTERM while read-only: {exit_code}"] = 1
        ext4_disk.repair()
        serve.start()
        with serve.as_token(TOKEN) as client:
            for _ in range(rng.randint(3, 8)):
                assert post(client, "after") == 202, ledger.bodies[-1:]
        wait_pending_zero(serve, customer, "s3", timeout=180)
        assert serve.terminate() == 0
    found = bucket_content(emulator, role.bucket).lines
    lost, duplicated, foreign = compare(found, ledger)
    tally.acked, tally.checked = len(ledger.acked), sum(found.values())
    tally.lost, tally.duplicated = lost, duplicated
    tally.open_uploads = len(pending_uploads(emulator, role.bucket))
    tally.moments.update({f"HTTP {code}": n for code, n in statuses.items()})
    write_tally(tally)
    assert set(refused) == {503}, (statuses, answer[:500])
    # The fix names what to do and where: check the disk under spool.dir, restart serve.
    assert "spool.dir" in json.loads(answer).get("fix", ""), answer[:500]
    assert (lost, duplicated, foreign, tally.open_uploads) == (0, 0, 0, 0), tally.line()
