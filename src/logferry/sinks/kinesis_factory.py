"""Kinesis as a destination for the service: records are sent as data arrives (no lazy reads),
and nothing is kept on disk (what is not acknowledged stays in the spool and is sent again)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from logferry.sinks.base import BaseSinkFactory, Sink, SinkContext
from logferry.sinks.kinesis_config import KinesisEndpoint

if TYPE_CHECKING:
    from logferry.aws.clients import AwsClients, AwsTarget
    from logferry.aws.role_check import Report
    from logferry.aws.sts_broker import CredentialBroker


class KinesisFactory(BaseSinkFactory):
    type = "kinesis"
    model = KinesisEndpoint
    unit = "calls"

    def build(self, model: Any, clients: AwsClients, ctx: SinkContext) -> Sink:
        from logferry.sinks.kinesis import KinesisSink

        return KinesisSink(
            model,
            clients,
            stop=ctx.stop,
            uid_prefix=ctx.uid_prefix,
            io_executor=ctx.io_executor,
            wake=ctx.wake,
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
        from logferry.aws.names import parse_stream_arn
        from logferry.aws.role_check import KinesisTarget, check_role

        return check_role(
            broker=broker,
            role_arn=model.iam_role,
            external_id=external_id,
            target=KinesisTarget(parse_stream_arn(model.stream_arn())),
            customer_id=customer_id,
            aws_target=self.target(model, aws_target),
        )


KINESIS = KinesisFactory()
