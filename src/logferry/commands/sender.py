"""The engine of `logferry send`: read lines, batch them, deliver each batch exactly once.

- A reader thread turns each input (stdin or files) into blocks of *whole* lines (`os.read`
  returns what is available at once, so `tail -F … |` input is never held back waiting for a
  full buffer) and hands them over through a bounded queue: a slow server slows the reader,
  and memory stays bounded.
- The batcher closes a batch at `batch_bytes` or `batch_lines`, or `linger` seconds after its
  first line arrived, whichever comes first.
- One batch is in flight at a time and the next one is only started after a 2xx, so a line is
  counted delivered exactly when the server said it is durable, and never sent again after that.
  429 / 503 (and 502 / 504) are retried after the server's Retry-After plus jitter (jittered
  exponential backoff when it gives none), transport failures with jittered backoff. A transport
  failure *after* the body was sent (timeout waiting for the answer) is retried too and counted
  as `ambiguous_retries`: the server may have kept that batch, so those lines could arrive twice.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from isal import igzip

from logferry.backoff import Backoff
from logferry.commands.api_client import ApiError, ApiTarget, error_from_response, tls_fix

READ_BLOCK = 64 * 1024
RETRYABLE = {429, 502, 503, 504}
SAFE_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class SendStats:
    """What the summary shows (and `--json` prints)."""

    lines_read: int = 0
    bytes_read: int = 0
    lines_delivered: int = 0
    bytes_delivered: int = 0
    bytes_sent: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    status_429: int = 0
    status_503: int = 0
    other_retryable: int = 0
    connection_errors: int = 0
    ambiguous_retries: int = 0
    retry_wait_seconds: float = 0.0
    server: dict[str, int] = field(
        default_factory=lambda: (
            {"accepted": 0, "empty_skipped": 0, "truncated": 0} | {"invalid_utf8": 0}
        )
    )
    seconds: float = 0.0

    @property
    def lines_undelivered(self) -> int:
        return self.lines_read - self.lines_delivered

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "lines_undelivered": self.lines_undelivered}


@dataclass
class _Block:
    data: bytes
    lines: int


@dataclass
class ReadFailure:
    source: str
    error: OSError


_EOF = object()


class _Reader(threading.Thread):
    """Reads every source in order into blocks of whole lines (a last line gets its newline)."""

    def __init__(self, sources: list[str], out: queue.Queue[Any]) -> None:
        super().__init__(name="logferry-send-reader", daemon=True)
        self.sources = sources
        self.out = out
        self.lines = 0  # read so far (written by this thread only)
        self.bytes = 0

    def _emit(self, block: _Block) -> None:
        self.lines += block.lines
        self.bytes += len(block.data)
        self.out.put(block)

    def run(self) -> None:
        try:
            for source in self.sources:
                try:
                    self._read(source)
                except OSError as exc:
                    self.out.put(ReadFailure(source, exc))
                    return
        finally:
            self.out.put(_EOF)

    def _read(self, source: str) -> None:
        fd = 0 if source == "-" else os.open(source, os.O_RDONLY)
        carry = b""
        try:
            while True:
                data = os.read(fd, READ_BLOCK)
                if not data:
                    break
                if carry:
                    data, carry = carry + data, b""
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                if cut < len(data):
                    data, carry = data[:cut], data[cut:]
                self._emit(_Block(data, data.count(b"\n")))
            if carry:
                self._emit(_Block(carry + b"\n", 1))
        finally:
            if fd != 0:
                os.close(fd)


def cut_point(data: bytes, max_bytes: int, max_lines: int) -> int:
    """Length of the longest prefix of whole lines within both limits (0: not even one line)."""
    end = data.rfind(b"\n", 0, max_bytes) + 1 if len(data) > max_bytes else len(data)
    if end and data.count(b"\n", 0, end) > max_lines:
        end = 0
        for _ in range(max_lines):
            end = data.index(b"\n", end) + 1
    return end


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


@dataclass
class SendOptions:
    batch_bytes: int = 1024 * 1024
    batch_lines: int = 10_000
    linger: float = 0.2
    gzip: bool = True
    max_retry_seconds: float = 600.0  # per batch; 0 = retry forever
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 120.0


class Sender:
    """Delivers `sources` to one ingest URL; `run()` returns the stats, raising nothing."""

    def __init__(
        self,
        target: ApiTarget,
        path: str,
        sources: list[str],
        options: SendOptions,
        on_progress: Callable[[SendStats], None] | None = None,
    ) -> None:
        self.target = target
        self.path = path
        self.sources = sources
        self.options = options
        self._policy = Backoff(base=options.backoff_base, cap=options.backoff_max, jitter="equal")
        self.on_progress = on_progress or (lambda _s: None)
        self.stats = SendStats()
        self.error: ApiError | None = None
        self.read_error: ReadFailure | None = None
        self.stopping = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self._carry: _Block | None = None
        self._eof = False
        self._reader = _Reader(sources, self._queue)

    # -- batching -----------------------------------------------------------------------------

    def _take(self, timeout: float | None) -> Any:
        if self._carry is not None:
            block, self._carry = self._carry, None
            return block
        if self.stopping.is_set():
            timeout = 0.05  # stop requested: take what is already read, wait for nothing new
        return self._queue.get(timeout=timeout)

    def next_batch(self) -> tuple[bytes, int] | None:
        """The next batch of whole lines, or None at end of input."""
        opts = self.options
        parts: list[bytes] = []
        size = lines = 0
        deadline: float | None = None
        while not self._eof:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            try:
                item = self._take(timeout)
            except queue.Empty:
                if self.stopping.is_set() and deadline is None:
                    self._eof = True
                break
            if item is _EOF:
                self._eof = True
                break
            if isinstance(item, ReadFailure):
                self.read_error = item
                self._eof = True
                break
            block: _Block = item
            if deadline is None:
                deadline = time.monotonic() + opts.linger
            cut = cut_point(block.data, opts.batch_bytes - size, opts.batch_lines - lines)
            if cut == 0 and not parts:  # one line over batch_bytes: send it alone
                cut = block.data.index(b"\n") + 1
            if cut < len(block.data):
                rest = _Block(block.data[cut:], block.lines - block.data.count(b"\n", 0, cut))
                block = _Block(block.data[:cut], block.lines - rest.lines)
                self._carry = rest
            if block.lines:
                parts.append(block.data)
                size += len(block.data)
                lines += block.lines
            if self._carry is not None or size >= opts.batch_bytes or lines >= opts.batch_lines:
                break
        return (b"".join(parts), lines) if parts else None

    # -- delivery -----------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After plus up to 25 % jitter (so many senders do not return in
        step); without one, the one backoff policy (`logferry.backoff`) capped at backoff_max,
        with "equal" jitter: never sooner than half the schedule, as a shared server wants."""
        if retry_after is not None:
            return max(0.05, retry_after) * random.uniform(1.0, 1.25)
        return self._policy.delay(attempt)

    def deliver(self, http: httpx.Client, data: bytes, lines: int) -> None:
        """POST one batch until a 2xx; raises ApiError when it must give up."""
        body = igzip.compress(data, 1) if self.options.gzip else data
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.options.gzip:
            headers["Content-Encoding"] = "gzip"
        started = time.monotonic()
        attempt = 0
        while True:
            self.stats.requests += 1
            self.stats.bytes_sent += len(body)
            retry_after: float | None = None
            try:
                response = http.post(self.path, content=body, headers=headers)
            except httpx.TransportError as exc:
                self.stats.connection_errors += 1
                if tls := tls_fix(exc, self.target.url):  # a setup error: retrying cannot help
                    raise ApiError(f"cannot reach {self.target.url}: {exc}", fix=tls) from None
                if not isinstance(exc, SAFE_TRANSPORT):
                    self.stats.ambiguous_retries += 1
                why = f"cannot reach {self.target.url}: {exc.__class__.__name__}: {exc}"
                fix: str | None = "start `logferry serve`, or point --url / $LOGFERRY_URL at it."
            else:
                if response.is_success:
                    self._delivered(response, data, lines)
                    return
                if response.status_code not in RETRYABLE:
                    raise error_from_response(response, self.target)
                code = response.status_code
                if code == 429:
                    self.stats.status_429 += 1
                elif code == 503:
                    self.stats.status_503 += 1
                else:
                    self.stats.other_retryable += 1
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
                failure = error_from_response(response, self.target)
                why, fix = failure.message, failure.fix
            delay = self._backoff(attempt, retry_after)
            limit = self.options.max_retry_seconds
            if limit and time.monotonic() - started + delay > limit:
                raise ApiError(
                    f"gave up on a batch of {lines} lines after {attempt + 1} attempts over "
                    f"{time.monotonic() - started:.0f} s; last: {why}",
                    fix=fix or "retry later, or raise --max-retry-seconds (0 = forever).",
                )
            attempt += 1
            self.stats.retries += 1
            self.stats.retry_wait_seconds += delay
            self.on_progress(self.snapshot())
            time.sleep(delay)

    def _delivered(self, response: httpx.Response, data: bytes, lines: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.lines_delivered += lines
        stats.bytes_delivered += len(data)
        with contextlib.suppress(ValueError, AttributeError):
            answer = response.json()
            for key in stats.server:
                stats.server[key] += int(answer.get(key, 0))
        self.on_progress(self.snapshot())

    def run(self) -> SendStats:
        started = time.monotonic()
        self._reader.start()
        with httpx.Client(
            base_url=self.target.url,
            headers={"Authorization": f"Bearer {self.target.token}"},
            timeout=self.options.timeout,
        ) as http:
            try:
                while True:
                    batch = self.next_batch()
                    if batch is None:
                        if self._eof:
                            break
                        continue
                    self.deliver(http, *batch)
            except ApiError as exc:
                self.error = exc
            finally:
                self.stats.seconds = time.monotonic() - started
                self.snapshot()
        return self.stats

    def snapshot(self) -> SendStats:
        """Stats with the reader's counts brought up to date (what progress displays show)."""
        self.stats.lines_read = self._reader.lines
        self.stats.bytes_read = self._reader.bytes
        return self.stats


def total_size(sources: Iterable[str]) -> int | None:
    """Sum of the regular files' sizes (for a progress bar), None when stdin is among them."""
    total = 0
    for source in sources:
        if source == "-":
            return None
        with contextlib.suppress(OSError):
            total += os.stat(source).st_size
    return total
