"""Settings of the NATS JetStream spool backend (issue 29; built by `[spool] backend = "nats"`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIB = 1024 * 1024
HEADER_HEADROOM = 8 * 1024
"""Bytes of a message that headers may take (ids, sizes, times): the server's max_payload
counts headers and payload together."""


class NatsSpoolSettings(BaseModel):
    """Where the streams live and how they are shaped; one per process (`NatsBackend`)."""

    model_config = ConfigDict(extra="forbid")

    nats_url: str = "nats://127.0.0.1:4222"
    """Comma-separated for a cluster (any reachable node is enough to connect)."""
    stream_prefix: str = Field(default="LF", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,30}$")
    """Streams `<prefix>_00…`, KV buckets `<prefix>_endpoints` / `<prefix>_nodes`, subjects
    `<prefix lower-case>.<shard>.<endpoint>`."""
    shards: int = Field(default=16, ge=1, le=100)
    replicas: int = Field(default=1, ge=1, le=5)
    max_bytes: int = Field(gt=0)
    """Hard limit over all shards (each stream gets max_bytes / shards, discard=new)."""
    duplicate_window_seconds: float = Field(default=120.0, gt=0)
    max_message_bytes: int = Field(default=MIB - HEADER_HEADROOM, ge=1024)
    """Payload per message; must stay below the server's max_payload minus header room
    (checked at start)."""
    lease_seconds: float = Field(default=10.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    append_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long one append retries a part without a quorum ack before NatsUnavailable."""
    idle_follow_seconds: float = Field(default=30.0, gt=0)
    """An owned endpoint with nothing pending for this long stops following its subject (its
    consumer ends: nats-server refuses a stream's 1,001st); new messages wake it (reader.py)."""

    @field_validator("nats_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("nats_url needs at least one nats://host:port")
        return ",".join(urls)

    @model_validator(mode="after")
    def _timing(self) -> NatsSpoolSettings:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                "heartbeat_seconds must be at most half of lease_seconds (a node renews its "
                "lease at least twice before it could expire)"
            )
        if self.append_timeout_seconds * 2 > self.duplicate_window_seconds:
            raise ValueError(
                "append_timeout_seconds must be at most half of duplicate_window_seconds (a "
                "retried part must still be recognised as a duplicate)"
            )
        return self

    @property
    def urls(self) -> list[str]:
        return self.nats_url.split(",")

    @property
    def shard_max_bytes(self) -> int:
        return max(1, self.max_bytes // self.shards)

    def stream_name(self, shard: int) -> str:
        return f"{self.stream_prefix}_{shard:02d}"

    @property
    def subject_root(self) -> str:
        return self.stream_prefix.lower()

    @property
    def endpoints_bucket(self) -> str:
        return f"{self.stream_prefix}_endpoints"

    @property
    def nodes_bucket(self) -> str:
        return f"{self.stream_prefix}_nodes"
