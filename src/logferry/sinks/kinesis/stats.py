"""What a Kinesis sink counts: records accepted, calls, retries, pacing (its status page)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KinesisSinkStats:
    """Counters since the sink was created (records = what Kinesis accepted)."""

    in_flight_calls: int = 0
    """PutRecords calls sent and not yet answered (a gauge)."""
    max_in_flight_seen: int = 0
    """The most calls this sink had in flight at once."""

    records: int = 0
    """Records accepted by Kinesis."""
    lines: int = 0
    """Lines accepted (a packed record holds several; a split line counts once, at its end)."""
    bytes: int = 0
    """Accepted record bytes, data plus partition key (what Kinesis meters)."""
    calls: int = 0
    """PutRecords calls made."""
    failed_calls: int = 0
    """PutRecords calls that failed as a whole (transient) and were repeated."""
    retried_records: int = 0
    """Records sent again after a per-record or whole-call failure."""
    throttled: int = 0
    """Records answered ProvisionedThroughputExceededException."""
    internal_failures: int = 0
    """Records answered InternalFailure."""
    other_record_errors: int = 0
    """Records answered with any other per-record error code (also retried)."""
    oversize_lines: int = 0
    """Lines larger than one record, split or truncated per the endpoint's `oversize`."""
    split_records: int = 0
    """Records that carry a piece of a split line."""
    truncated_bytes: int = 0
    """Bytes cut off oversize lines (oversize = "truncate")."""
    misrouted_records: int = 0
    """Records that landed on another shard than aimed at (stale shard map)."""
    shard_map_refreshes: int = 0
    paced_seconds: float = 0.0
    """Time spent holding calls so shards stay within 1,000 records/s and 1 MB/s."""
    backoff_seconds: float = 0.0
    """Time spent waiting before retries."""
    last_success: float | None = None
    """Unix time of the last PutRecords call that had at least one record accepted."""
    last_error: str | None = None
    last_error_at: float | None = None
