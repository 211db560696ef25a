"""The S3 delivery engine: spool chunks in, deterministic log files out, nothing lost or doubled.

One `S3Sink` serves one S3 endpoint. The caller (the service worker, or a test) feeds it chunks
in spool order and commits its spool up to `durable_offset`; the sink turns the lines into files
named `<path><period start>-<uid>.log<suffix>` and uploads them with only the calls the
customer's policy allows (PutObject and the multipart family, AbortMultipartUpload).

Determinism is the core idea. Which file a line lands in depends only on the spool data: the
period comes from each chunk's `accepted_at`, `file_max_bytes` counts framed bytes line by line,
and any boundary not implied by the data (a `flush()` or `tick()` closing a file early) is
journaled before the upload starts. The uid is `uid_prefix` + the file's start offset in hex. So
after a crash, re-feeding the spool from `recover()`'s offset rebuilds the same files under the
same keys: a replay overwrites an object with the same lines, never adds a second one.

Memory stays bounded whatever the file size. Lines are framed and compressed in *members* of
about `member_size` bytes (independently decodable: concatenated gzip members, zstd frames and
framed snappy are valid files), members collect into parts of at least `part_size` bytes, and
each part is uploaded as soon as it is full. A file that ends smaller than one part goes up with a
single PutObject. Because parts are independent members cut on line boundaries, a crashed upload
resumes with no compressor state: the journal holds the UploadId and, per part, its ETag and the
spool offset where its data ends, and the caller re-feeds from the last part's end. A PGP file is
one OpenPGP message and cannot be resumed: its compressed members go to a temp file on disk,
which is encrypted (streaming) and uploaded when the file closes; after a crash it is rebuilt.

Error handling (DESIGN.md §2): transient failures are retried here with capped, jittered backoff;
a setup error (AccessDenied, NoSuchBucket, KMS, storage class…) puts the sink in the error state
with the AWS code and a fix and is raised. After *any* exception from `feed`/`tick`/`flush` the
in-memory file is discarded: the caller calls `recover()` again and re-feeds from its result
(the data never left the spool, so nothing is dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pysequoia
from botocore.client import BaseClient
from botocore.credentials import RefreshableCredentials

from logferry.aws.clients import AwsClients
from logferry.errors import AwsError, InputError, SetupError, TransientError
from logferry.sinks import pgp
from logferry.sinks.aws_errors import REFRESH_CODES, classify
from logferry.sinks.backoff import Backoff, retry_call
from logferry.sinks.base import SinkCounters
from logferry.sinks.framing import frame, stable_pid
from logferry.sinks.s3_budget import InflightBudget, shared_budget
from logferry.sinks.s3_config import S3Endpoint
from logferry.sinks.s3_journal import ActiveFile, Journal, JournalState, Part
from logferry.spool.chunk import Chunk
from logferry.spool.files import make_durable, write_atomic

MIB: Final = 1024 * 1024
MIN_PART_SIZE: Final = 5 * MIB  # S3: every part but the last
MAX_PARTS: Final = 10_000
DEFAULT_PART_SIZE: Final = 8 * MIB
DEFAULT_MEMBER_SIZE: Final = 2 * MIB
DEFAULT_PARTS_IN_FLIGHT: Final = 4
IN_FLIGHT_POLL: Final = 1.0
"""While calls are in flight `pump` asks to be called again after at most this long, a safety
net should a `wake` be missed; endpoints with nothing in flight never poll."""
_NEWLINE: Final = 0x0A
_SPILL_SUFFIX: Final = ".spill"
CREATED_PREFIX: Final = "created-"
"""`created-<id>.json`: a multipart upload whose ID the journal may not hold yet (see
`_create_upload`); recovery aborts every one the journal does not name."""
LEGACY_PROBE_FILE: Final = "healthcheck-probe.json"
"""Where earlier versions noted the write probe's upload (read by recovery, never written)."""
_ENCRYPTED_SUFFIX: Final = ".pgp-out"
_NO_RETRY_CODES: Final = frozenset({"NoSuchUpload"})
# Outcomes the sink handles itself by rewriting the file from the spool (not endpoint errors).
_REWRITE_CODES: Final = frozenset({"NoSuchUpload", "InvalidPart", "InvalidPartOrder"})


class SinkNeedsRecovery(RuntimeError):
    """`feed`/`tick`/`flush` after a failure: call `recover()` and re-feed from its offset."""


@dataclass
class LastError:
    code: str
    message: str
    fix: str | None
    time: float
    transient: bool


@dataclass
class S3SinkStats:
    """Counters for status pages and metrics (bytes count every upload, re-uploads included)."""

    objects: int = 0
    parts: int = 0
    bytes_in: int = 0
    """Line bytes accepted from the spool (before framing)."""
    bytes_out: int = 0
    """Object bytes uploaded (after compression / encryption)."""
    retries: int = 0
    aborted_uploads: int = 0
    last_key: str | None = None
    last_success: float | None = None
    last_error: LastError | None = None
    state: Literal["ok", "retrying", "error"] = "ok"


MAX_PENDING_MEMBERS = 2
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _compress_pool() -> ThreadPoolExecutor:
    """One compression pool for every sink: codecs release the GIL, so members of all open
    files compress on all cores while delivery threads frame and upload."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="compress"
            )
        return _pool


class _PartBuffer:
    """Compressed members of the part being filled, joined once when the part is cut.

    One allocation of the part's exact size, which glibc maps on its own (above the threshold
    `s3_budget.configure_shared_budget` pins) and returns to the system when the upload is done,
    instead of a bytearray grown by reallocation inside a thread's arena, which keeps it.
    """

    __slots__ = ("_members", "_size")

    def __init__(self) -> None:
        self._members: list[bytes] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, member: bytes) -> None:
        if member:
            self._members.append(member)
            self._size += len(member)

    def take(self) -> bytearray:
        """The part's bytes, allocated once at their exact size; the buffer is empty afterwards.

        A bytearray, as before: botocore sends it as it is (a bytes body would be wrapped in a
        file and get `Expect: 100-continue`, a round trip per part)."""
        body = bytearray().join(self._members)
        self._members = []
        self._size = 0
        return body

    def take_bytes(self) -> bytes:
        """`take` for a PutObject body (see `_put_without_expect`), in one allocation too."""
        body = b"".join(self._members)
        self._members = []
        self._size = 0
        return body


@dataclass
class _Flight:
    """One UploadPart submitted to the io pool."""

    future: Future[dict[str, Any]]
    end: int
    framed: int
    size: int


@dataclass
class _OpenFile:
    """A file being built or uploaded (in memory: one member of framed lines, one part being
    filled, and the parts queued or in flight, bounded by `parts_in_flight`)."""

    key: str
    start: int
    period_start: int
    boundary: int | None = None
    """Journaled end: the file must end exactly here (a replay of a decided file)."""
    data_end: int = 0
    framed: int = 0
    raw: list[bytes] = field(default_factory=list)
    raw_size: int = 0
    buf: _PartBuffer = field(default_factory=_PartBuffer)
    """Compressed members not yet uploaded (non-PGP)."""
    sealed_end: int = 0
    sealed_framed: int = 0
    upload_id: str | None = None
    parts: list[Part] = field(default_factory=list)
    spill: Any = None
    spill_path: Path | None = None
    must_close: bool = False
    pending: deque[tuple[Future[bytes], int, int]] = field(default_factory=deque)
    """Members being compressed on the shared pool: (future, data end, framed bytes)."""
    pgp: bool = False
    next_number: int = 1
    """Part number of the next part cut from `buf`."""
    queued: deque[tuple[int, bytearray, int, int]] = field(default_factory=deque)
    """Full parts waiting for a slot: (number, body, data end, framed bytes)."""
    flights: dict[int, _Flight] = field(default_factory=dict)
    done: dict[int, Part] = field(default_factory=dict)
    """Uploaded parts not yet journaled: they wait for every lower part (no gaps)."""
    create: Future[dict[str, Any]] | None = None
    final: Future[dict[str, Any]] | None = None
    """The PutObject or CompleteMultipartUpload that finishes the file."""
    final_size: int = 0
    closed: bool = False
    """The file's end is decided (`end`); it only uploads from here on."""
    end: int = 0
    implied: bool = False
    """The end follows from the data alone (period change, file_max): a replay cuts it at the
    same line without the journal, so it needs no journal write of its own."""
    end_saved: bool = False
    """The journal's active entry holds this file's end."""

    @property
    def multipart(self) -> bool:
        return bool(self.upload_id or self.create or self.queued or self.flights or self.parts)

    def futures(self) -> list[Future[Any]]:
        found: list[Future[Any]] = [fl.future for fl in self.flights.values()]
        found += [x for x in (self.create, self.final) if x is not None]
        return found


def _line_cut(data: bytes, start: int, target: int) -> int:
    """The line boundary at or before `target` (past `start`); a longer line is taken whole."""
    if target >= len(data):
        return len(data)
    nl = data.rfind(b"\n", start, target)
    if nl >= start:
        return nl + 1
    return data.index(b"\n", target) + 1


class S3Sink:
    """Delivers one endpoint's spool to S3 files (see the module docstring); a `Sink`.

    Not thread-safe: one worker thread uses it at a time. With an `io_executor`, AWS calls run
    there (up to `parts_in_flight` parts at once, within the process-wide `budget`) and their
    results are taken in by the next `feed`/`pump`/`flush`; `wake` is called (from an io thread)
    whenever one finishes. Without one, every call is made inline (tools and tests).
    """

    kind = "s3"

    def __init__(
        self,
        endpoint: S3Endpoint,
        clients: AwsClients,
        state_dir: Path,
        *,
        uid_prefix: str,
        clock: Callable[[], float] = time.time,
        hostname: str = socket.gethostname(),
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        part_size: int = DEFAULT_PART_SIZE,
        member_size: int = DEFAULT_MEMBER_SIZE,
        backoff: Backoff | None = None,
        pid: int | None = None,
        io_executor: Executor | None = None,
        wake: Callable[[], None] | None = None,
        parts_in_flight: int = DEFAULT_PARTS_IN_FLIGHT,
        budget: InflightBudget | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if not 1024 <= member_size <= part_size:
            raise ValueError("member_size must be from 1 KiB to part_size")
        if parts_in_flight < 1:
            raise ValueError("parts_in_flight must be at least 1")
        self.endpoint = endpoint
        self.state_dir = Path(state_dir)
        self.uid_prefix = uid_prefix
        self.part_size = part_size
        self.member_size = member_size
        self.stats = S3SinkStats()
        self._clients = clients
        self._clock = clock
        self._hostname = hostname
        self._stop = stop
        self._sleep = sleep
        # No retry loop of our own by default: botocore retries a call, and the worker's one
        # backoff policy retries the step (without holding a thread while it waits).
        self._backoff = backoff or Backoff(max_attempts=1)
        self._pid = stable_pid(uid_prefix) if pid is None else pid
        self._codec = endpoint.codec()
        self._pgp_key = endpoint.pgp_key
        self._put_args = endpoint.put_args()
        self._region = endpoint.effective_region
        self._s3: BaseClient | None = None
        self._journal = Journal(self.state_dir)
        self._incarnation = hashlib.sha256(
            (uid_prefix + "\n" + endpoint.model_dump_json()).encode()
        ).hexdigest()[:32]
        self._state = JournalState(incarnation=self._incarnation)
        self._io = io_executor
        self._wake = wake or (lambda: None)
        self.parts_in_flight = parts_in_flight
        self._budget = budget or shared_budget()
        self._budget_wait = False
        """A body of the first file found no room in the budget: read no more until it goes up
        (its release wakes us), so a starved sink holds no more parts than it already cut."""
        self._file: _OpenFile | None = None
        """The file lines are added to (None between files)."""
        self._files: deque[_OpenFile] = deque()
        """Files not yet complete, in order; only the first (the one the journal describes)
        makes AWS calls, the others build in memory behind it."""
        self._plan: ActiveFile | None = None
        self._pos: int | None = None
        self._recovered = False
        self._failed = False
        self._spool_committed = 0
        self.lost: list[tuple[int, int, str]] = []
        """(start, end, why) of lines that were in a multipart upload that vanished (aborted
        outside logferry, e.g. by a lifecycle rule shorter than the period) after the spool
        had released them. Never silent: the worker shows each one as an endpoint error."""

    # --- public API ---------------------------------------------------------------------------

    @property
    def durable_offset(self) -> int:
        """Every byte below this offset is inside a completed S3 object."""
        durable = self._state.durable
        return self._state.committed if durable is None else max(durable, 0)

    @property
    def durable(self) -> int:
        """Position below which every line is in S3: in a completed object, or in an uploaded
        part the journal holds (`open()` completes or resumes that upload after a crash), so
        the spool keeps only what is not yet in S3. A PGP file is one message, uploaded only
        when it closes: its lines count only once the object is complete."""
        done = self.durable_offset
        active = self._state.active
        if active is not None and active.upload_id and active.parts and not active.pgp:
            return max(done, active.parts[-1].end)
        return done

    # --- the Sink interface (see sinks.base) ---------------------------------------------------

    def open(self, committed: int = 0) -> int:
        """`recover()`, knowing the spool's committed position (data below it is gone)."""
        self._state.committed = max(self._state.committed, committed)
        self._spool_committed = committed
        return max(self.recover(), committed)

    def wants_data(self) -> bool:
        """False while this endpoint holds `parts_in_flight` parts (or their bytes) that are
        queued or in flight: the worker stops reading until `wake` says one finished."""
        if self._io is None:
            return True
        if self._budget_wait and self._files:
            return False
        parts = 0
        held = 0
        for f in self._files:
            parts += len(f.queued) + len(f.flights)
            held += sum(len(q[1]) for q in f.queued) + sum(x.size for x in f.flights.values())
            if f.closed:
                held += len(f.buf)
        return parts < self.parts_in_flight and held < self.parts_in_flight * self.part_size

    def pump(self, *, caught_up: bool) -> float | None:
        """Take in finished calls, start what may start, and close the open file once its
        period has ended (only when caught up: while a backlog drains, files close at the
        data's own period boundaries). Returns the seconds until the open file's period ends
        (or `IN_FLIGHT_POLL` while calls are in flight; they `wake` the worker when they
        finish), so the worker sleeps instead of polling."""
        self._ready()
        self._guarded(self._advance)
        f = self._file
        remaining: float | None = None
        if f is not None and f.boundary is None and caught_up:
            remaining = self._period_remaining(f)
            if remaining <= 0:
                self._guarded(lambda: self._close(f, implied=False))
                remaining = None
        if self._in_flight():
            remaining = IN_FLIGHT_POLL if remaining is None else min(remaining, IN_FLIGHT_POLL)
        return remaining

    def _in_flight(self) -> bool:
        # A body waiting for budget counts: its wake may come from another endpoint's call.
        return self._budget_wait or any(f.futures() or f.queued for f in self._files)

    def holds_data(self) -> bool:
        """Lines not yet durable, or a closed file whose last calls are still running (the
        worker must keep pumping until its completion is taken in and journaled)."""
        if any(f.closed for f in self._files):
            return True
        return self._pos is not None and self.durable < self._pos

    def counters(self) -> SinkCounters:
        return SinkCounters(units=self.stats.objects, records=0, retries=self.stats.retries)

    def status(self) -> dict[str, Any]:
        f = self._file
        return {
            "state": self.stats.state,
            "open_file": f.key if f else None,
            "open_file_parts": len(f.parts) if f else 0,
            "files_uploading": sum(1 for x in self._files if x.closed),
            "parts_in_flight": sum(len(x.flights) for x in self._files),
            "waiting_for_upload_budget": self._budget_wait,
            "last_key": self.stats.last_key,
            "parts_uploaded": self.stats.parts,
            "bytes_uploaded": self.stats.bytes_out,
            "aborted_uploads": self.stats.aborted_uploads,
            "lost_ranges": list(self.lost),
        }

    @property
    def journal_fsyncs(self) -> int:
        """fsync calls the journal made so far (benchmarks and tests count them per object)."""
        return self._journal.fsyncs

    @property
    def open_file(self) -> str | None:
        """Key of the file being built, if any (for status pages)."""
        return self._file.key if self._file else None

    def recover(self) -> int:
        """Finish, resume or abort what the journal describes; return the offset to feed from.

        The caller feeds chunks starting at or before the returned offset (a chunk straddling
        it is fine: its prefix is skipped). Raises SetupError (e.g. AbortMultipartUpload denied)
        with the journal untouched, so a later call can finish the job.
        """
        self._quiesce()
        self._discard_memory()
        self._failed = True  # until this succeeds
        self._remove_temp_files()
        loaded = self._journal.load()
        journaled = loaded.active.upload_id if loaded and loaded.active else None
        self._abort_unjournaled_uploads(keep=journaled)
        state = loaded or JournalState(incarnation=self._incarnation)
        changed = state.incarnation != self._incarnation
        active = state.active
        resume_at: int | None = None
        if (
            active is not None
            and active.upload_id is not None
            and changed
            and active.parts
            and not active.pgp
        ):
            # Its parts hold lines the spool has already released: finish the object as it
            # is (old settings) and start the rest under the new ones.
            self._complete(active.key, active.upload_id, active.parts)
            state.durable = active.parts[-1].end
            state.active = active = None
            self._save(state)
            self.stats.objects += 1
            self._success(None)
        if active is not None:
            if active.upload_id is not None and (active.pgp or changed):
                self._abort(active)  # an OpenPGP message / other settings: cannot be continued
                active.upload_id, active.parts = None, []
                self._save(state)
            if active.upload_id is not None:
                resume_at = self._resume(state, active)
            elif changed:
                resume_at = active.start  # rebuilt with the new settings (and new keys)
                state.active = None
            else:
                resume_at = active.start
                self._plan = active  # rebuild [start, end) under the same key
        state.incarnation = self._incarnation
        self._state = state
        if loaded is None or changed:
            self._save(state)
        if resume_at is None:
            resume_at = self.durable_offset
        self._pos = resume_at if (loaded is not None or resume_at) else None
        self._recovered = True
        self._failed = False
        return resume_at

    def feed(self, chunk: Chunk) -> None:
        """Add a chunk (in spool order; bytes below the resume offset are skipped)."""
        self._ready()
        try:
            self._feed(chunk)
            self._advance()
        except BaseException:
            self._failed = True
            raise

    def tick(self) -> None:
        """Close the open file if its period has ended by `clock()`."""
        self._ready()
        f = self._file
        if f is None or f.boundary is not None:
            return
        if self._period_remaining(f) <= 0:
            self._guarded(lambda: self._close(f, implied=False))

    def _period_remaining(self, f: _OpenFile) -> float:
        """Seconds until `f`'s period ends by `clock()`; 0 when it has ended, and also when
        its period starts more than a period ahead of the clock: its lines were stamped while
        the wall clock was ahead (a step later corrected), and waiting for real time to reach
        that period would hold them back for as long as the clock was wrong."""
        now = self._clock()
        period = self.endpoint.period
        if f.period_start - now > period:
            return 0.0
        return f.period_start + period - now

    def flush(self) -> None:
        """Close the open file now (shutdown, idle flush). A file being rebuilt to a journaled
        boundary stays open: closing it early would change its byte range. With an io pool
        the uploads finish in the background: pump until `holds_data()` is False."""
        self._ready()
        f = self._file
        if f is not None and f.boundary is None:
            self._guarded(lambda: self._close(f, implied=False))
        else:
            self._guarded(self._advance)

    def committed(self, offset: int) -> None:
        """The caller persisted its spool commit up to `offset` (kept in memory; written with
        the next journal update)."""
        self._state.committed = max(self._state.committed, offset)

    def discard(self) -> None:
        """The endpoint is being deleted: abort its open multipart upload (never leave one
        billing in the customer's bucket) and forget the journal. Unsent data is dropped with
        the endpoint. Raises (journal kept) when the abort fails, so it can be retried."""
        self._quiesce()
        self._discard_memory()
        self._remove_temp_files()
        self._abort_unjournaled_uploads(keep=None)
        state = self._journal.load()
        if state is not None and state.active is not None and state.active.upload_id:
            self._abort(state.active)
        if self.state_dir.is_dir():
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def healthcheck(self) -> None:
        """Prove the role can write here and clean up after itself: CreateMultipartUpload under
        the path prefix (with the endpoint's headers: SSE, storage class, ACL), then
        AbortMultipartUpload. Needs no permission beyond the guide's policy; raises SetupError
        naming the missing permission."""
        key = f"{self.endpoint.key_prefix}.logferry-healthcheck-{uuid.uuid4().hex[:12]}"
        upload_id, note = self._create_upload(key)
        make_durable(note)  # the probe stays open for a round trip: keep it past a power loss
        try:
            self._call("AbortMultipartUpload", Key=key, UploadId=upload_id)
        except SetupError as exc:
            exc.fix = (
                f"{exc.fix} Then remove the probe: aws s3api abort-multipart-upload --bucket "
                f"{self.endpoint.bucket_name} --key '{key}' --upload-id {upload_id}"
            )
            self._error(exc)
            raise
        Path(note).unlink(missing_ok=True)
        self._success(None)

    def _create_upload(self, key: str) -> tuple[str, str]:
        """CreateMultipartUpload, and note `(key, upload ID)` on disk the moment the answer
        arrives (any thread): the journal learns the ID later, on the delivery thread, and a
        crash or failure in between must leave a note recovery aborts, not an upload nobody
        can name (finding it again would need s3:ListBucketMultipartUploads). Returns the ID
        and the note, which the caller removes once the journal holds the ID. Not fsynced: it
        survives a kill -9 (page cache); the journal's fsync follows within milliseconds."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        note = str(self.state_dir / f"{CREATED_PREFIX}{uuid.uuid4().hex[:16]}.json")
        upload_id = str(self._call("CreateMultipartUpload", Key=key, **self._put_args)["UploadId"])
        write_atomic(note, json.dumps({"key": key, "upload_id": upload_id}).encode(), durable=False)
        return upload_id, note

    def _abort_unjournaled_uploads(self, *, keep: str | None) -> None:
        """Abort every noted upload but `keep` (the journal's: resumed or aborted by the
        caller), then forget the notes. Raises (notes kept) when an abort fails."""
        try:
            # A note the crash caught before its rename is read too: complete, it names an
            # upload as well; torn, it is removed below.
            paths = [
                p
                for p in self.state_dir.iterdir()
                if p.name.startswith(CREATED_PREFIX) or p.name == LEGACY_PROBE_FILE
            ]
        except FileNotFoundError:
            return
        for path in paths:
            try:
                noted = json.loads(path.read_bytes())
                key, upload_id = str(noted["key"]), str(noted["upload_id"])
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # torn by the crash: write_atomic never leaves one
                continue
            if upload_id != keep:
                self._abort_upload(key, upload_id)
            path.unlink(missing_ok=True)

    # --- feeding ------------------------------------------------------------------------------

    def _ready(self) -> None:
        if not self._recovered:
            self.recover()
        if self._failed:
            raise SinkNeedsRecovery(
                "the S3 sink failed earlier; call recover() and re-feed from its offset"
            )

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException:
            self._failed = True
            raise

    def _feed(self, chunk: Chunk) -> None:
        data = chunk.data
        pos = self._pos
        if pos is not None and chunk.end <= pos:
            return
        i = 0
        if pos is not None and chunk.start < pos:
            i = pos - chunk.start
            if data[i - 1] != _NEWLINE:
                raise ValueError(
                    f"resume offset {pos} is not at a line boundary of chunk "
                    f"[{chunk.start}, {chunk.end}): the spool no longer matches the journal"
                )
        self._pos = chunk.end
        period_start = self.endpoint.period_start(chunk.accepted_at)
        file_max = self.endpoint.file_max_bytes
        n = len(data)
        while i < n:
            off = chunk.start + i
            f = self._file
            if f is not None and f.boundary is None and f.period_start != period_start:
                self._close(f, implied=True)
                f = None
            if f is None:
                f = self._open(off, period_start)
            limit = n if f.boundary is None else min(n, f.boundary - chunk.start)
            if limit <= i:
                raise ValueError(
                    f"chunk [{chunk.start}, {chunk.end}) passes the journaled end {f.boundary} "
                    f"of {f.key}: the spool no longer matches the journal"
                )
            j = _line_cut(data, i, min(limit, i + self.member_size))
            piece = data[i:j]
            framed = self._frame(piece, chunk.accepted_at)
            full = False
            if f.boundary is None and file_max and f.framed + len(framed) > file_max:
                cut = self._fit(piece, file_max - f.framed, chunk.accepted_at)
                if cut == 0 and f.framed > 0:
                    self._close(f, implied=True)
                    continue
                cut = cut or piece.index(b"\n") + 1  # one oversized line: a file of its own
                piece = piece[:cut]
                framed = self._frame(piece, chunk.accepted_at)
                full = True
            self._add(f, framed, off + len(piece))
            self.stats.bytes_in += len(piece)
            i += len(piece)
            if full or f.must_close or (f.boundary is not None and f.data_end >= f.boundary):
                self._close(f, implied=True)

    def _frame(self, piece: bytes, accepted_at: float) -> bytes:
        return frame(
            piece,
            self.endpoint.message_type,
            hostname=self._hostname,
            service=self.endpoint.name,
            accepted_at=accepted_at,
            pid=self._pid,
        )

    def _fit(self, piece: bytes, room: int, accepted_at: float) -> int:
        """Bytes of `piece` (whole lines) whose framed form fits in `room`."""
        if room <= 0:
            return 0
        if self.endpoint.message_type == "blank":
            return piece.rfind(b"\n", 0, room) + 1
        ends: list[int] = []
        at = piece.find(b"\n")
        while 0 <= at < room:  # framing only adds bytes: lines past `room` cannot fit
            ends.append(at + 1)
            at = piece.find(b"\n", at + 1)
        lo, hi = 0, len(ends)  # invariant: ends[:lo] fit, ends[hi:] do not
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._frame(piece[: ends[mid]], accepted_at)) <= room:
                lo = mid + 1
            else:
                hi = mid
        return ends[lo - 1] if lo else 0

    def _open(self, off: int, period_start: int) -> _OpenFile:
        plan = self._plan
        if plan is not None and off > plan.start:
            self._plan = plan = None  # the caller fed past it: nothing to rebuild
        if plan is not None and off == plan.start:
            self._plan = None
            f = _OpenFile(key=plan.key, start=off, period_start=plan.period_start)
            f.boundary = plan.end
        else:
            uid = f"{self.uid_prefix}{off:016x}"
            f = _OpenFile(
                key=self.endpoint.object_key(period_start, uid),
                start=off,
                period_start=period_start,
            )
        f.data_end = f.sealed_end = off
        if self._pgp_key is not None:
            f.spill_path = self.state_dir / f"{f.start:016x}{_SPILL_SUFFIX}"
            self.state_dir.mkdir(parents=True, exist_ok=True)
            f.spill = open(f.spill_path, "w+b")  # noqa: SIM115 - closed in _close/_discard
            f.pgp = True
        self._file = f
        self._files.append(f)
        return f

    def _add(self, f: _OpenFile, framed: bytes, end: int) -> None:
        f.raw.append(framed)
        f.raw_size += len(framed)
        f.framed += len(framed)
        f.data_end = end
        if f.raw_size >= self.member_size:
            self._seal(f)
            if f.spill is None and len(f.buf) >= self.part_size:
                if f.next_number >= MAX_PARTS:
                    f.must_close = True  # the rest becomes the final part
                else:
                    self._cut_part(f)

    def _seal(self, f: _OpenFile) -> None:
        """Compress the pending lines into one member, on the shared compression pool.

        Members are independent, so up to MAX_PENDING_MEMBERS compress in parallel while this
        thread keeps framing; they are appended strictly in order (`_take`), and `sealed_end`
        only ever covers members already in `buf`, which is what the journal records.
        """
        if not f.raw:
            return
        data = f.raw[0] if len(f.raw) == 1 else b"".join(f.raw)
        f.raw.clear()
        f.raw_size = 0
        future: Future[bytes]
        if self._codec.name == "none":
            future = Future()
            future.set_result(data)
        else:
            future = _compress_pool().submit(self._codec.compress, data)
        f.pending.append((future, f.data_end, f.framed))
        # A fixed window (not "whatever is done") keeps part boundaries a function of the data.
        limit = 0 if self._codec.name == "none" else MAX_PENDING_MEMBERS
        while len(f.pending) > limit:
            self._take(f)

    def _take(self, f: _OpenFile) -> None:
        future, end, framed = f.pending.popleft()
        member = future.result()
        if f.spill is not None:
            f.spill.write(member)
        else:
            f.buf.append(member)
        f.sealed_end = end
        f.sealed_framed = framed

    def _drain(self, f: _OpenFile) -> None:
        while f.pending:
            self._take(f)

    # --- uploads ------------------------------------------------------------------------------

    def _active(self, f: _OpenFile, end: int | None) -> ActiveFile:
        return ActiveFile(
            key=f.key,
            start=f.start,
            period_start=f.period_start,
            end=end,
            upload_id=f.upload_id,
            parts=list(f.parts),
            pgp=f.pgp,
        )

    def _save(self, state: JournalState | None = None, *, sync: bool = True) -> None:
        self._journal.save(state or self._state, sync=sync)

    def _journal_file(self, f: _OpenFile) -> None:
        """Journal `f` as the active file (fsynced): its upload, parts and decided end."""
        self._state.active = self._active(f, f.end if f.closed else f.boundary)
        self._save()
        if f.closed:
            f.end_saved = True

    def _cut_part(self, f: _OpenFile) -> None:
        """`buf` is a full part: queue it (it goes up once it is first in line and a slot and
        the budget allow; inline without an io pool)."""
        f.queued.append((f.next_number, f.buf.take(), f.sealed_end, f.sealed_framed))
        f.next_number += 1
        self._advance()

    def _close(self, f: _OpenFile, *, implied: bool) -> None:
        """Decide `f`'s end at its data end; its last part / PutObject and the completion go up
        once every earlier file is complete. `implied`: the data alone decides this end."""
        self._seal(f)
        self._drain(f)
        f.closed = True
        f.end = f.data_end
        f.implied = implied or f.boundary is not None
        f.end_saved = f.boundary is not None  # a journaled boundary: already in the journal
        if f.multipart and f.buf:
            f.queued.append((f.next_number, f.buf.take(), f.sealed_end, f.sealed_framed))
            f.next_number += 1
        if self._file is f:
            self._file = None
        self._advance()

    def _advance(self) -> None:
        """Move the first file's uploads forward without waiting: take in finished calls
        (journal, in part order), start what may start, finish files whose last call is done."""
        while self._files:
            f = self._files[0]
            while self._step_file(f):
                pass
            if f.final is None or not f.final.done():
                return
            f.final.result()  # raises the call's error
            if not f.upload_id:
                self.stats.bytes_out += f.final_size
            self._files.popleft()
            # A single PutObject needs no fsync here: the worker's spool commit (fsynced) at
            # `durable` is what a restart resumes from, and a replay before it rewrites the
            # same key with the same lines. A multipart completion is journaled durably (a
            # restart must not try to resume an upload that no longer exists).
            self._finish(f.key, f.end, sync=bool(f.upload_id))

    def _step_file(self, f: _OpenFile) -> bool:
        """One move for the first file; True when something changed (try again)."""
        if f.final is not None:
            return False
        if f.pgp:
            if f.closed:
                self._close_pgp(f, f.end)
                f.final = _done_future({})
            return False
        changed = False
        if f.create is not None and f.create.done():
            future, f.create = f.create, None
            created = future.result()
            f.upload_id = created["UploadId"]
            self._journal_file(f)  # before any part: a crash from here on aborts or resumes it
            os.unlink(created["note"])
            changed = True
        for number, flight in list(f.flights.items()):
            if flight.future.done():
                del f.flights[number]
                etag = flight.future.result()["ETag"]
                f.done[number] = Part(number, etag, flight.end, flight.framed)
                self.stats.parts += 1
                self.stats.bytes_out += flight.size
        moved = False
        while len(f.parts) + 1 in f.done:  # `durable` never passes a part still in flight
            f.parts.append(f.done.pop(len(f.parts) + 1))
            moved = True
        if moved:
            self._journal_file(f)  # one journal write for every part finished since the last
            changed = True
        if f.queued and f.create is None:
            if f.upload_id is None:
                key = f.key
                f.create = self._submit(
                    lambda: dict(zip(("UploadId", "note"), self._create_upload(key), strict=True))
                )
                return True
            while f.queued and len(f.flights) < self.parts_in_flight:
                number, body, end, framed = f.queued[0]
                if self._io is not None and not self._budget.acquire(len(body), self._wake):
                    self._budget_wait = True
                    break
                self._budget_wait = False
                f.queued.popleft()
                f.flights[number] = _Flight(
                    self._submit(self._part_call(f, number, body), budget=len(body)),
                    end,
                    framed,
                    len(body),
                )
                changed = True
        if not f.closed or f.create is not None or f.queued or f.flights or f.done:
            return changed
        if not f.end_saved and (f.upload_id or not f.implied):
            # An end the data does not imply (flush, period over by the clock) is journaled
            # before the upload that ends the file: a replay then cuts the file at the same
            # line, so the object is rewritten byte for byte, never with more lines.
            self._journal_file(f)
        if f.upload_id:
            upload_id, parts = f.upload_id, list(f.parts)
            f.final = self._submit(lambda: self._complete(f.key, upload_id, parts))
        else:
            size = len(f.buf)
            if self._io is not None and not self._budget.acquire(size, self._wake):
                self._budget_wait = True  # the same budget as parts: one bound for all bodies
                return False
            self._budget_wait = False
            body = f.buf.take_bytes()
            f.final_size = size
            f.final = self._submit(
                lambda: self._call("PutObject", Key=f.key, Body=body, **self._put_args),
                budget=size,
            )
        return True

    def _part_call(
        self, f: _OpenFile, number: int, body: bytearray
    ) -> Callable[[], dict[str, Any]]:
        key, upload_id = f.key, f.upload_id

        def upload() -> dict[str, Any]:
            return self._call(
                "UploadPart", Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )

        return upload

    def _submit(
        self, call: Callable[[], dict[str, Any]], *, budget: int = 0
    ) -> Future[dict[str, Any]]:
        """Run `call` on the io pool (inline without one); its errors surface when taken in."""
        if self._io is None:
            future: Future[dict[str, Any]] = Future()
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)
            return future
        self._client()  # created here, not concurrently in io threads
        future = self._io.submit(call)
        budget_obj, wake = self._budget, self._wake

        def finished(_: Future[dict[str, Any]]) -> None:
            if budget:
                budget_obj.release(budget)  # wakes sinks waiting for room, this one included
            wake()

        future.add_done_callback(finished)
        return future

    def _quiesce(self) -> None:
        """Wait for calls still in flight (after a failure, before recovery or discard): a late
        UploadPart must not land after its part number was uploaded again."""
        pending = [x for f in self._files for x in f.futures()]
        if pending:
            wait_futures(pending)

    def _complete(self, key: str, upload_id: str, parts: list[Part]) -> dict[str, Any]:
        return self._call(
            "CompleteMultipartUpload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
        )

    def _finish(self, key: str, end: int, *, sync: bool = True) -> None:
        self._state.durable = end
        self._state.active = None
        self._save(sync=sync)
        self.stats.objects += 1
        self._success(key)

    def _close_pgp(self, f: _OpenFile, end: int) -> None:
        assert f.spill is not None and f.spill_path is not None and self._pgp_key is not None
        f.spill.close()
        f.spill = None
        encrypted = f.spill_path.with_suffix(_ENCRYPTED_SUFFIX)
        try:
            try:
                _encrypt_file(f.spill_path, encrypted, self._pgp_key)
            except InputError as exc:  # e.g. the key expired since the endpoint was saved
                self.stats.last_error = LastError(
                    "PublicKeyUnusable", exc.message, exc.fix, self._clock(), transient=False
                )
                self.stats.state = "error"
                raise
            size = encrypted.stat().st_size
            f_active = self._active(f, end)
            f_active.pgp = True
            self._state.active = f_active
            self._save()
            with open(encrypted, "rb") as source:
                if size < self.part_size:
                    body = source.read()
                    self._call("PutObject", Key=f.key, Body=body, **self._put_args)
                    self.stats.bytes_out += len(body)
                    return
                f.upload_id, note = self._create_upload(f.key)
                f_active.upload_id = f.upload_id
                self._save()
                os.unlink(note)
                while block := source.read(self.part_size):
                    number = len(f.parts) + 1
                    etag = self._call(
                        "UploadPart",
                        Key=f.key,
                        UploadId=f.upload_id,
                        PartNumber=number,
                        Body=block,
                    )["ETag"]
                    f.parts.append(Part(number, etag, f.start, 0))
                    f_active.parts = list(f.parts)
                    self._save()
                    self.stats.parts += 1
                    self.stats.bytes_out += len(block)
                self._complete(f.key, f.upload_id, f.parts)
        finally:
            f.spill_path.unlink(missing_ok=True)
            encrypted.unlink(missing_ok=True)

    # --- recovery -----------------------------------------------------------------------------

    def _discard_memory(self) -> None:
        for f in self._files:
            if f.spill is not None:
                f.spill.close()
        self._files.clear()
        self._file = None
        self._plan = None
        self._pos = None
        self._budget_wait = False

    def _remove_temp_files(self) -> None:
        if not self.state_dir.is_dir():
            return
        for path in self.state_dir.iterdir():
            if path.suffix in (_SPILL_SUFFIX, _ENCRYPTED_SUFFIX):
                path.unlink(missing_ok=True)

    def _abort(self, active: ActiveFile) -> None:
        assert active.upload_id is not None
        self._abort_upload(active.key, active.upload_id)

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._call("AbortMultipartUpload", Key=key, UploadId=upload_id)
        except TransientError as exc:
            if exc.code != "NoSuchUpload":
                raise
        else:
            self.stats.aborted_uploads += 1

    def _resume(self, state: JournalState, active: ActiveFile) -> int:
        """Continue `active`'s multipart upload (or complete it); restart it if it is gone."""
        assert active.upload_id is not None
        try:
            if active.end is not None and active.resume_offset >= active.end and active.parts:
                self._complete(active.key, active.upload_id, active.parts)
                state.durable = active.end
                state.active = None
                self._save(state)
                self.stats.objects += 1
                self._success(active.key)
                return active.end
            # The only way to test an upload with the allowed calls: an empty UploadPart at the
            # next part number (overwritten by the real part; never listed when completing).
            self._call(
                "UploadPart",
                Key=active.key,
                UploadId=active.upload_id,
                PartNumber=len(active.parts) + 1,
                Body=b"",
            )
        except AwsError as exc:
            if exc.code not in _REWRITE_CODES:
                raise
            if exc.code != "NoSuchUpload":
                self._abort(active)  # it exists but cannot be completed as journaled
            released = max(state.committed, self._spool_committed)
            if active.parts and released > active.start:
                lost_end = min(released, active.parts[-1].end)
                self.lost.append(
                    (
                        active.start,
                        lost_end,
                        f"multipart upload {active.upload_id} of {active.key} is gone "
                        f"({exc.code}); its parts held spool positions {active.start}.."
                        f"{lost_end}, which were already released",
                    )
                )
            active.upload_id, active.parts = None, []
            self._save(state)
            self._plan = active  # rebuild [start, end) from the spool under the same key
            return active.start
        f = _OpenFile(
            key=active.key,
            start=active.start,
            period_start=active.period_start,
            boundary=active.end,
            data_end=active.resume_offset,
            framed=active.framed,
            sealed_end=active.resume_offset,
            sealed_framed=active.framed,
            upload_id=active.upload_id,
            parts=list(active.parts),
            next_number=len(active.parts) + 1,
        )
        self._file = f
        self._files.append(f)
        return active.resume_offset

    # --- AWS calls ----------------------------------------------------------------------------

    def _client(self) -> BaseClient:
        if self._s3 is None:
            # A `domain` comes with the clients' target (registry): AwsClients then adds the
            # S3-compatible settings and the address guard, exactly as for the role check.
            url = self.endpoint.endpoint_url
            if url is not None and self._clients.target.customer_url("s3") != url:
                raise ValueError(f"clients for S3 domain {url!r} must be made for that target")
            self._s3 = self._clients.client("s3", self._region)
            self._s3.meta.events.register_last(
                "before-call.s3", _put_without_expect, unique_id=_PUT_HANDLER
            )  # idempotent (unique_id): the sinks of one role may share a client
        return self._s3

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        method = getattr(self._client(), _snake(operation))
        kwargs["Bucket"] = self.endpoint.bucket_name
        target = f"s3://{self.endpoint.bucket_name}/{kwargs.get('Key', '')}"

        def call() -> dict[str, Any]:
            return method(**kwargs)  # type: ignore[no-any-return]

        def classify_error(exc: BaseException) -> AwsError:
            return classify(
                exc,
                service="s3",
                operation=operation,
                region=self._region,
                resource=self.endpoint.resource_arn,
                target=target,
            )

        try:
            return retry_call(
                call,
                classify=classify_error,
                policy=self._backoff,
                stop=self._stop,
                sleep=self._sleep,
                on_retry=self._on_retry,
                refresh=self._refresh,
                final=lambda e: e.code in _NO_RETRY_CODES,
            )
        except AwsError as exc:
            if exc.code in _REWRITE_CODES:
                raise  # recover() rewrites the file from the spool: not an endpoint problem
            if isinstance(exc, SetupError) and self.endpoint.acl and exc.code == "AccessDenied":
                exc.fix = (
                    f"{exc.fix} With acl set, the policy must also allow s3:PutObjectAcl "
                    f"on {self.endpoint.resource_arn}."
                )
            self._error(exc)
            raise

    def _on_retry(self, error: AwsError, delay: float) -> None:
        self.stats.retries += 1
        self.stats.state = "retrying"
        self.stats.last_error = LastError(
            error.code, error.message, error.fix, self._clock(), transient=True
        )

    def _refresh(self, error: AwsError) -> bool:
        """Expired session token: refresh refreshable credentials now, then retry at once."""
        if error.code not in REFRESH_CODES:
            return False
        creds = self._clients.session.get_credentials()
        force = getattr(creds, "force_refresh", None)
        if callable(force):
            force()
        elif isinstance(creds, RefreshableCredentials):
            with creds._refresh_lock:
                creds._protected_refresh(is_mandatory=True)
        return True

    def _error(self, exc: AwsError) -> None:
        transient = isinstance(exc, TransientError)
        self.stats.last_error = LastError(
            exc.code, exc.message, exc.fix, self._clock(), transient=transient
        )
        self.stats.state = "retrying" if transient else "error"

    def _success(self, key: str | None) -> None:
        self.stats.state = "ok"
        self.stats.last_success = self._clock()
        if key is not None:
            self.stats.last_key = key


def _done_future(result: dict[str, Any]) -> Future[dict[str, Any]]:
    future: Future[dict[str, Any]] = Future()
    future.set_result(result)
    return future


_PUT_HANDLER: Final = "logferry-put-without-expect"


def _put_without_expect(model: Any, params: dict[str, Any], **_: Any) -> None:
    """Send a PutObject's body with its headers instead of after `100 Continue`.

    botocore asks for `Expect: 100-continue` on a PutObject (it turns a bytes body into a file,
    and every file-like body gets the header). That costs a round trip to S3 before the body
    goes out, and botocore reads the interim answer byte by byte on an unbuffered socket file:
    measured against the emulator, 27 socket reads and a poll per PutObject instead of 1, each a
    GIL hand-off, and ≈ 6 % of the call's Python work. Our objects are at most one part's size,
    and our UploadPart bodies (bytearrays, which botocore leaves as they are) never carried
    the header either.
    """
    if model.name == "PutObject":
        params.get("headers", {}).pop("Expect", None)


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")


def _encrypt_file(source: Path, target: Path, key: pgp.PublicKey) -> None:
    """Stream-encrypt `source` to `target` as one binary OpenPGP message (memory stays flat
    whatever the file size; `pgp.encrypt` would hold the whole file twice)."""
    try:
        pysequoia.encrypt_file(str(source), str(target), [key.cert], armor=False)
    except Exception as exc:
        raise InputError(
            "public_key", f"cannot encrypt to key {key.fingerprint} ({exc}).".splitlines()[0]
        ) from None


__all__ = ["LastError", "S3Sink", "S3SinkStats", "SinkNeedsRecovery", "stable_pid"]
