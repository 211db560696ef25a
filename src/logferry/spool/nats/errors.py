"""Errors of the NATS backend; both are `SpoolError`s, so ingest answers 503 + Retry-After.
`SpoolFenced` lives in `spool.errors` (a sink raises it too) and is re-exported here."""

from __future__ import annotations

from logferry.spool.errors import SpoolError, SpoolFenced

__all__ = ["NatsUnavailable", "SpoolFenced"]


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
