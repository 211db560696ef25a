"""`[spool]` of `logferry.toml`: the local segmented log (default) or NATS JetStream (scale-out,
docs/scale-out.md), validated with errors that name the key path (part of `service.config`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from logferry.spool.size import parse_size


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SpoolConfig(_Strict):
    dir: Path = Path("./spool")
    max_bytes: int | str = "10GiB"
    segment_bytes: int | str = "64MiB"
    group_sync: Literal["syncfs", "fdatasync"] = "syncfs"
    """How acknowledged appends become durable: "syncfs" (one syncfs(2) per round covers every
    endpoint's appends; also writes back other dirty data on that filesystem, so give the spool
    its own filesystem if something else writes heavily there) or "fdatasync" (one per file).
    "syncfs" becomes "fdatasync" on kernels before Linux 5.8, whose syncfs reports no writeback
    errors (docs/security.md, "Spool durability")."""
    default_customer_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="The spool quota of a customer without its own spool_max_bytes, as a "
        "fraction of spool.max_bytes (0 < x <= 1; 1: no default quota), so one customer whose "
        "role is broken cannot fill the spool every customer shares. Over it: 429.",
    )

    backend: Literal["local", "nats"] = Field(
        "local",
        description='"local": segmented logs under spool.dir on this machine (the default); '
        '"nats": NATS JetStream streams shared by many ingest and delivery processes '
        "(docs/scale-out.md); spool.dir is then local scratch (PGP files, node-local stats).",
    )
    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="backend = nats: the servers, comma-separated for a cluster "
        '(e.g. "nats://10.0.0.1:4222,nats://10.0.0.2:4222").',
    )
    stream_prefix: str = Field(
        "LF",
        description="backend = nats: streams <prefix>_00 ... and KV buckets <prefix>_* .",
    )
    shards: int = Field(16, ge=1, le=100, description="backend = nats: number of streams.")
    replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="backend = nats: copies of every stream and KV bucket (3 in a cluster).",
    )
    duplicate_window_seconds: float = Field(
        120.0, gt=0, le=86400, description="backend = nats: JetStream's duplicate window."
    )
    lease_seconds: float = Field(
        10.0, gt=0, le=600, description="backend = nats: how long an endpoint's owner lease lasts."
    )
    heartbeat_seconds: float = Field(
        2.0, gt=0, le=300, description="backend = nats: how often a node renews its liveness."
    )
    connect_timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="backend = nats: the first connection's time limit."
    )
    idle_follow_seconds: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="backend = nats: an owned endpoint with nothing pending for this long "
        "stops following its stream (one JetStream consumer less); new lines wake it within "
        "about a second.",
    )
    node_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="backend = nats: this process's name in ownership records (default: the "
        "host name and server.listen's port); unique per running process, stable across "
        "restarts so a restarted node takes back its endpoints.",
    )

    def default_customer_quota(self) -> int | None:
        """Bytes a customer without its own `spool_max_bytes` may hold (None: no own limit)."""
        if self.default_customer_share >= 1:
            return None
        return max(1, int(int(self.max_bytes) * self.default_customer_share))

    @field_validator("max_bytes", "segment_bytes")
    @classmethod
    def _size(cls, value: int | str) -> int:
        return parse_size(value)

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        return check_nats_url(value)

    @field_validator("stream_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,15}", value):
            raise ValueError(
                f"{value!r}: a letter, then up to 15 letters, digits or _ (it names JetStream "
                'streams and KV buckets), e.g. "LF"'
            )
        return value

    @model_validator(mode="after")
    def _nats_fields(self) -> SpoolConfig:
        if self.backend == "local":
            stray = sorted(self.model_fields_set & set(NATS_FIELDS))
            if stray:
                raise ValueError(
                    f'{", ".join(stray)} only apply to backend = "nats"; set '
                    'backend = "nats" or remove them'
                )
        return self

    @field_validator("heartbeat_seconds")
    @classmethod
    def _heartbeat(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_seconds")
        if lease is not None and value * 2 > lease:
            raise ValueError(
                f"{value:g} must be at most half of lease_seconds ({lease:g}), so one lost "
                "heartbeat does not cost a node its endpoints"
            )
        return value

    def nats_settings(self) -> Any:
        """The `NatsSpoolSettings` of the NATS backend (spool/nats/settings.py)."""
        from logferry.spool.nats.settings import NatsSpoolSettings

        return NatsSpoolSettings(
            nats_url=self.nats_url,
            stream_prefix=self.stream_prefix,
            shards=self.shards,
            replicas=self.replicas,
            max_bytes=int(self.max_bytes),
            duplicate_window_seconds=self.duplicate_window_seconds,
            lease_seconds=self.lease_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            idle_follow_seconds=self.idle_follow_seconds,
        )


NATS_FIELDS = (
    "nats_url",
    "stream_prefix",
    "shards",
    "replicas",
    "duplicate_window_seconds",
    "lease_seconds",
    "heartbeat_seconds",
    "connect_timeout_seconds",
    "idle_follow_seconds",
    "node_id",
)
"""`[spool]` keys that only mean something with backend = "nats"."""


def check_nats_url(value: str) -> str:
    """Comma-separated nats:// (or tls://) URLs with a host and a port; whitespace trimmed."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError('give at least one server, e.g. "nats://127.0.0.1:4222"')
    for url in urls:
        parsed = urlsplit(url)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname or port is None:
            raise ValueError(
                f"{url!r} is not a NATS server URL: write nats://HOST:PORT (or tls://HOST:PORT),"
                ' comma-separated for a cluster, e.g. "nats://127.0.0.1:4222"'
            )
    return ",".join(urls)
