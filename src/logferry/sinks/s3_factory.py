"""S3 as a destination for the service: everything about it the worker must not know.

Files are built over a period (lazy reads), the multipart upload in progress is journaled under
`state/s3/<uid>` (the path running installs already have, so it must not move) or in the store
`SinkContext.journal` gives (the NATS backend's KV record), a custom `domain`
redirects the S3 calls, and an upload that vanished after the spool released its lines is a
lost range with a fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logferry.sinks.base import BaseSinkFactory, LostRange, Sink, SinkContext
from logferry.sinks.s3.upload_notes import SharedUploadNotes, upload_notes
from logferry.sinks.s3_budget import configure_shared_budget
from logferry.sinks.s3_config import S3Endpoint
from logferry.sinks.s3_journal import Journal, has_unfinished, journal_store

if TYPE_CHECKING:
    from logferry.aws.clients import AwsClients, AwsTarget
    from logferry.aws.role_check import Report
    from logferry.aws.sts_broker import CredentialBroker

LOST_FIX = (
    "Keep the bucket's AbortIncompleteMultipartUpload rule longer than the endpoint's period "
    "(logferry role create --abort-incomplete-multipart-days)."
)


class S3Factory(BaseSinkFactory):
    type = "s3"
    model = S3Endpoint
    unit = "objects"
    lazy = True
    durable_state = True

    def configure(self, server: Any) -> None:
        # S3 bodies in flight share one budget per process (server.upload_memory_bytes).
        configure_shared_budget(int(server.upload_memory_bytes))

    def state_dir(self, root: Path, uid_prefix: str) -> Path:
        return root / "s3" / uid_prefix  # where every release so far kept the journal

    def has_unfinished_state(self, state_dir: Path, journal: Any = None) -> bool:
        """The journal names a file not completed yet or an upload to abort. A shared journal
        (the endpoint's KV record) is read from the node's copy in memory, with the upload
        notes beside it (`upload_notes`): a node asks it for every endpoint it takes over, so
        that an upload a dead owner left open is finished even when no line follows."""
        if journal is None:
            return has_unfinished(Journal(state_dir))
        if has_unfinished(journal_store(journal, state_dir)):
            return True
        # The record's notes, and a local one this node kept when the record was out of
        # reach (`recovery._note_created`).
        notes, stores = upload_notes(journal, state_dir)
        return isinstance(notes, SharedUploadNotes) and any(s.listed() for s in stores)

    def period(self, model: Any) -> float:
        return float(model.period)

    def target(self, model: Any, base: AwsTarget) -> AwsTarget:
        domain = model.domain
        if not domain:
            return base
        url = domain if domain.startswith(("http://", "https://")) else f"https://{domain}"
        return replace(base, service_endpoints={**base.service_endpoints, "s3": url})

    def build(self, model: Any, clients: AwsClients, ctx: SinkContext) -> Sink:
        from logferry.sinks.s3 import S3Sink

        return S3Sink(
            model,
            clients,
            ctx.state_dir,
            uid_prefix=ctx.uid_prefix,
            stop=ctx.stop,
            io_executor=ctx.io_executor,
            wake=ctx.wake,
            journal=ctx.journal,
            holds=ctx.holds,
        )

    def verify(
        self,
        model: Any,
        *,
        broker: CredentialBroker,
        external_id: str,
        customer_id: str,
        aws_target: AwsTarget,
    ) -> Report:
        from logferry.aws.role_check import S3Target, check_role

        prefix = (model.path or "").split("%", 1)[0]
        target = S3Target(
            model.bucket_name,
            prefix,
            model.region or "us-east-1",
            put_args=tuple(sorted(model.put_args().items())),
        )
        return check_role(
            broker=broker,
            role_arn=model.iam_role,
            external_id=external_id,
            target=target,
            customer_id=customer_id,
            # Where delivery writes: an S3 `domain` is probed there, not at AWS.
            aws_target=self.target(model, aws_target),
        )

    def lost_ranges(self, sink: Sink) -> Sequence[LostRange]:
        return [LostRange(s, e, why, LOST_FIX) for s, e, why in getattr(sink, "lost", ())]


S3 = S3Factory()
