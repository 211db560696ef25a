"""Recovery: finish, resume or abort what the journal and the upload notes describe.

The recovery methods of `S3Sink` (functions taking the sink as `self`, bound in its class body
so that mypy checks them against its attributes). `recover()` returns the spool offset to re-
feed from; upload notes (`upload_notes`: files here, or the endpoint's KV record with NATS) name
multipart uploads the journal may not hold yet, so none is left billing in the customer's bucket
after a crash.

A journaled upload whose completion may already have happened (its end and every part
journaled: `ActiveFile.completing`) is completed again with `If-None-Match: *` (`fencing`): 200
or 412 both mean delivered. `NoSuchUpload` is the hard case, since no bucket read is allowed;
`_completed_elsewhere` says what the journal proves: logferry only ever completes or aborts such
an upload, and every abort it decides is journaled first (`JournalState.abandoned`), so absence
means completed — unless a lifecycle rule (never within a day of creation, `ActiveFile.created`)
or a person aborted it. While the spool still holds the file it is simply rebuilt under the same
key (the fence settles it); an upload older than a day is taken as delivered and reported as a
possibly lost range naming the key.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING, Final

from logferry.errors import AwsError, TransientError
from logferry.sinks.s3.client import REWRITE_CODES
from logferry.sinks.s3.fencing import ALREADY_COMPLETE, already_complete
from logferry.sinks.s3.files import ENCRYPTED_SUFFIX, SPILL_SUFFIX, OpenFile
from logferry.sinks.s3_journal import Abandoned, ActiveFile, JournalState

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from logferry.sinks.s3.sink import S3Sink

LIFECYCLE_PROOF_SECONDS: Final = 86_400 - 3_600
"""An upload younger than this cannot have been aborted by a lifecycle rule (S3's shortest
DaysAfterInitiation is 1 day), with an hour's margin for clocks of different nodes."""


def recover(self: S3Sink) -> int:
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
    self._abort_abandoned(state)
    changed = state.incarnation != self._incarnation
    # A shared journal (NATS) may have been written by another node, which may only be
    # paused, with an UploadPart half sent: such a part could still land in the upload and
    # replace a part this sink uploads under the same number. So its upload is never
    # resumed: it is completed with the journaled parts (a late part then meets
    # NoSuchUpload), and what follows goes into a new file. An upload this sink journaled
    # itself (a recover after one of its calls failed) is its own to resume.
    finish_now = changed or (self._shared_journal and not self._saved_journal)
    active = state.active
    resume_at: int | None = None
    if (
        active is not None
        and active.upload_id is not None
        and finish_now
        and active.parts
        and not active.pgp
    ):
        # Its parts hold lines the spool has already released: finish the object as it
        # is (old settings, or the previous owner's upload) and start the rest in a new one.
        # Its end is journaled first, as for every completion (what `_completed_elsewhere`
        # relies on).
        if active.end != active.parts[-1].end:
            active.end = active.parts[-1].end
            self._save(state)
        self._complete_journaled(state, active)
        active = state.active  # None once delivered; else rebuilt below (new settings)
    if active is not None:
        if active.upload_id is not None and (active.pgp or finish_now):
            # An OpenPGP message / other settings / another writer's: not continued.
            self._give_up_upload(state, active)
        if active.upload_id is not None:
            resume_at = self._resume(state, active)
        elif changed:
            resume_at = active.start  # rebuilt with the new settings (and new keys)
            state.active = None
            self._plan = None
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


def discard(self: S3Sink) -> None:
    """The endpoint is being deleted: abort its open multipart upload (never leave one
    billing in the customer's bucket) and forget the journal. Unsent data is dropped with
    the endpoint. Raises (journal kept) when the abort fails, so it can be retried."""
    self._quiesce()
    self._discard_memory()
    self._remove_temp_files()
    self._abort_unjournaled_uploads(keep=None)
    state = self._journal.load()
    if state is not None:
        self._abort_abandoned(state, save=False)
        if state.active is not None and state.active.upload_id:
            self._abort(state.active)
    self._journal.discard()
    if self.state_dir.is_dir():
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _create_upload(self: S3Sink, key: str) -> tuple[str, str]:
    """CreateMultipartUpload, and note `(key, upload ID)` the moment the answer arrives (any
    thread; `upload_notes`): the journal learns the ID later, on the delivery thread, and a
    crash or failure in between must leave a note recovery aborts, not an upload nobody can
    name. Returns the ID and the note's handle, which the caller removes once the journal
    holds the ID."""
    upload_id = str(self._call("CreateMultipartUpload", Key=key, **self._put_args)["UploadId"])
    return upload_id, self._note_created(key, upload_id)


def _note_created(self: S3Sink, key: str, upload_id: str, *, durable: bool = False) -> str:
    """Note a just-created upload (`upload_notes`); returns the note's handle.

    When no note can be kept (a read-only or full disk; NATS out of reach, or the endpoint
    taken over), the upload is aborted now, while its ID is in hand, rather than left empty in
    the bucket; the note's error is what the caller sees. When the abort cannot be sent either
    (this node's lease ran out while NATS was down: a fenced sink sends nothing), a shared note
    falls back to a local one, which this node's next recovery of the endpoint aborts."""
    try:
        return self._notes.add(key, upload_id, durable=durable)
    except Exception:
        try:
            self._abort_upload(key, upload_id)
        except Exception:
            self._keep_local_note(key, upload_id)
        raise


def _keep_local_note(self: S3Sink, key: str, upload_id: str) -> None:
    local = self._note_stores[-1]
    if local is not self._notes:
        try:
            local.add(key, upload_id, durable=True)
        except Exception:  # the warning below says what is left
            pass
        else:
            _log.warning(
                "upload %s of %s: neither its shared note nor its abort could be sent; noted "
                "on this node's disk, aborted when this node next recovers the endpoint",
                upload_id,
                key,
            )
            return
    # Best effort ended: the bucket's AbortIncompleteMultipartUpload rule removes it.
    _log.warning("could not abort upload %s of %s after its note failed", upload_id, key)


def _abort_unjournaled_uploads(self: S3Sink, *, keep: str | None) -> None:
    """Abort every noted upload but `keep` (the journal's: resumed or aborted by the
    caller), then forget the notes. Raises (notes kept) when an abort fails."""
    for notes in self._note_stores:
        for noted in notes.listed():
            if noted.upload_id != keep:
                self._abort_upload(noted.key, noted.upload_id)
            notes.remove(noted.handle)


def _discard_memory(self: S3Sink) -> None:
    for f in self._files:
        if f.spill is not None:
            f.spill.close()
    self._files.clear()
    self._file = None
    self._plan = None
    self._pos = None
    self._budget_wait = False


def _remove_temp_files(self: S3Sink) -> None:
    if not self.state_dir.is_dir():
        return
    for path in self.state_dir.iterdir():
        if path.suffix in (SPILL_SUFFIX, ENCRYPTED_SUFFIX):
            path.unlink(missing_ok=True)


def _abort(self: S3Sink, active: ActiveFile) -> None:
    assert active.upload_id is not None
    self._abort_upload(active.key, active.upload_id)


def _abort_upload(self: S3Sink, key: str, upload_id: str) -> None:
    try:
        self._call("AbortMultipartUpload", Key=key, UploadId=upload_id)
    except TransientError as exc:
        if exc.code != "NoSuchUpload":
            raise
    else:
        self.stats.aborted_uploads += 1


def _resume(self: S3Sink, state: JournalState, active: ActiveFile) -> int:
    """Continue `active`'s multipart upload (or complete it); restart it if it is gone."""
    assert active.upload_id is not None
    if active.completing:
        done = self._complete_journaled(state, active)
        return active.start if done is None else done
    try:
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
        if exc.code not in REWRITE_CODES:
            raise
        self._rebuild(state, active, exc.code)
        return active.start
    f = OpenFile(
        key=active.key,
        start=active.start,
        period_start=active.period_start,
        boundary=active.end,
        data_end=active.resume_offset,
        framed=active.framed,
        sealed_end=active.resume_offset,
        sealed_framed=active.framed,
        upload_id=active.upload_id,
        created=active.created,
        parts=list(active.parts),
        next_number=len(active.parts) + 1,
    )
    self._file = f
    self._files.append(f)
    return active.resume_offset


def _complete_journaled(self: S3Sink, state: JournalState, active: ActiveFile) -> int | None:
    """Complete `active` (every part journaled, its end decided): its end when the range is
    delivered (completed now, or found completed), None when it is to be rebuilt from the
    spool under the same key (`self._plan`)."""
    assert active.upload_id is not None and active.end is not None
    try:
        result = self._complete(active.key, active.upload_id, active.parts)
    except AwsError as exc:
        if exc.code not in REWRITE_CODES:
            raise
        if exc.code != "NoSuchUpload" or not self._completed_elsewhere(state, active):
            self._rebuild(state, active, exc.code)
            return None
        result = {ALREADY_COMPLETE: True}
    end = active.end
    state.durable = end
    state.active = None
    self._save(state)
    if not already_complete(result):
        self.stats.objects += 1
    self._success(active.key)
    return end


def _completed_elsewhere(self: S3Sink, state: JournalState, active: ActiveFile) -> bool:
    """`NoSuchUpload` for `active`, whose end and every part are journaled: was it completed
    (its answer lost, or by a stale owner) rather than aborted?

    What the journal proves (no bucket read is allowed): logferry calls only Complete or Abort
    on such an upload, and every abort it decides is journaled first (`abandoned`), so the
    upload was completed unless someone else aborted it — a lifecycle rule, or a person. When
    the spool still holds the whole file, nothing needs proving: it is rebuilt under the same
    key and `If-None-Match` settles it (412 = it was completed; 200 = it was not, and now is).
    Otherwise an upload younger than the shortest AbortIncompleteMultipartUpload rule (1 day;
    less an hour for the clocks of different nodes) cannot have been aborted by one, so it was
    completed. An older one may have been either: it is taken as delivered (its lines cannot
    be sent again) and reported as a possibly lost range, naming the key to check. (A person
    aborting a young upload by hand, or a 409 conflict that dropped the upload while the racing
    write failed too, would be missed: neither is observable with PutObject and Abort only.)
    """
    released = max(state.committed, self._spool_committed)
    if released <= active.start:
        return False
    age = None if active.created is None else self._clock() - active.created
    if age is not None and age < LIFECYCLE_PROOF_SECONDS:
        return True
    self.lost.append(
        (
            active.start,
            active.end or active.resume_offset,
            f"multipart upload {active.upload_id} of {active.key} was gone when its "
            f"completion was retried, "
            + (f"{age / 86400:.1f} days" if age is not None else "an unknown time")
            + " after it was created: it was completed (then the object exists and nothing "
            "is lost) or a lifecycle rule aborted it; the spool had already released its "
            f"positions {active.start}..{active.end}",
        )
    )
    return True


def _rebuild(self: S3Sink, state: JournalState, active: ActiveFile, code: str) -> None:
    """`active`'s upload is gone (`NoSuchUpload`) or cannot be completed as journaled: give it
    up and rebuild the file [start, end) from the spool under the same key."""
    released = max(state.committed, self._spool_committed)
    if active.parts and released > active.start:
        lost_end = min(released, active.parts[-1].end)
        self.lost.append(
            (
                active.start,
                lost_end,
                f"multipart upload {active.upload_id} of {active.key} is gone "
                f"({code}); its parts held spool positions {active.start}.."
                f"{lost_end}, which were already released",
            )
        )
    if code != "NoSuchUpload":
        self._give_up_upload(state, active)  # it exists but cannot be completed as journaled
    active.upload_id, active.parts, active.created = None, [], None
    self._save(state)
    self._plan = active  # rebuild [start, end) from the spool under the same key


def _give_up_upload(self: S3Sink, state: JournalState, active: ActiveFile) -> None:
    """Abort `active`'s upload, journaled as abandoned first: a later recovery must never read
    its absence as a completion (`_completed_elsewhere`)."""
    assert active.upload_id is not None
    state.abandoned.append(Abandoned(active.key, active.upload_id))
    active.upload_id, active.parts, active.created = None, [], None
    self._save(state)
    self._abort_abandoned(state)


def _abort_abandoned(self: S3Sink, state: JournalState, *, save: bool = True) -> None:
    """Abort every upload the journal says logferry gave up, then forget them. Raises (the
    rest kept) when an abort fails, so a later recovery finishes the job."""
    while state.abandoned:
        gone = state.abandoned[0]
        self._abort_upload(gone.key, gone.upload_id)
        state.abandoned.pop(0)
        if save:
            self._save(state)
