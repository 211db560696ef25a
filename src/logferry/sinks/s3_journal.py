"""The S3 sink's crash journal: one small JSON document per endpoint, saved crash-atomically.

Where the document lives is a seam, `JournalStore` (load / save / exists / discard): the sink and
its factory use nothing else. `Journal` (below) is the local implementation, a file under the
endpoint's `state_dir`; `DocumentJournal` adapts any store of plain JSON documents with CAS-style
saves (the NATS backend's `EndpointJournal`, which keeps the document in the endpoint's KV record
and raises when a newer owner wrote it) without the sink knowing which one it has.

What it must survive a `kill -9` with (Fluent Bit keeps multipart upload IDs on disk for the same
reason): the open multipart upload (key, UploadId, each uploaded part's ETag and the spool offset
where that part's data ends), a file boundary once decided (so a file closed early by `flush()`
is rebuilt with the same byte range on replay), and the end of the last completed object (so a
restart does not re-send what is already in S3).

The document lives in a two-slot file overwritten in place (`logferry.spool.slot_file`): a save
is one pwrite + fdatasync, and after a crash the file holds either the old or the new document,
never a torn mix. (Until this version it was `s3-journal.json`, replaced with temp + fsync +
rename + fsync(dir): two device flushes per save. It is still read, and removed after the first
save.) Updates a restart can do without (the end of a single-part object, which the spool's own
commit records) skip the fdatasync. One sink writes it (the service serialises calls per
endpoint), so there is no locking. The document stays small: at most one active file, plus one
short entry per uploaded part (a document past its slot rewrites the file with bigger slots).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from logferry.spool.slot_file import SlotFile

JOURNAL_NAME: Final = "s3-journal"
LEGACY_JOURNAL_NAME: Final = "s3-journal.json"
VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str
    end: int
    """Spool offset just past the last line in this part (always a line boundary)."""
    framed: int
    """Framed (uncompressed) bytes in the file up to `end`, for file_max_bytes after a resume."""


@dataclass(slots=True)
class ActiveFile:
    """The one file that is being built or uploaded and is not yet a completed object."""

    key: str
    start: int
    period_start: int
    end: int | None = None
    """The file's decided boundary (None while it may still grow)."""
    upload_id: str | None = None
    parts: list[Part] = field(default_factory=list)
    pgp: bool = False
    created: float | None = None
    """When its multipart upload was created (the sink's clock): a `NoSuchUpload` for an upload
    younger than any lifecycle rule can abort proves that it was completed (see `recovery`)."""

    @property
    def completing(self) -> bool:
        """Its end is decided and every part is journaled: the only call left is the
        completion, which may already have happened (its answer lost, or a stale owner's)."""
        return (
            self.upload_id is not None
            and self.end is not None
            and bool(self.parts)
            and self.resume_offset >= self.end
        )

    @property
    def resume_offset(self) -> int:
        return self.parts[-1].end if self.parts else self.start

    @property
    def framed(self) -> int:
        return self.parts[-1].framed if self.parts else 0


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A journaled upload logferry decided to abort (recorded before the abort is sent, so no
    later recovery mistakes its absence for a completion)."""

    key: str
    upload_id: str


@dataclass(slots=True)
class JournalState:
    incarnation: str
    """Fingerprint of uid_prefix + the endpoint settings that shape keys and bytes."""
    durable: int | None = None
    """End offset of the last completed object (every byte below is in S3)."""
    committed: int = 0
    """The caller's last reported spool commit."""
    active: ActiveFile | None = None
    abandoned: list[Abandoned] = field(default_factory=list)
    """Uploads to abort (recovery finishes the job a crash interrupted)."""

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["version"] = VERSION
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JournalState:
        if doc.get("version") != VERSION:
            raise ValueError(f"unsupported journal version {doc.get('version')!r}")
        active = doc.get("active")
        return cls(
            incarnation=str(doc["incarnation"]),
            durable=doc.get("durable"),
            committed=int(doc.get("committed", 0)),
            active=None
            if active is None
            else ActiveFile(
                key=active["key"],
                start=int(active["start"]),
                period_start=int(active["period_start"]),
                end=active.get("end"),
                upload_id=active.get("upload_id"),
                parts=[Part(**p) for p in active.get("parts", [])],
                pgp=bool(active.get("pgp", False)),
                created=active.get("created"),
            ),
            abandoned=[Abandoned(**a) for a in doc.get("abandoned", [])],
        )


@runtime_checkable
class JournalStore(Protocol):
    """Where one endpoint's `JournalState` lives. One writer at a time (the endpoint's owner);
    `save` must be atomic (the old or the new document after a crash, never a mix) and, with
    `sync=True`, durable before it returns. A store shared by several processes raises from
    `save` once another owner has written (the sink then stops: its next step fails)."""

    def exists(self) -> bool:
        """A document is (or may be) there, without parsing it."""
        ...

    def load(self) -> JournalState | None:
        """The saved state, None when there is none; ValueError when it is unreadable."""
        ...

    def save(self, state: JournalState, *, sync: bool = True) -> None: ...

    def discard(self) -> None:
        """Forget the document (the endpoint is deleted)."""
        ...


@runtime_checkable
class JournalDocuments(Protocol):
    """A store of one plain JSON document (`logferry.spool.nats.journal.EndpointJournal`)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, doc: dict[str, Any], *, sync: bool = True) -> None: ...

    def discard(self) -> None: ...


class DocumentJournal:
    """`JournalStore` over a `JournalDocuments` store: the typed state in, plain JSON out."""

    def __init__(self, documents: JournalDocuments) -> None:
        self.documents = documents
        self.writes = 0

    def exists(self) -> bool:
        return self.documents.load() is not None

    def load(self) -> JournalState | None:
        doc = self.documents.load()
        if doc is None:
            return None
        try:
            return JournalState.from_json(doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"the S3 journal in {type(self.documents).__name__} is unreadable ({exc}); "
                "discard it to start over (a multipart upload it names may then stay pending "
                "until a bucket lifecycle rule aborts it)."
            ) from exc

    def save(self, state: JournalState, *, sync: bool = True) -> None:
        self.documents.save(state.to_json(), sync=sync)
        self.writes += 1

    def discard(self) -> None:
        self.documents.discard()


def journal_store(given: JournalStore | JournalDocuments | None, state_dir: Path) -> JournalStore:
    """The store a sink uses: `given` (adapted when it holds plain documents), else the local
    file journal under `state_dir`."""
    if given is None:
        return Journal(state_dir)
    if isinstance(given, JournalStore):
        return given
    return DocumentJournal(given)


def has_unfinished(journal: JournalStore) -> bool:
    """The journal names a file that is not a completed object yet (data still pending)."""
    if not journal.exists():
        return False
    try:
        state = journal.load()
    except (OSError, ValueError):
        return False
    return state is not None and (state.active is not None or bool(state.abandoned))


class Journal:
    """Crash-atomic load/save of one `JournalState` in `directory` (the local `JournalStore`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME
        self.legacy_path = directory / LEGACY_JOURNAL_NAME
        self._file = SlotFile(str(self.path))
        self._legacy_gone = False
        self.writes = 0

    @property
    def fsyncs(self) -> int:
        """fsync calls made (1 per synced save in place), for tests and benchmarks."""
        return self._file.fsyncs

    def exists(self) -> bool:
        return self.path.exists() or self.legacy_path.exists()

    def load(self) -> JournalState | None:
        """The saved state, or None when there is none. A corrupt file raises ValueError
        naming it (never silently ignored: it may describe an upload that must be finished)."""
        path = self.path
        raw = self._file.load()
        if raw is None:
            path = self.legacy_path
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                return None
        try:
            return JournalState.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"S3 journal {path} is unreadable ({exc}); move it aside to start over "
                "(a multipart upload it names may then stay pending until a bucket lifecycle "
                "rule aborts it)."
            ) from exc

    def save(self, state: JournalState, *, sync: bool = True) -> None:
        """Make `state` the saved document. `sync=False` skips the fdatasync: the new document
        survives a process crash (it is in the page cache) but after a power loss the old one
        may come back — only for updates whose loss a restart tolerates (see `S3Sink`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state.to_json(), separators=(",", ":")).encode()
        self._file.save(data, durable=sync)
        self.writes += 1
        if sync and not self._legacy_gone:
            # The new file holds the newest document durably now: the old one can go (after
            # an unsynced save a power loss could bring back neither, so it waits for this).
            self.legacy_path.unlink(missing_ok=True)
            self._legacy_gone = True

    def discard(self) -> None:
        """Remove the document (both names); the directory stays for the sink's scratch files."""
        self.path.unlink(missing_ok=True)
        self.legacy_path.unlink(missing_ok=True)
