"""Upload notes: multipart uploads created whose ID the journal may not hold yet.

Why they exist: CreateMultipartUpload's answer is the only place an upload's ID ever appears,
and the guide's policy cannot list uploads (no s3:ListBucketMultipartUploads). So the ID is
noted the moment it arrives, on whatever thread got it, before the journal learns it on the
delivery thread; recovery aborts every noted upload the journal does not name.

Where they live follows the journal. Local notes are small files in the sink's state directory.
With a shared journal (NATS) they go into the endpoint's KV record beside the journal: a
delivery node's disk is only scratch there, and the node that takes the endpoint over after a
kill -9 is another machine, which must find the ID to abort it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from logferry.spool.errors import SpoolFenced
from logferry.spool.files import make_durable, write_atomic

CREATED_PREFIX: Final = "created-"
"""`created-<id>.json`: a local note (see the module docstring)."""
LEGACY_PROBE_FILE: Final = "healthcheck-probe.json"
"""Where earlier versions noted the write probe's upload (read by recovery, never written)."""


@dataclass(frozen=True, slots=True)
class Noted:
    """One noted upload; `handle` is what `UploadNotes.remove` takes."""

    handle: str
    key: str
    upload_id: str


class UploadNotes(Protocol):
    """Where a sink notes the uploads it creates (thread-safe: io threads note, the delivery
    thread removes)."""

    def add(self, key: str, upload_id: str, *, durable: bool = False) -> str:
        """Note an upload; returns its handle. Raises when the note could not be kept."""
        ...

    def remove(self, handle: str) -> None:
        """The journal names the upload now, or it was aborted: forget the note."""
        ...

    def listed(self) -> list[Noted]:
        """Every upload noted and not removed (torn local notes are dropped on the way)."""
        ...


@runtime_checkable
class SharedNoteDocuments(Protocol):
    """What a shared journal store offers for notes (`spool.nats.journal.EndpointJournal`)."""

    def note_upload(self, key: str, upload_id: str) -> None: ...

    def forget_upload(self, upload_id: str) -> None: ...

    def noted_uploads(self) -> list[dict[str, str]]: ...


class LocalUploadNotes:
    """Notes as files under the sink's state directory. A note is not fsynced unless asked
    (`durable`): it survives a kill -9 from the page cache, and the journal's fsync follows
    within milliseconds."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def add(self, key: str, upload_id: str, *, durable: bool = False) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = str(self.state_dir / f"{CREATED_PREFIX}{uuid.uuid4().hex[:16]}.json")
        write_atomic(path, json.dumps({"key": key, "upload_id": upload_id}).encode(), durable=False)
        if durable:
            make_durable(path)
        return path

    def remove(self, handle: str) -> None:
        Path(handle).unlink(missing_ok=True)

    def listed(self) -> list[Noted]:
        try:
            # A note the crash caught before its rename is read too: complete, it names an
            # upload as well; torn, it is removed below.
            paths = [
                p
                for p in self.state_dir.iterdir()
                if p.name.startswith(CREATED_PREFIX) or p.name == LEGACY_PROBE_FILE
            ]
        except FileNotFoundError:
            return []
        found = []
        for path in paths:
            try:
                noted = json.loads(path.read_bytes())
                found.append(Noted(str(path), str(noted["key"]), str(noted["upload_id"])))
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # torn by the crash: write_atomic never leaves one
        return found


class SharedUploadNotes:
    """Notes in the shared record (every write there is replicated and on disk on a quorum
    before it is acknowledged, so `durable` changes nothing). The handle is the upload ID."""

    def __init__(self, documents: SharedNoteDocuments) -> None:
        self.documents = documents

    def add(self, key: str, upload_id: str, *, durable: bool = False) -> str:
        self.documents.note_upload(key, upload_id)
        return upload_id

    def remove(self, handle: str) -> None:
        try:
            self.documents.forget_upload(handle)
        except SpoolFenced:
            # Another node owns the record now (or this one is deleting an endpoint it does
            # not own): the upload is aborted or journaled already; the owner's recovery
            # meets the note, finds the upload gone (NoSuchUpload) and forgets it.
            pass

    def listed(self) -> list[Noted]:
        return [
            Noted(str(n["upload_id"]), str(n["key"]), str(n["upload_id"]))
            for n in self.documents.noted_uploads()
        ]


def upload_notes(journal: Any, state_dir: Path) -> tuple[UploadNotes, tuple[UploadNotes, ...]]:
    """Where new notes go, and every place recovery sweeps: the shared record when `journal`
    (the store the sink was given, or the documents it adapts) keeps notes, and always the
    local directory (notes a node left there before it kept them in the record)."""
    local = LocalUploadNotes(state_dir)
    documents = getattr(journal, "documents", journal)
    if isinstance(documents, SharedNoteDocuments):
        shared = SharedUploadNotes(documents)
        return shared, (shared, local)
    return local, (local,)
