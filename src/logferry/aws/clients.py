"""botocore clients built from one set of credentials, with endpoint URLs as pure configuration.

The same code talks to real AWS and to the local emulator: the only difference is `endpoint_url`.
Clients are cached per (service, region) because creating one costs ~10 ms and a few hundred KiB.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import boto3
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import Credentials

# Retries are ours (sinks retry only what failed, with jitter); botocore's own standard mode
# still absorbs a few connection blips per call without duplicating anything.
DEFAULT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=5,
    read_timeout=60,
    max_pool_connections=16,
)


@dataclass
class AwsTarget:
    """Where AWS calls go: `endpoint_url` (one URL for every service, e.g. the emulator) and
    per-service overrides (`service_endpoints["s3"]` for an S3-compatible `domain`)."""

    endpoint_url: str | None = None
    service_endpoints: dict[str, str] = field(default_factory=dict)

    def url_for(self, service: str) -> str | None:
        return self.service_endpoints.get(service, self.endpoint_url)


class AwsClients:
    """Clients for one identity (static, or refreshable credentials from the STS broker)."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        target: AwsTarget | None = None,
        *,
        profile: str | None = None,
        config: Config | None = None,
    ) -> None:
        self._target = target or AwsTarget()
        self._config = config or DEFAULT_CONFIG
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], BaseClient] = {}
        core = botocore.session.Session(profile=profile)
        if credentials is not None:
            # Refreshable credentials are shared by reference: every client sees each refresh.
            core._credentials = credentials
        self._session = boto3.Session(botocore_session=core)

    @property
    def session(self) -> boto3.Session:
        return self._session

    def client(self, service: str, region: str, *, config: Config | None = None) -> BaseClient:
        """A cached client; pass `config` for a one-off client with other timeouts/retries."""
        if config is not None:
            return self._make(service, region, config)
        key = (service, region)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                self._cache[key] = cached = self._make(service, region, self._config)
            return cached

    def _make(self, service: str, region: str, config: Config) -> BaseClient:
        return self._session.client(
            service,  # type: ignore[call-overload]
            region_name=region,
            endpoint_url=self._target.url_for(service),
            config=config,
        )
