"""Which `Sink` serves which endpoint type: the one place a new destination is registered.

The worker asks the registry for a sink and never branches on the endpoint's type; a third
destination is a new module implementing `sinks.base.Sink` plus one `SinkFactory` entry here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from logferry.aws.clients import AwsClients, AwsTarget
from logferry.sinks.base import Sink


@dataclass(frozen=True)
class SinkContext:
    """What every sink may need besides its endpoint model and clients."""

    state_dir: Path
    """This endpoint incarnation's private directory for journals and temp files."""
    uid_prefix: str
    stop: threading.Event
    wake: Callable[[], None] = field(default=lambda: None)
    """Thread-safe: call when an AWS call the sink left in flight has finished, so the worker
    pumps again at once instead of waiting for its next timer."""
    io_executor: Executor | None = None
    """The service's shared pool for AWS calls that only wait on the network. A sink may keep
    several calls in flight here (bounded per sink) and must never block a delivery thread
    waiting for them in `pump`; None = make every call inline (tools and tests)."""


@dataclass(frozen=True)
class SinkFactory:
    build: Callable[[Any, AwsClients, SinkContext], Sink]
    unit: str
    """What `SinkCounters.units` counts, as the status names it ("objects", "calls")."""
    journaled: bool = False
    """True when the sink keeps state in `state_dir` that must be resumed after a restart."""
    target: Callable[[Any, AwsTarget], AwsTarget] = lambda _model, base: base
    """Where this endpoint's AWS calls go (e.g. an S3-compatible `domain`)."""


def _s3(model: Any, clients: AwsClients, ctx: SinkContext) -> Sink:
    from logferry.sinks.s3 import S3Sink

    return S3Sink(
        model,
        clients,
        ctx.state_dir,
        uid_prefix=ctx.uid_prefix,
        stop=ctx.stop,
        io_executor=ctx.io_executor,
        wake=ctx.wake,
    )


def _s3_target(model: Any, base: AwsTarget) -> AwsTarget:
    domain = getattr(model, "domain", None)
    if not domain:
        return base
    url = domain if domain.startswith(("http://", "https://")) else f"https://{domain}"
    return replace(base, service_endpoints={**base.service_endpoints, "s3": url})


def _kinesis(model: Any, clients: AwsClients, ctx: SinkContext) -> Sink:
    from logferry.sinks.kinesis import KinesisSink

    return KinesisSink(
        model,
        clients,
        stop=ctx.stop,
        uid_prefix=ctx.uid_prefix,
        io_executor=ctx.io_executor,
        wake=ctx.wake,
    )


FACTORIES: dict[str, SinkFactory] = {
    "s3": SinkFactory(build=_s3, unit="objects", journaled=True, target=_s3_target),
    "kinesis": SinkFactory(build=_kinesis, unit="calls"),
}


def factory(kind: str) -> SinkFactory:
    try:
        return FACTORIES[kind]
    except KeyError:
        raise ValueError(f"no sink for endpoint type {kind!r}") from None
