"""The S3 sink: spool chunks in, deterministic log files out, nothing lost or doubled.

One role per module (see docs/architecture.md, "Sinks"): `sink` (the `S3Sink` the worker
drives), `files` (file planning: framing, members, parts), `upload` (the multipart state
machine and its journal writes), `recovery` (journal and upload notes after a crash),
`upload_notes` (where a created upload's ID is kept until the journal holds it), `pgp_upload`
(the one-message PGP path), `fencing` (`If-None-Match: *` on the writes that end a file),
`client` (AWS calls, retries, credential refresh), `stats`. This module re-exports the names
importers use.
"""

from logferry.sinks.framing import stable_pid
from logferry.sinks.s3.files import (
    DEFAULT_MEMBER_SIZE,
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
)
from logferry.sinks.s3.sink import DEFAULT_PARTS_IN_FLIGHT, IN_FLIGHT_POLL, S3Sink
from logferry.sinks.s3.stats import LastError, S3SinkStats, SinkNeedsRecovery
from logferry.sinks.s3.upload_notes import CREATED_PREFIX, LEGACY_PROBE_FILE

__all__ = [
    "CREATED_PREFIX",
    "DEFAULT_MEMBER_SIZE",
    "DEFAULT_PARTS_IN_FLIGHT",
    "DEFAULT_PART_SIZE",
    "IN_FLIGHT_POLL",
    "LEGACY_PROBE_FILE",
    "MAX_PARTS",
    "MIB",
    "MIN_PART_SIZE",
    "LastError",
    "S3Sink",
    "S3SinkStats",
    "SinkNeedsRecovery",
    "stable_pid",
]
