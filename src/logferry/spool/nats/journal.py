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
from typing import TYPE_CHECKING, Any

from logferry.spool.nats.spool import CALL_TIMEOUT

if TYPE_CHECKING:
    from logferry.spool.nats.backend import NatsBackend


class EndpointJournal:
    """load / save / discard of the `journal` field of one endpoint's record (blocking).

    Plain JSON documents only, and deliberately no `exists`: the S3 sink tells a typed
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

    def _write(self, value: dict[str, Any] | None) -> None:
        self.backend.call(
            self.backend.ownership.write(
                self.key, lambda record: record.__setitem__("journal", value)
            ),
            CALL_TIMEOUT,
        )
