"""Credential broker: AssumeRole into customers' roles, cached and refreshed ahead of expiry.

Why not botocore's own AssumeRoleProvider: it talks to one STS endpoint and cannot tell a
customer mistake (AccessDenied: never retry, tell them) from a sick region (fail over, cool the
region down) — that half is `aws/sts_failover.py`, which this class extends. We keep botocore's
`RefreshableCredentials` for the part it does well: refreshing ahead of expiry under a lock
(advisory and mandatory windows), shared by every client that holds the object — so one cache
entry per (role, external ID) serves every endpoint using that role. The windows follow the
lifetime STS actually granted (`aws/sts_credentials.py`), not the one we asked for.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from logferry.aws.clients import DELIVERY_CONFIG, AwsClients, AwsTarget
from logferry.aws.sts_credentials import StsCredentials
from logferry.aws.sts_failover import DEFAULT_STS_REGIONS, StsFailover
from logferry.aws.sts_results import (
    AssumeAttempt,
    AssumeResult,
    CallerIdentity,
    RoleKey,
    role_session_name,
)
from logferry.errors import InputError, SetupError, TransientError

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_STS_REGIONS",
    "MAX_DURATION",
    "MIN_DURATION",
    "AssumeAttempt",
    "AssumeResult",
    "CallerIdentity",
    "CredentialBroker",
    "RoleKey",
    "role_session_name",
]

MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 43200, 3600


class CredentialBroker(StsFailover):
    """Temporary credentials per (role ARN, external ID), refreshed ahead of expiry.

    Thread-safe; STS calls block, so asyncio callers run them in a thread.
    """

    def __init__(
        self,
        *,
        vendor_name: str = "logferry",
        vendor_account_id: str | None = None,
        regions: Iterable[str] = DEFAULT_STS_REGIONS,
        sts_endpoints: dict[str, str] | None = None,
        target: AwsTarget | None = None,
        vendor_credentials: object | None = None,
        profile: str | None = None,
        duration_seconds: int = DEFAULT_DURATION,
        cooldown_seconds: float = 60.0,
        max_cooldown_seconds: float = 900.0,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        negative_cache_seconds: float = 10.0,
        max_cached_clients: int = 4096,
        client_idle_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        source_identity: str | None = None,
    ) -> None:
        if not MIN_DURATION <= duration_seconds <= MAX_DURATION:
            raise InputError(
                "duration_seconds",
                f"must be between {MIN_DURATION} and {MAX_DURATION} seconds, "
                f"got {duration_seconds}.",
            )
        super().__init__(
            vendor_account_id=vendor_account_id,
            regions=regions,
            sts_endpoints=sts_endpoints,
            target=target,
            vendor_credentials=vendor_credentials,
            profile=profile,
            cooldown_seconds=cooldown_seconds,
            max_cooldown_seconds=max_cooldown_seconds,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            clock=clock,
        )
        self.vendor_name = vendor_name
        self.source_identity = source_identity
        """Default SourceIdentity of every AssumeRole (shows in the customer's CloudTrail)."""
        self.duration_seconds = duration_seconds
        self.negative_cache_seconds = negative_cache_seconds
        # One lock per key while an initial AssumeRole for it is wanted, with how many callers
        # hold or wait for it; removed when the last one leaves, so the dict stays as small as
        # the fetches in flight (not one entry per role ever seen).
        self._key_locks: dict[RoleKey, tuple[threading.Lock, int]] = {}
        self._cache: dict[RoleKey, StsCredentials] = {}
        self._failures: dict[RoleKey, tuple[float, Exception]] = {}
        # Clients per (role, external ID, target), least recently used first. Bounded, and
        # dropped after `client_idle_seconds` unused (or by `release`), so memory follows the
        # identities that are active, not every identity ever served.
        self.max_cached_clients = max_cached_clients
        self.client_idle_seconds = client_idle_seconds
        self._clients: OrderedDict[tuple[str, str | None, str], tuple[AwsClients, float]] = (
            OrderedDict()
        )

    # ---------------------------------------------------------------- cache

    def role_key(
        self,
        role_arn: str,
        external_id: str | None,
        *,
        customer_id: str | None = None,
        source_identity: str | None = None,
        duration_seconds: int | None = None,
    ) -> RoleKey:
        return RoleKey(
            role_arn=role_arn,
            external_id=external_id,
            session_name=role_session_name(self.vendor_name, customer_id, role_arn),
            duration=duration_seconds or self.duration_seconds,
            source_identity=source_identity or self.source_identity,
        )

    def credentials(
        self,
        role_arn: str,
        external_id: str | None,
        *,
        customer_id: str | None = None,
        source_identity: str | None = None,
    ) -> StsCredentials:
        """Shared, self-refreshing credentials for the role (one AssumeRole per lifetime)."""
        key = self.role_key(
            role_arn, external_id, customer_id=customer_id, source_identity=source_identity
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            key_lock, users = self._key_locks.get(key, (threading.Lock(), 0))
            self._key_locks[key] = (key_lock, users + 1)
        try:
            with key_lock:  # at most one initial AssumeRole per key, however many callers
                return self._first_credentials(key)
        finally:
            with self._lock:
                key_lock, users = self._key_locks[key]
                if users > 1:
                    self._key_locks[key] = (key_lock, users - 1)
                else:
                    del self._key_locks[key]

    def _first_credentials(self, key: RoleKey) -> StsCredentials:
        """The cached credentials, or the first AssumeRole for `key` (caller holds its lock)."""
        with self._lock:
            cached = self._cache.get(key)
            failed = self._failures.get(key)
        if cached is not None:
            return cached
        if failed and self.clock() - failed[0] < self.negative_cache_seconds:
            raise failed[1]
        try:
            metadata = self._fetch(key)
        except (SetupError, TransientError) as exc:
            with self._lock:
                self._failures[key] = (self.clock(), exc)
            raise
        made = StsCredentials(metadata, lambda: self._fetch(key), clock=self.clock)
        with self._lock:
            self._cache[key] = made
            self._failures.pop(key, None)
        return made

    def _fetch(self, key: RoleKey) -> dict[str, str]:
        """One AssumeRole (with failover) as botocore's refresh metadata."""
        result = self.assume(key)
        expiration = result.expiration
        if isinstance(expiration, dt.datetime) and expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=dt.UTC)
        return {
            "access_key": result.access_key,
            "secret_key": result.secret_key,
            "token": result.token,
            "expiry_time": expiration.isoformat()
            if isinstance(expiration, dt.datetime)
            else str(expiration),
        }

    def clients(
        self,
        role_arn: str,
        external_id: str | None,
        *,
        customer_id: str | None = None,
        target: AwsTarget | None = None,
    ) -> AwsClients:
        """Clients acting as the customer's role, sharing the refreshable credentials.

        Cached per (role, external ID, target) so an endpoint whose sink is rebuilt (idle exit,
        error) reuses them; `release` or `client_idle_seconds` without use drops them.
        """
        creds = self.credentials(role_arn, external_id, customer_id=customer_id)
        target = target or self.target
        cache_key = (role_arn, external_id, repr(target))
        now = self.clock()
        with self._lock:
            self._expire_clients(now)
            entry = self._clients.get(cache_key)
            if entry is not None and entry[0].credentials is creds:
                self._clients[cache_key] = (entry[0], now)
                self._clients.move_to_end(cache_key)
                return entry[0]
            made = AwsClients(creds, target, config=DELIVERY_CONFIG)
            self._clients[cache_key] = (made, now)
            while len(self._clients) > self.max_cached_clients:
                self._clients.popitem(last=False)
            return made

    def _expire_clients(self, now: float) -> None:
        """Drop clients unused for `client_idle_seconds` (caller holds the lock)."""
        while self._clients:
            key, (_, used) = next(iter(self._clients.items()))
            if now - used < self.client_idle_seconds:
                break
            del self._clients[key]

    def release(self, role_arn: str, external_id: str | None = None) -> int:
        """Drop the cached clients of a role (its endpoints went idle); credentials stay cached,
        so the next use costs new clients but no AssumeRole. Returns how many were dropped.

        Clients still held by a sink keep working; they are freed once the sink lets go."""
        with self._lock:
            keys = [
                k
                for k in self._clients
                if k[0] == role_arn and (external_id is None or k[1] == external_id)
            ]
            for key in keys:
                del self._clients[key]
        return len(keys)

    def cached_clients(self) -> int:
        """Identities (role, external ID, target) that currently have cached clients."""
        with self._lock:
            self._expire_clients(self.clock())
            return len(self._clients)

    def forget(self, role_arn: str, external_id: str | None = None) -> None:
        """Drop cached credentials (e.g. after the customer fixed their role)."""
        with self._lock:
            for key in [
                k
                for k in self._cache
                if k.role_arn == role_arn and (external_id is None or k.external_id == external_id)
            ]:
                del self._cache[key]
            for key in [k for k in self._failures if k.role_arn == role_arn]:
                del self._failures[key]
        self.release(role_arn, external_id)
