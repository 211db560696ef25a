"""A delivery worker's counters: what is saved per endpoint, how saves are batched, and the
status document built from them (see `service.worker`)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logferry.service.records import EndpointRecord

QUARANTINE_FIX = (
    "The spool's disk returned damaged bytes; check the disk (dmesg, SMART). The damaged "
    "records are kept byte for byte in the quarantine file for inspection; nothing else was "
    "lost, and the file can be deleted once inspected."
)


@dataclass
class EndpointStats:
    lines_accepted: int = 0
    bytes_accepted: int = 0
    lines_delivered: int = 0
    bytes_delivered: int = 0
    objects: int = 0
    records: int = 0
    last_success: float | None = None
    last_error_time: float | None = None
    quarantined_records: int = 0
    quarantined_bytes: int = 0
    quarantined_lines: int = 0
    last_quarantine: str | None = None
    setup_checked_at: float | None = None
    """Wall time of the last passing write probe (see worker_step.RECHECK_SECONDS)..."""
    setup_checked_for: str | None = None
    """...and the fingerprint of the settings it proved (`setup_fingerprint`)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class StatsBook:
    """Endpoint stats changed since the last save. Workers mark them (any thread); the service
    saves every marked endpoint in one SQLite transaction every few seconds, off the event loop,
    instead of one commit per endpoint per step. A retired endpoint (deleted) is never saved
    again, whatever a step still finishing marks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: dict[str, EndpointStats] = {}
        self._retired: set[str] = set()

    def mark(self, uid: str, stats: EndpointStats) -> None:
        with self._lock:
            if uid not in self._retired:
                self._dirty[uid] = stats

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        """Every marked endpoint's (uid, stats row), unmarking them."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            return [(uid, asdict(stats)) for uid, stats in dirty.items()]

    def take_one(self, uid: str) -> dict[str, Any] | None:
        """This endpoint's row if it is marked (a worker saving on exit), unmarking it."""
        with self._lock:
            stats = self._dirty.pop(uid, None)
            return None if stats is None else asdict(stats)

    def retire(self, uid: str) -> None:
        """The endpoint is being deleted: forget it and ignore later marks (uids are never
        reused, so the set only grows by one short string per deleted endpoint)."""
        with self._lock:
            self._dirty.pop(uid, None)
            self._retired.add(uid)


def setup_fingerprint(record: EndpointRecord, external_id: str) -> str:
    """What a write probe proves: these endpoint settings (bucket, role, path, headers...),
    assumed with this external ID. Any change asks for a new probe."""
    doc = json.dumps(
        [record.type, record.config, external_id], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def status_document(
    record: EndpointRecord,
    *,
    unit: str,
    state: str,
    stats: EndpointStats,
    delivered: tuple[int, int],
    pending: tuple[int, int],
    last_error: dict[str, Any] | None,
    oldest_age: float | None,
    last_lag: float | None,
    lag_budget: float,
    sink: dict[str, Any],
) -> dict[str, Any]:
    """An endpoint's status as the API shows it. `delivered` and `pending` are (lines, bytes)
    read together under the worker's progress lock; `unit` is the factory's ("objects": S3
    objects are counted, otherwise Kinesis-style records)."""
    quarantine = None
    if stats.quarantined_records:
        quarantine = {
            "records": stats.quarantined_records,
            "bytes": stats.quarantined_bytes,
            "lines": stats.quarantined_lines,
            "path": stats.last_quarantine,
            "fix": QUARANTINE_FIX,
        }
    objects = unit == "objects"
    return {
        "customer_id": record.customer_id,
        "name": record.name,
        "type": record.type,
        "state": state,
        "lines": {
            "accepted": stats.lines_accepted,
            "delivered": delivered[0],
            "pending": pending[0],
        },
        "bytes": {
            "accepted": stats.bytes_accepted,
            "delivered": delivered[1],
            "pending": pending[1],
        },
        "objects" if objects else "records": stats.objects if objects else stats.records,
        "last_success": stats.last_success,
        "last_error": last_error,
        "lag": {
            "oldest_undelivered_seconds": _round(oldest_age),
            "last_delivered_seconds": _round(last_lag),
            "budget_seconds": lag_budget,
            "late": oldest_age is not None and oldest_age > lag_budget,
        },
        "quarantine": quarantine,
        "sink": sink,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
