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

Error handling (docs/architecture.md, "Sinks"): errors are classified by `sinks.aws_errors`;
botocore retries a call, the worker's one backoff policy (`sinks.backoff` via `sinks.base`)
retries the step, and a `backoff` given here (tools) retries the call too. A setup error
(AccessDenied, NoSuchBucket, KMS, storage class…) puts the sink in the error state with the AWS
code and a fix and is raised. After *any* exception from `feed`/`tick`/`flush` the
in-memory file is discarded: the caller calls `recover()` again and re-feeds from its result
(the data never left the spool, so nothing is dropped).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Final

from botocore.client import BaseClient

from logferry.aws.clients import AwsClients
from logferry.aws.write_probe import S3Target, probe_s3_write
from logferry.errors import AwsError
from logferry.sinks.backoff import Backoff
from logferry.sinks.base import SinkCounters
from logferry.sinks.framing import stable_pid
from logferry.sinks.s3 import client, fencing, files, pgp_upload, recovery, upload
from logferry.sinks.s3.files import (
    DEFAULT_MEMBER_SIZE,
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    OpenFile,
)
from logferry.sinks.s3.stats import S3SinkStats, SinkNeedsRecovery
from logferry.sinks.s3.upload_notes import UploadNotes, upload_notes
from logferry.sinks.s3_budget import InflightBudget, shared_budget
from logferry.sinks.s3_config import S3Endpoint
from logferry.sinks.s3_journal import (
    ActiveFile,
    Journal,
    JournalDocuments,
    JournalState,
    JournalStore,
    journal_store,
)
from logferry.spool.chunk import Chunk

DEFAULT_PARTS_IN_FLIGHT: Final = 4
IN_FLIGHT_POLL: Final = 1.0
"""While calls are in flight `pump` asks to be called again after at most this long, a safety
net should a `wake` be missed; endpoints with nothing in flight never poll."""


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
        journal: JournalStore | JournalDocuments | None = None,
        holds: Callable[[], bool] | None = None,
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
        self._holds = holds
        """SinkContext.holds: asked before every attempt of every S3 call (`client._call`)."""
        self._journal: JournalStore = journal_store(journal, self.state_dir)
        """Where the crash journal lives: the local file under `state_dir` unless given (the
        NATS backend keeps it in the endpoint's KV record; `state_dir` is then scratch)."""
        self._notes: UploadNotes
        self._note_stores: tuple[UploadNotes, ...]
        self._notes, self._note_stores = upload_notes(journal, self.state_dir)
        """Where a created upload's ID waits for the journal (beside it: the KV record with
        NATS), and every place recovery looks for such notes."""
        self._shared_journal = not isinstance(self._journal, Journal)
        """Another node may have written the journal (NATS): `recover` then completes its
        upload instead of resuming it (see there)."""
        self._saved_journal = False
        """This sink has saved the journal: a later `recover` of its own (after a failed
        call) may resume its own upload."""
        self._portable_sizes = (
            isinstance(self._journal, Journal) or endpoint.message_type == "blank"
        )
        """A file_max_bytes cut is the same on replay: framed sizes hold the delivering host's
        name (classic/loggly/logplex), the same for the local journal's replay but not for a
        shared journal's, which another node may replay. Otherwise that end is journaled
        before the write that ends the file, like a flush's (see `upload._step_file`)."""
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
        self._file: OpenFile | None = None
        """The file lines are added to (None between files)."""
        self._files: deque[OpenFile] = deque()
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
            "already_complete": self.stats.already_complete,
            "unfenced": self.stats.unfenced,
            "lost_ranges": list(self.lost),
        }

    @property
    def journal_fsyncs(self) -> int:
        """fsync calls the journal made so far (benchmarks and tests count them per object)."""
        return int(getattr(self._journal, "fsyncs", 0))

    @property
    def open_file(self) -> str | None:
        """Key of the file being built, if any (for status pages)."""
        return self._file.key if self._file else None

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

    def _period_remaining(self, f: OpenFile) -> float:
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

    def healthcheck(self) -> None:
        """Prove the role can write here and clean up after itself: the one S3 write probe
        (`aws.write_probe`, the role check's too) with the endpoint's headers, through this
        sink's retrying `_call`. Needs no permission beyond the guide's policy; raises
        SetupError naming the missing permission."""
        key = f"{self.endpoint.key_prefix}.logferry-healthcheck-{uuid.uuid4().hex[:12]}"
        target = S3Target(
            self.endpoint.bucket_name,
            self.endpoint.key_prefix,
            self._region,
            put_args=tuple(sorted(self._put_args.items())),
        )
        notes: list[str] = []

        def noted(upload_id: str) -> None:
            # The probe stays open for a round trip: a kill -9 (or power loss) then leaves a
            # note recovery aborts, never an upload nobody can name.
            notes.append(self._note_created(key, upload_id, durable=True))

        try:
            probe_s3_write(self._call, target, key, created=noted)
        except AwsError as exc:
            self._error(exc)  # again: the probe words the fix more precisely than `_call`
            raise
        for note in notes:
            self._notes.remove(note)
        self._success(None)

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

    # --- methods defined by role in their own modules (see the package docstring) ---

    # files
    _feed = files._feed
    _frame = files._frame
    _fit = files._fit
    _open = files._open
    _add = files._add
    _seal = files._seal
    _take = files._take
    _drain = files._drain

    # upload
    _active = upload._active
    _save = upload._save
    _journal_file = upload._journal_file
    _cut_part = upload._cut_part
    _close = upload._close
    _advance = upload._advance
    _step_file = upload._step_file
    _part_call = upload._part_call
    _submit = upload._submit
    _quiesce = upload._quiesce
    _finish = upload._finish

    # fencing
    _fenced = fencing._fenced
    _complete = fencing._complete
    _put_object = fencing._put_object

    # pgp_upload
    _close_pgp = pgp_upload._close_pgp

    # recovery
    recover = recovery.recover
    discard = recovery.discard
    _create_upload = recovery._create_upload
    _note_created = recovery._note_created
    _keep_local_note = recovery._keep_local_note
    _abort_unjournaled_uploads = recovery._abort_unjournaled_uploads
    _discard_memory = recovery._discard_memory
    _remove_temp_files = recovery._remove_temp_files
    _abort = recovery._abort
    _abort_upload = recovery._abort_upload
    _resume = recovery._resume
    _complete_journaled = recovery._complete_journaled
    _completed_elsewhere = recovery._completed_elsewhere
    _rebuild = recovery._rebuild
    _give_up_upload = recovery._give_up_upload
    _abort_abandoned = recovery._abort_abandoned

    # client
    _client = client._client
    _call = client._call
    _on_retry = client._on_retry
    _refresh = client._refresh
    _error = client._error
    _success = client._success
