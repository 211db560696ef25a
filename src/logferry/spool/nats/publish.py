"""Publishing one append to JetStream: one message, or one atomic batch when it needs several.

Why a batch: an append split into parts (a request over `max_message_bytes`, or a line over it)
must be stored whole or not at all. Published part by part, a failure after the first parts
left them stored and delivered, and the sender's retry of the refused request stored them again:
a duplicate in the customer's bucket. JetStream's atomic batch publish (nats-server 2.12+, the
stream's `allow_atomic`) stages the parts and stores them together when the last one, marked
`Nats-Batch-Commit`, arrives; an incomplete batch is dropped by the server.

Retries keep every part's `Nats-Msg-Id` and take a new batch id: if an earlier try committed
but its answer was lost, the server refuses the repeat as a batch holding a duplicate message id
(`ALREADY_STORED`), which means "stored" — batches are all or nothing, and message ids are unique
per append, so no other batch can hold those ids.

The protocol is three headers on plain publishes and one request for the commit; nats-py 2.16
has no helper for it (the `nats-jetstream-extra` package targets the next-generation client).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from logferry.spool.errors import SpoolFull
from logferry.spool.nats.errors import NatsUnavailable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)

H_BATCH_ID = "Nats-Batch-Id"
H_BATCH_SEQ = "Nats-Batch-Sequence"
H_BATCH_COMMIT = "Nats-Batch-Commit"
MAX_BATCH_MESSAGES = 1000
"""The server's limit on one atomic batch (a larger one is refused with BATCH_TOO_LARGE)."""

STREAM_FULL = 10077  # JSStreamStoreFailedF: "maximum bytes exceeded" with discard=new
ALREADY_STORED = 10201  # JSAtomicPublishContainsDuplicateMessageErr: an earlier try committed
BATCH_TOO_LARGE = 10199  # JSAtomicPublishTooLargeBatchErrF
IN_PROCESS = 10158  # JSStreamDuplicateMessageConflict: our earlier try is still being proposed
TRANSIENT_PUBLISH_ERRORS = frozenset(
    {
        10008,  # JSClusterNotAvailErr (503): JetStream temporarily unavailable (election)
        10158,  # JSStreamDuplicateMessageConflict (409): this Nats-Msg-Id is still being
        #         proposed (our earlier try, timed out, is in the leader's Raft log)
        10167,  # JSStreamTooManyRequests (429): the stream's ingest queue is full
        10176,  # JSAtomicPublishIncompleteBatchErr: a part of this try was lost (a reconnect)
        #         or the leader changed under it: the server dropped the try; send it again
    }
)
"""JetStream publish answers below 500 that say "not now", not "never": retried with the
same `Nats-Msg-Id`s within the request's budget (the duplicate window makes a repeat harmless,
so a retry cannot store a line twice). Every 5xx answer is retried too."""


def most_parts(append_bytes: int, message_bytes: int) -> int:
    """The most messages `wire.split_append` can cut an append of `append_bytes` into: a part
    ends at the last newline that fits, so lines just over half a message (or just over a whole
    one, as two fragments) give two messages per `message_bytes`."""
    return 2 * -(-append_bytes // message_bytes) + 1


Message = tuple[bytes, dict[str, str]]
"""One part: payload and its headers (`Nats-Msg-Id` included)."""


def publish_refusal(exc: nats.js.errors.APIError) -> str | None:
    """How a publish's APIError ends: "full" (SpoolFull, 429), "stored" (an earlier try of this
    batch committed), "refused" (503 at once: a configuration problem no retry fixes), or None
    (transient: retry with the same ids)."""
    description = exc.description or ""
    if "maximum bytes" in description or (exc.err_code == STREAM_FULL and not description):
        return "full"
    if exc.err_code == ALREADY_STORED:
        return "stored"
    if exc.err_code in TRANSIENT_PUBLISH_ERRORS:
        return None
    if exc.code is not None and exc.code < 500 and exc.code != 429:
        return "refused"
    return None


NO_ACK_FIX = (
    "Check that a majority of the stream's replicas run and reach each other, and that no "
    "nats-server is out of disk space for its JetStream store (its log says 'no space left on "
    "device'; free space, then restart that nats-server); the sender retries."
)
"""No ack at all: a lost quorum, or a server that cannot write its store (it sends no answer
then; tests/chaos/test_nats_store_full.py)."""


class AppendPublisher:
    """Publishes appends of one spool (one subject) until acknowledged or out of time."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subject: str,
        *,
        name: str,
        stream: str,
        append_timeout: float,
        max_bytes: int | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        """The stream's byte limit, named in the refusal (as a full local spool names its)."""
        self.nc = nc
        self.js = js
        self.subject = subject
        self.name = name
        self.stream = stream
        self.append_timeout = append_timeout

    async def publish(self, messages: list[Message], request: str) -> None:
        """Store `messages` (one append, in order) as a whole; raises SpoolFull or
        NatsUnavailable, never returns before a quorum ack of every part."""
        if len(messages) > MAX_BATCH_MESSAGES:  # the config check keeps appends below this
            raise NatsUnavailable(
                f"spool {self.name}: an append of {len(messages)} messages exceeds JetStream's "
                f"atomic batch limit of {MAX_BATCH_MESSAGES}",
                fix="Raise spool.max_message_bytes or lower the request body limit.",
            )
        deadline = time.monotonic() + self.append_timeout
        delay = 0.1
        attempt = 0
        uncertain = False  # a try went out and its answer never came: it may still commit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NatsUnavailable(
                    f"spool {self.name}: no quorum ack from stream {self.stream} within "
                    f"{self.append_timeout:g}s; nothing acknowledged",
                    fix=NO_ACK_FIX,
                    maybe_stored=uncertain,
                )
            try:
                if len(messages) == 1:
                    data, headers = messages[0]
                    await self.js.publish(
                        self.subject, data, timeout=min(left, 2.0), headers=headers
                    )
                else:
                    await self._publish_batch(messages, f"{request}.{attempt}", min(left, 5.0))
                return
            except nats.js.errors.APIError as exc:
                verdict = publish_refusal(exc)
                if verdict == "stored":
                    return
                if verdict == "full":
                    limit = "" if self.max_bytes is None else f" of {self.max_bytes} bytes"
                    raise SpoolFull(
                        f"stream {self.stream} is full (at its limit{limit})",
                        retry_after=5.0,
                        fix="Wait for delivery to catch up, or raise spool.max_bytes "
                        "(each stream holds spool.max_bytes / shards).",
                    ) from exc
                if verdict == "refused":
                    raise NatsUnavailable(
                        f"spool {self.name}: publish refused: {exc}", maybe_stored=uncertain
                    ) from exc
                uncertain = uncertain or exc.err_code == IN_PROCESS
                log.debug("spool %s: publish retry after %r", self.name, exc)
            except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
                log.debug("spool %s: publish retry after %r", self.name, exc)  # not received
            except (TimeoutError, nats.errors.Error) as exc:
                uncertain = True  # sent, unanswered: a slow quorum may still store it
                log.debug("spool %s: publish retry after %r", self.name, exc)
            attempt += 1
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    async def _publish_batch(self, messages: list[Message], batch_id: str, timeout: float) -> None:
        """One try: the parts as plain publishes, the last one a request whose answer is the
        batch's PubAck (or why the server dropped it)."""
        last = len(messages)
        for i, (data, headers) in enumerate(messages, start=1):
            marked = {**headers, H_BATCH_ID: batch_id, H_BATCH_SEQ: str(i)}
            if i < last:
                await self.nc.publish(self.subject, data, headers=marked)
                continue
            marked[H_BATCH_COMMIT] = "1"
            try:
                reply = await self.nc.request(self.subject, data, timeout=timeout, headers=marked)
            except nats.errors.NoRespondersError as exc:
                raise nats.js.errors.NoStreamResponseError() from exc
            answer = json.loads(reply.data)
            if "error" in answer:
                nats.js.errors.APIError.from_error(answer["error"])  # raises
            if answer.get("count") != last:
                raise nats.js.errors.APIError(
                    code=500, description=f"batch {batch_id}: acknowledged {answer!r}"
                )
