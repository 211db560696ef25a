"""`EndpointJournal`: the S3 sink's journal in the endpoint's KV record (issue 29, Part C plugs
it in as its `JournalStore`).

Why in the record: a new owner must see the journaled upload of the old one (to complete or
abort it), and a stale owner must not overwrite it. Every save is a compare-and-set of the
whole record from the revision this node wrote last, so it fails (`SpoolFenced`) once another
node took the endpoint. KV writes are replicated and on disk on a quorum before they are
acknowledged, so `sync` is always true here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from logferry.spool.nats.spool import CALL_TIMEOUT

if TYPE_CHECKING:
    from logferry.spool.nats.backend import NatsBackend


class EndpointJournal:
    """load / save / discard of the `journal` field of one endpoint's record (blocking).

    Also the sink's upload notes (`note_upload`, `forget_upload`, `noted_uploads`) and the
    write probe's proof (`save_setup_proof`, `setup_proof`). Plain JSON
    documents only, and deliberately no `exists`: the S3 sink tells a typed
    `JournalStore` (which has `exists`) from a document store by the members present, and
    adapts this one (`sinks.s3_journal.DocumentJournal`)."""

    def __init__(self, backend: NatsBackend, key: str) -> None:
        self.backend = backend
        self.key = key

    def load(self) -> dict[str, Any] | None:
        """The journal as this node last wrote or read it (None: none saved)."""
        doc = self.backend.ownership.record(self.key)
        journal = (doc or {}).get("journal")
        return copy.deepcopy(journal) if journal is not None else None

    def save(self, doc: dict[str, Any], *, sync: bool = True) -> None:
        """Store `doc` by compare-and-set (SpoolFenced when another node owns the endpoint)."""
        value = copy.deepcopy(doc)
        self._write(value)

    def discard(self) -> None:
        self._write(None)

    # -- upload notes (`sinks.s3.upload_notes.SharedUploadNotes`) ----------------------------
    # The ID of a multipart upload just created, kept in the record (field `uploads`) until
    # the journal holds it: the node that takes the endpoint over after a kill -9 is another
    # machine, and only this record tells it which upload to abort.

    def note_upload(self, key: str, upload_id: str) -> None:
        entry = {"key": key, "upload_id": upload_id}
        self._change(lambda record: record.__setitem__("uploads", [*_uploads(record), entry]))

    def forget_upload(self, upload_id: str) -> None:
        def forget(record: dict[str, Any]) -> None:
            kept = [u for u in _uploads(record) if u.get("upload_id") != upload_id]
            if kept:
                record["uploads"] = kept
            else:
                record.pop("uploads", None)

        self._change(forget)

    def noted_uploads(self) -> list[dict[str, str]]:
        """The notes as this node last wrote or read the record."""
        return [dict(u) for u in _uploads(self.backend.ownership.record(self.key) or {})]

    # -- the write probe's proof (`service.worker_step`) -------------------------------------
    # Kept in the record (field `setup`) so that the node taking the endpoint over does not
    # probe again: each probe is two calls to the customer's account, and an upload that a
    # kill during its Create round trip leaves open.

    def save_setup_proof(self, fingerprint: str, at: float) -> None:
        proof = {"for": fingerprint, "at": at}
        self._change(lambda record: record.__setitem__("setup", proof))

    def setup_proof(self) -> tuple[str, float] | None:
        """(settings fingerprint, time) of the last probe any owner saved, or None."""
        found = (self.backend.ownership.record(self.key) or {}).get("setup")
        if not isinstance(found, dict):
            return None
        try:
            return str(found["for"]), float(found["at"])
        except (KeyError, TypeError, ValueError):
            return None

    def _write(self, value: dict[str, Any] | None) -> None:
        self._change(lambda record: record.__setitem__("journal", value))

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        self.backend.call(self.backend.ownership.write(self.key, change), CALL_TIMEOUT)


def _uploads(record: dict[str, Any]) -> list[dict[str, str]]:
    found = record.get("uploads")
    return list(found) if isinstance(found, list) else []
