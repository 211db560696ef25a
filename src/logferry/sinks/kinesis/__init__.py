"""The Kinesis sink: chunks of lines in, every line accepted by PutRecords out.

One role per module (see docs/architecture.md, "Sinks"): `sink` (the `KinesisSink` the worker
drives), `calls` (one PutRecords call and its answers), `shards` (the shard map as the sink
sees it), `errors` (setup vs transient), `stats`. Config, records, batches, the shard map and
pacing are `sinks.kinesis_config`, `kinesis_records`, `kinesis_batch`, `shard_map`, `pacing`.
This module re-exports the names importers use.
"""

from logferry.sinks.kinesis.calls import INTERNAL, THROTTLED
from logferry.sinks.kinesis.shards import DEFAULT_MAX_RECORD_BYTES
from logferry.sinks.kinesis.sink import DEFAULT_MAX_HELD_BYTES, IN_FLIGHT_POLL, KinesisSink
from logferry.sinks.kinesis.stats import KinesisSinkStats

__all__ = [
    "DEFAULT_MAX_HELD_BYTES",
    "DEFAULT_MAX_RECORD_BYTES",
    "INTERNAL",
    "IN_FLIGHT_POLL",
    "THROTTLED",
    "KinesisSink",
    "KinesisSinkStats",
]
