"""Wake parked endpoints when another node appends to them (delivery nodes, backend loop).

A parked endpoint (reader.py: nothing pending for `idle_follow_seconds`) has no consumer, so
nothing tells its owner about a message another node publishes on its subject. Once a second,
for each stream holding parked endpoints of this node, one STREAM.INFO with a subject filter
lists the subjects that hold messages. A parked subject holds none (parking purges below its
cursor), so one listed has new messages: its endpoint follows again from where it parked.

Why a poll and not a consumer on the whole shard: a consumer would carry every message's
headers of every endpoint to every delivery node; the poll costs one request per stream and
second, whatever the traffic, and adds at most a second to the first line after an idle spell.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:
    from logferry.spool.nats.backend import NatsBackend
    from logferry.spool.nats.spool import NatsSpool

log = logging.getLogger(__name__)

WAKE_POLL_SECONDS = 1.0


class ParkedWatch:
    """The once-a-second look at the streams for this node's parked endpoints."""

    def __init__(self, backend: NatsBackend) -> None:
        self.backend = backend
        self.wakeups = 0
        """Parked endpoints woken because another node appended to them."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(WAKE_POLL_SECONDS)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries again
                log.warning(
                    "nats %s: waking parked endpoints failed: %r", self.backend.node_id, exc
                )

    async def sweep(self) -> None:
        by_shard: dict[int, list[NatsSpool]] = defaultdict(list)
        for spool in self.backend.provider.parked():
            by_shard[spool.shard].append(spool)
        settings = self.backend.settings
        for shard, spools in sorted(by_shard.items()):
            stream = settings.stream_name(shard)
            try:
                info = await self.backend.js.stream_info(
                    stream, subjects_filter=f"{settings.subject_root}.{shard:02d}.>"
                )
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("nats: subjects of %s not listed: %r", stream, exc)
                continue
            holding = info.state.subjects or {}
            for spool in spools:
                if holding.get(spool.subject):
                    self.wakeups += 1
                    await spool.wake_if_parked()
