"""The stream's shard map as one sink sees it: listed, refreshed when stale, its record limit.

The shard-map methods of `KinesisSink` (functions taking the sink as `self`, bound in its class
body so that mypy checks them against its attributes) (the map itself is `sinks.shard_map`).
Only ListShards, plus DescribeStreamSummary once to learn a larger `MaxRecordSizeInKiB`; its
denial (the guide's policy) is remembered so CloudTrail is not flooded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from logferry.errors import AwsErrorInfo, SetupError, TransientError
from logferry.sinks.aws_errors import is_aws_exception
from logferry.sinks.shard_map import load_shard_map

if TYPE_CHECKING:
    from logferry.sinks.kinesis.sink import KinesisSink

DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
"""Kinesis's default record limit (data + partition key)."""


def _refresh_if_due(self: KinesisSink) -> None:
    now = self._clock()
    assert self._map is not None
    if self._stale:
        if self._stale_refreshed and now - self._last_refresh < self.min_refresh_gap:
            return
        self._stale_refreshed = True
        self._refresh()
    elif now - self._map.loaded_at >= self.refresh_interval:
        self._stale_refreshed = False
        self._refresh()


def _refresh(self: KinesisSink) -> None:
    """ListShards now; a transient failure keeps the old map, or raises when there is none
    (the worker backs off and pumps again)."""
    self._last_refresh = self._clock()
    try:
        found = load_shard_map(
            self.client,
            self.stream_arn,
            now=self._clock(),
            page_size=self.list_shards_page_size,
        )
        if found is None:
            raise self._no_open_shards()
    except Exception as exc:
        error = self._transient_or_raise(exc, "ListShards")
        if self._map is None:
            raise error from exc
        return
    self._map = found
    self._stale = False
    self._pacer.retain(found.ids())
    self.stats.shard_map_refreshes += 1
    if self._describe != "denied":
        self._describe_stream()


def _describe_stream(self: KinesisSink) -> None:
    """Learn MaxRecordSizeInKiB if DescribeStreamSummary is allowed (it is not in the guide's
    policy: a denial is remembered and never asked again, so CloudTrail is not flooded)."""
    try:
        summary = self.client.describe_stream_summary(StreamARN=self.stream_arn)[
            "StreamDescriptionSummary"
        ]
    except Exception as exc:
        if not is_aws_exception(exc):
            raise
        error = self._classify(exc, "DescribeStreamSummary")
        denied = isinstance(error, SetupError) and error.code.startswith("AccessDenied")
        self._describe = "denied" if denied else "failed"  # failed: asked again next time
        return
    self._describe = "allowed"
    kib = summary.get("MaxRecordSizeInKiB")
    self._max_record_bytes = int(kib) * 1024 if kib else DEFAULT_MAX_RECORD_BYTES
    self._stream_summary = {
        k: summary.get(k)
        for k in ("StreamStatus", "StreamModeDetails", "EncryptionType", "OpenShardCount")
    }


def _no_open_shards(self: KinesisSink) -> TransientError:
    return TransientError(
        f"Kinesis stream {self.stream_arn} has no open shard (it is being created or resharded).",
        AwsErrorInfo(
            "NoOpenShards",
            service="kinesis",
            operation="ListShards",
            region=self.endpoint.region,
        ),
        fix="None needed if it passes: logferry lists the shards again.",
    )
