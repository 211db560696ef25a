"""The OpenTelemetry SDK's OTLP/HTTP exporter against a serve that answers 503 + Retry-After,
then heals.

The 503 is serve's real answer to a spool that cannot store, in the two ways a disk fails:
- full: another writer fills the spool's small tmpfs, the append fails with ENOSPC, and the
  OTLP route answers 503 + Retry-After 30. /v1/ingest would answer 507 there, but OTLP
  exporters retry only 429/502/503/504 (logferry.service.otlp). It heals when the neighbour
  frees its space, without a restart;
- failed: an ext4 error makes the spool's filesystem read-only (EROFS; the spool stops,
  `SpoolBroken`). It heals the way an operator heals it: stop serve, `e2fsck`, mount, start
  serve on the same port while the exporter is still retrying.

Two exporters share the serve and one customer endpoint:
- a patient one (its timeout is longer than Retry-After): it waits as told, retries and
  reports the batch exported;
- a hasty one (its timeout is shorter than Retry-After): the SDK gives up at the first 503 and
  reports the batch failed. The SDK drops that data; logferry kept none of it either.

A wrapper around each exporter records what the SDK reported for every batch. Then the bucket
must hold every record reported exported exactly once, and none of the records reported
failed. A record the SDK dropped must never count as delivered.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from chaos.backends import LOCAL_SPOOL_ONLY
from chaos.disks import Ext4Disk, fill
from chaos.harness import (
    Tally,
    assert_no_secrets,
    gated_proxy,
    outputs_of,
    proxied_s3_config,
    wait_until,
    write_tally,
)
from e2e_helpers import bucket_content
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role, pending_uploads
from service_helpers import ADMIN_TOKEN, ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

TOKEN = "chaos-otlp503-customer-token-0123456789"
RETRY_AFTER = {"full": {"30"}, "failed": {"30", "60"}}
"""What serve answers (logferry.service.ingest_body): a full disk 30 s; a failed one 30 s while
the write fails (EROFS), 60 s once the spool stopped after it (SpoolBroken)."""
REFUSAL = {"full": b"disk is full", "failed": b"spool"}
PATIENCE = 240
"""The patient exporter's timeout: longer than any Retry-After plus a restart."""
HASTE = 10
"""The hasty exporter's timeout: shorter than any Retry-After, so it gives up at once."""
BATCH = 100


class Recording:
    """An SDK log exporter around the real OTLP/HTTP one: what the SDK reported per record,
    and every HTTP answer it got (status, Retry-After)."""

    def __init__(self, url: str, timeout: float) -> None:
        import requests
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        self.exported: list[str] = []
        self.dropped: list[str] = []
        self.answers: list[tuple[int, str | None]] = []
        self.refusals: list[bytes] = []
        """Bodies of the non-2xx answers (google.rpc.Status)."""
        session = requests.Session()
        session.hooks["response"].append(self._answer)
        self.inner = OTLPLogExporter(
            endpoint=url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            session=session,
            timeout=timeout,
        )

    def _answer(self, r: Any, *args: Any, **kwargs: Any) -> None:
        self.answers.append((r.status_code, r.headers.get("Retry-After")))
        if r.status_code >= 300:
            self.refusals.append(r.content)

    def export(self, batch: Sequence[Any]) -> Any:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        result = self.inner.export(batch)
        bodies = [str(item.log_record.body) for item in batch]
        (self.exported if result == LogRecordExportResult.SUCCESS else self.dropped).extend(bodies)
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        self.inner.shutdown()


class Sender:
    """A LoggerProvider whose batches go through one `Recording` exporter."""

    def __init__(self, url: str, timeout: float) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        self.exporter = Recording(url, timeout)
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(
            BatchLogRecordProcessor(
                self.exporter,  # type: ignore[arg-type]  # duck-typed LogRecordExporter
                max_export_batch_size=BATCH,
                schedule_delay_millis=60_000,
            )
        )
        self.logger = self.provider.get_logger("chaos")

    def send(self, tag: str, count: int) -> None:
        """Emit `count` records and export them all (returns once the SDK is done with them)."""
        for i in range(count):
            self.logger.emit(body=f"{tag} {i:05d}")
        self.provider.force_flush()


@LOCAL_SPOOL_ONLY
@pytest.mark.parametrize("disk", ["full", "failed"])
def test_otlp_exporter_retrying_on_503_lands_exactly_what_it_exported(
    disk: str,
    emulator: Emulator,
    unique: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    seed: int,
    spool_backend: dict[str, Any],
) -> None:
    mount: Path | Ext4Disk = request.getfixturevalue(
        "small_disk" if disk == "full" else "ext4_disk"
    )
    root = mount if isinstance(mount, Path) else mount.path
    customer = unique("chaos")
    role = make_s3_role(emulator, unique, external_id=customer)
    tally = Tally(f"otlp-exporter-503-disk-{disk}", seed)
    with gated_proxy(emulator) as (proxy, gate):
        config = proxied_s3_config(
            emulator, root / "spool", proxy.url, spool_backend, customer, role, period=1
        )
        config["spool"].update({"max_bytes": "1GiB", "segment_bytes": "4MiB"})
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": TOKEN})
        serve.start()
        url = f"{serve.url}/v1/otlp/{customer}/s3/v1/logs"
        patient = Sender(url, timeout=PATIENCE)
        hasty = Sender(url, timeout=HASTE)
        patient.send("before", 3 * BATCH)
        if isinstance(mount, Path):
            filler = fill(mount)
        else:
            mount.fail()
        hasty.send("dropped", 3 * BATCH)
        # The patient exporter's first batch gets 503 + Retry-After; the disk heals while it
        # waits, and its retry is taken.
        flushing = threading.Thread(target=patient.send, args=("retried", 3 * BATCH))
        flushing.start()
        wait_until(
            lambda: any(code == 503 for code, _ in patient.exporter.answers),
            60,
            "a 503 to the patient exporter",
        )
        if isinstance(mount, Path):
            filler.unlink()
        else:
            tally.moments[f"exit code on SIGTERM while read-only: {serve.terminate()}"] = 1
            mount.repair()
            serve.start()
        flushing.join(timeout=PATIENCE + 30)
        assert not flushing.is_alive(), "the patient exporter never finished"
        patient.send("after", 3 * BATCH)
        patient.provider.shutdown()
        hasty.provider.shutdown()
        exported = Counter(patient.exporter.exported + hasty.exporter.exported)
        dropped = Counter(patient.exporter.dropped + hasty.exporter.dropped)

        def bodies() -> Counter[str]:
            got: Counter[str] = Counter()
            for line, n in bucket_content(emulator, role.bucket).lines.items():
                got[json.loads(line)["body"]] += n
            return got

        found = wait_until(
            lambda: (c := bodies()) and sum(c.values()) >= sum(exported.values()) and c,
            120,
            "every exported record in the bucket",
            1.0,
        )
        texts = outputs_of(serve, [(customer, "s3")])
        assert serve.terminate() == 0
    answers = Counter(code for s in (patient, hasty) for code, _ in s.exporter.answers)
    retry_after = {ra for s in (patient, hasty) for code, ra in s.exporter.answers if code == 503}
    tally.acked, tally.checked = sum(exported.values()), sum(found.values())
    tally.lost = sum(1 for body in exported if found[body] == 0)
    tally.duplicated = sum(n - 1 for n in found.values() if n > 1)
    tally.open_uploads = len(pending_uploads(emulator, role.bucket))
    tally.moments.update({f"HTTP {code}": n for code, n in answers.items()})
    tally.moments.update({f"Retry-After {value}": 1 for value in retry_after})
    tally.moments["records the SDK reported failed"] = sum(dropped.values())
    tally.moments["of those, in the bucket"] = sum(1 for body in dropped if found[body])
    write_tally(tally)
    texts["otlp answers"] = "\n".join(
        str(a) for s in (patient, hasty) for a in [*s.exporter.answers, *s.exporter.refusals]
    )
    assert_no_secrets(emulator, gate, texts, {"admin token": ADMIN_TOKEN, "customer token": TOKEN})
    refusals = [body for s in (patient, hasty) for body in s.exporter.refusals]
    assert answers[503] > 0 and retry_after <= RETRY_AFTER[disk], (answers, retry_after)
    # Only 503s (never a 507 the SDK would drop, nor a 500), each naming the disk.
    assert set(answers) <= {200, 503}, answers
    assert all(REFUSAL[disk] in body for body in refusals), refusals[:1]
    # Both SDK outcomes happened: batches retried until taken, and batches the SDK gave up on.
    assert any(b.startswith("retried") for b in exported), tally.line()
    assert set(dropped) == {f"dropped {i:05d}" for i in range(3 * BATCH)}, tally.line()
    assert found == exported, tally.line()
    assert tally.open_uploads == 0, tally.line()
