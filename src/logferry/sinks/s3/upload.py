"""The multipart state machine: parts queued, in flight and journaled in order, files completed.

The upload methods of `S3Sink` (functions taking the sink as `self`, bound in its class body so
that mypy checks them against its attributes). Only the first unfinished file makes AWS calls;
its parts go up on the io pool within `parts_in_flight` and the process-wide budget, and the
journal records a part only once every lower part is uploaded, so `durable` never passes a hole.
The writes that end a file (PutObject, CompleteMultipartUpload) are fenced (`fencing`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any

from logferry.sinks.s3.fencing import already_complete
from logferry.sinks.s3.files import Flight, OpenFile
from logferry.sinks.s3_journal import ActiveFile, JournalState, Part

if TYPE_CHECKING:
    from logferry.sinks.s3.sink import S3Sink


def _active(self: S3Sink, f: OpenFile, end: int | None) -> ActiveFile:
    return ActiveFile(
        key=f.key,
        start=f.start,
        period_start=f.period_start,
        end=end,
        upload_id=f.upload_id,
        parts=list(f.parts),
        pgp=f.pgp,
        created=f.created,
    )


def _save(self: S3Sink, state: JournalState | None = None, *, sync: bool = True) -> None:
    self._journal.save(state or self._state, sync=sync)
    self._saved_journal = True


def _journal_file(self: S3Sink, f: OpenFile) -> None:
    """Journal `f` as the active file (fsynced): its upload, parts and decided end."""
    self._state.active = self._active(f, f.end if f.closed else f.boundary)
    self._save()
    if f.closed:
        f.end_saved = True


def _cut_part(self: S3Sink, f: OpenFile) -> None:
    """`buf` is a full part: queue it (it goes up once it is first in line and a slot and
    the budget allow; inline without an io pool)."""
    f.queued.append((f.next_number, f.buf.take(), f.sealed_end, f.sealed_framed))
    f.next_number += 1
    self._advance()


def _close(self: S3Sink, f: OpenFile, *, implied: bool) -> None:
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


def _advance(self: S3Sink) -> None:
    """Move the first file's uploads forward without waiting: take in finished calls
    (journal, in part order), start what may start, finish files whose last call is done."""
    while self._files:
        f = self._files[0]
        while self._step_file(f):
            pass
        if f.final is None or not f.final.done():
            return
        result = f.final.result()  # raises the call's error
        written = not already_complete(result)  # else: the key was there (412), delivered
        if not f.upload_id and written:
            self.stats.bytes_out += f.final_size
        self._files.popleft()
        # A single PutObject needs no fsync here: the worker's spool commit (fsynced) at
        # `durable` is what a restart resumes from, and a replay before it finds the same
        # key written (412, see `fencing`). A multipart completion is journaled durably (a
        # restart must not try to resume an upload that no longer exists).
        self._finish(f.key, f.end, sync=bool(f.upload_id), written=written)


def _step_file(self: S3Sink, f: OpenFile) -> bool:
    """One move for the first file; True when something changed (try again)."""
    if f.final is not None:
        return False
    if f.pgp:
        if f.closed:
            f.final = _done_future(self._close_pgp(f, f.end))
        return False
    changed = False
    if f.create is not None and f.create.done():
        future, f.create = f.create, None
        created = future.result()
        f.upload_id = created["UploadId"]
        f.created = self._clock()
        self._journal_file(f)  # before any part: a crash from here on aborts or resumes it
        self._notes.remove(created["note"])
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
            f.flights[number] = Flight(
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
        whole = f.buf.take_bytes()
        f.final_size = size
        f.final = self._submit(lambda: self._put_object(f.key, whole), budget=size)
    return True


def _part_call(
    self: S3Sink, f: OpenFile, number: int, body: bytearray
) -> Callable[[], dict[str, Any]]:
    key, upload_id = f.key, f.upload_id

    def upload() -> dict[str, Any]:
        return self._call("UploadPart", Key=key, UploadId=upload_id, PartNumber=number, Body=body)

    return upload


def _submit(
    self: S3Sink, call: Callable[[], dict[str, Any]], *, budget: int = 0
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


def _quiesce(self: S3Sink) -> None:
    """Wait for calls still in flight (after a failure, before recovery or discard): a late
    UploadPart must not land after its part number was uploaded again."""
    pending = [x for f in self._files for x in f.futures()]
    if pending:
        wait_futures(pending)


def _finish(self: S3Sink, key: str, end: int, *, sync: bool = True, written: bool = True) -> None:
    """The file ending at `end` is in S3 (`written`: by this call; else found there, 412)."""
    self._state.durable = end
    self._state.active = None
    self._save(sync=sync)
    if written:
        self.stats.objects += 1
    self._success(key)


def _done_future(result: dict[str, Any]) -> Future[dict[str, Any]]:
    future: Future[dict[str, Any]] = Future()
    future.set_result(result)
    return future
