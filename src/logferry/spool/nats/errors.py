"""Errors of the NATS backend; both are `SpoolError`s, so ingest answers 503 + Retry-After."""

from __future__ import annotations

from logferry.spool.errors import SpoolError


class NatsUnavailable(SpoolError):
    """No connection, no stream leader or no quorum ack in time: nothing was acknowledged.

    `retry_after` is a hint for ingest's Retry-After (a leader election takes 5-7 s).
    `maybe_stored`: a try was sent and never answered, so the servers may still store it
    when their quorum returns (the sender's retry may then deliver its lines twice); False
    when nothing reached a server or every answer was a refusal."""

    def __init__(
        self,
        message: str,
        *,
        fix: str | None = None,
        retry_after: float = 5.0,
        maybe_stored: bool = False,
    ) -> None:
        super().__init__(
            message,
            fix=fix
            or "Check that the NATS servers in spool.nats_url run and reach each other "
            "(a stream needs a majority of its replicas); the sender retries.",
        )
        self.retry_after = retry_after
        self.maybe_stored = maybe_stored


class SpoolFenced(SpoolError):
    """This node no longer owns the endpoint: a compare-and-set on its record failed, or its
    lease may have expired by its own clock. Stop delivering it; the new owner resumes from
    the record's cursor."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            fix="Nothing to fix: another delivery node took the endpoint over (lease expiry "
            "or rebalance); this node stops its worker.",
        )
