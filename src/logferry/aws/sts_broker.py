"""Credential broker: AssumeRole into customers' roles with regional STS failover.

Why not botocore's own AssumeRoleProvider: it talks to one STS endpoint and cannot tell a
customer mistake (AccessDenied: never retry, tell them) from a sick region (fail over, cool the
region down). We keep botocore's `RefreshableCredentials` for the part it does well: refreshing
ahead of expiry under a lock (advisory and mandatory windows), shared by every client that holds
the object — so one cache entry per (role, external ID) serves every endpoint using that role.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import TypeVar

from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
)

from logferry.aws.clients import DELIVERY_CONFIG, AwsClients, AwsTarget
from logferry.aws.errors import STS_FAILOVER_CODES, client_error_info
from logferry.aws.sts_results import (
    VENDOR_CREDENTIALS_FIX,
    AssumeAttempt,
    AssumeResult,
    CallerIdentity,
    RegionHealth,
    RoleKey,
    assume_fix,
    outcome_for,
    role_session_name,
    unreachable_fix,
    vendor_fix,
)
from logferry.errors import AwsErrorInfo, InputError, SetupError, TransientError

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

DEFAULT_STS_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 43200, 3600
T = TypeVar("T")


class CredentialBroker:
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
        self.vendor_name = vendor_name
        self.vendor_account_id = vendor_account_id
        self.source_identity = source_identity
        """Default SourceIdentity of every AssumeRole (shows in the customer's CloudTrail)."""
        self.regions = list(regions)
        if not self.regions:
            raise InputError("sts regions", "at least one STS region is needed.")
        self.sts_endpoints = dict(sts_endpoints or {})
        self.target = target or AwsTarget()
        self.duration_seconds = duration_seconds
        self.cooldown_seconds = cooldown_seconds
        self.max_cooldown_seconds = max_cooldown_seconds
        self.negative_cache_seconds = negative_cache_seconds
        self.clock = clock
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._health = {region: RegionHealth() for region in self.regions}
        self._lock = threading.Lock()
        # One lock per key while an initial AssumeRole for it is wanted, with how many callers
        # hold or wait for it; removed when the last one leaves, so the dict stays as small as
        # the fetches in flight (not one entry per role ever seen).
        self._key_locks: dict[RoleKey, tuple[threading.Lock, int]] = {}
        self._cache: dict[RoleKey, RefreshableCredentials] = {}
        self._failures: dict[RoleKey, tuple[float, Exception]] = {}
        self._sts_clients: dict[str, BaseClient] = {}
        # The vendor's own identity; its STS clients share the process-wide service models.
        self._vendor = AwsClients(vendor_credentials, profile=profile)
        # Clients per (role, external ID, target), least recently used first. Bounded, and
        # dropped after `client_idle_seconds` unused (or by `release`), so memory follows the
        # identities that are active, not every identity ever served.
        self.max_cached_clients = max_cached_clients
        self.client_idle_seconds = client_idle_seconds
        self._clients: OrderedDict[tuple[str, str | None, str], tuple[AwsClients, float]] = (
            OrderedDict()
        )
        self._sts_config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 1, "mode": "standard"},  # failover is our retry
        )

    # ---------------------------------------------------------------- regions

    def endpoint_for(self, region: str) -> str | None:
        return self.sts_endpoints.get(region) or self.target.url_for("sts")

    def _sts(self, region: str) -> BaseClient:
        with self._lock:
            client = self._sts_clients.get(region)
            if client is None:
                client = self._vendor.make_client(
                    "sts", region, endpoint_url=self.endpoint_for(region), config=self._sts_config
                )
                self._sts_clients[region] = client
            return client

    def caller_account(self) -> str:
        """The vendor's own account, from sts:GetCallerIdentity (see `caller_identity`)."""
        return self.caller_identity().account

    def caller_identity(self) -> CallerIdentity:
        """sts:GetCallerIdentity with the same regional failover as AssumeRole (`_failover`):
        an unreachable, throttled or not-activated region moves on to the next one.

        Raises TransientError when no region answers and SetupError when the vendor's
        credentials are missing or rejected; both carry `attempts` (one per region tried).
        """

        def one(region: str) -> dict[str, object]:
            return self._call_in_region(
                region,
                "GetCallerIdentity",
                lambda sts: sts.get_caller_identity(),
                what="sts:GetCallerIdentity",
                fix=lambda code: vendor_fix(code, region),
            )

        response, region, attempts = self._failover(one, what="answer sts:GetCallerIdentity")
        return CallerIdentity(str(response["Account"]), region, attempts)

    def region_order(self) -> list[str]:
        """Healthy regions in configured order, then cooling ones by soonest recovery."""
        now = self.clock()
        with self._lock:
            healthy = [r for r in self.regions if self._health[r].cooldown_until <= now]
            cooling = sorted(
                (r for r in self.regions if self._health[r].cooldown_until > now),
                key=lambda r: self._health[r].cooldown_until,
            )
        return healthy + cooling

    def region_health(self) -> dict[str, dict[str, object]]:
        now = self.clock()
        with self._lock:
            return {
                r: {
                    "healthy": h.cooldown_until <= now,
                    "failures": h.failures,
                    "cooldown_remaining": max(0.0, h.cooldown_until - now),
                    "last_error": h.last_error,
                }
                for r, h in self._health.items()
            }

    def _mark(self, region: str, ok: bool, error: str | None = None) -> None:
        with self._lock:
            health = self._health.setdefault(region, RegionHealth())
            if ok:
                health.failures = 0
                health.cooldown_until = 0.0
                health.last_error = None
            else:
                health.failures += 1
                backoff = self.cooldown_seconds * 2 ** min(health.failures - 1, 6)
                health.cooldown_until = self.clock() + min(backoff, self.max_cooldown_seconds)
                health.last_error = error

    # ---------------------------------------------------------------- one call

    def _call_in_region(
        self,
        region: str,
        operation: str,
        call: Callable[[BaseClient], T],
        *,
        what: str,
        fix: Callable[[str], str],
    ) -> T:
        """One STS call in one region, classified the one way every STS caller shares.

        A region that cannot serve now (unreachable, throttled, 5xx, RegionDisabledException)
        raises TransientError: `_failover` moves on. Any other AWS answer raises SetupError with
        `fix(code)`: the region is healthy, the setup is not, and no other region would differ.
        """
        try:
            response = call(self._sts(region))
        except ClientError as exc:
            info = client_error_info(exc, service="sts", operation=operation, region=region)
            code, status = info.code, info.http_status
            if code in STS_FAILOVER_CODES or (status is not None and status >= 500):
                self.outcomes[(region, outcome_for(code))] += 1
                raise TransientError(
                    f"STS {region}: {code}: {info.message}".rstrip(": "), info, fix=fix(code)
                ) from None
            self.outcomes[(region, "denied" if code == "AccessDenied" else "error")] += 1
            raise SetupError(
                f"{what} via STS {region} failed: {code}: {info.message}", info, fix=fix(code)
            ) from None
        except NoCredentialsError:
            # Before BotoCoreError (its parent): no region can help, the vendor must act.
            self.outcomes[(region, "error")] += 1
            raise SetupError(
                f"no vendor AWS credentials for {operation}",
                AwsErrorInfo(
                    code="NoCredentials", service="sts", operation=operation, region=region
                ),
                fix=VENDOR_CREDENTIALS_FIX,
            ) from None
        except (ConnectionError, HTTPClientError, BotoCoreError, OSError) as exc:
            self.outcomes[(region, "unreachable")] += 1
            endpoint = self.endpoint_for(region)
            info = AwsErrorInfo(
                code="Unreachable",
                message=str(exc),
                service="sts",
                operation=operation,
                region=region,
            )
            raise TransientError(
                f"STS {region} unreachable at {endpoint or 'AWS'}: {exc}",
                info,
                fix=unreachable_fix(region, endpoint),
            ) from None
        self.outcomes[(region, "ok")] += 1
        return response

    def _failover(
        self, call_one: Callable[[str], T], *, what: str
    ) -> tuple[T, str, list[AssumeAttempt]]:
        """Try `call_one(region)` in `region_order()` until one answers: the one failover loop
        for delivery (AssumeRole) and start-up (GetCallerIdentity). A region's health follows
        each outcome; a SetupError stops at once (the region answered). Returns the result,
        the region and one attempt per region tried; errors carry `attempts` too, and when
        every region failed the fix names each region's own fix.
        """
        attempts: list[AssumeAttempt] = []
        last: TransientError | None = None
        for region in self.region_order():
            try:
                result = call_one(region)
            except TransientError as exc:
                self._mark(region, False, f"{exc.code}: {exc.info.message}")
                outcome = outcome_for(None if exc.code == "Unreachable" else exc.code)
                attempts.append(AssumeAttempt(region, outcome, exc.code, exc.info.message, exc.fix))
                last = exc
                continue
            except SetupError as exc:
                # The region answered: it is healthy, the setup is not.
                self._mark(region, True)
                outcome = "denied" if exc.code == "AccessDenied" else "error"
                attempts.append(AssumeAttempt(region, outcome, exc.code, exc.info.message, exc.fix))
                # attempts: an extra attribute serve reads with getattr (not on the error classes)
                exc.attempts = attempts  # type: ignore[attr-defined]
                raise
            self._mark(region, True)
            attempts.append(AssumeAttempt(region, "ok"))
            return result, region, attempts
        assert last is not None
        summary = "; ".join(f"{a.region}: {a.code}" for a in attempts)
        fixes = "; ".join(f"{a.region}: {a.fix}" for a in attempts if a.fix)
        error = TransientError(
            f"no STS region could {what} ({summary})", last.info, fix=fixes or last.fix
        )
        error.attempts = attempts  # type: ignore[attr-defined]  # as above
        raise error

    def assume_in_region(self, key: RoleKey, region: str) -> AssumeResult:
        """One AssumeRole in one region; raises SetupError (customer) or TransientError."""
        params: dict[str, object] = {
            "RoleArn": key.role_arn,
            "RoleSessionName": key.session_name,
            "DurationSeconds": key.duration,
        }
        if key.external_id is not None:
            params["ExternalId"] = key.external_id
        if key.source_identity:
            params["SourceIdentity"] = key.source_identity

        def fix(code: str) -> str:
            return assume_fix(
                code,
                role_arn=key.role_arn,
                vendor_account=self.vendor_account_id,
                external_id=key.external_id,
                region=region,
            )

        response = self._call_in_region(
            region,
            "AssumeRole",
            lambda sts: sts.assume_role(**params),
            what=f"AssumeRole {key.role_arn}",
            fix=fix,
        )
        creds = response["Credentials"]
        return AssumeResult(
            region=region,
            access_key=creds["AccessKeyId"],
            secret_key=creds["SecretAccessKey"],
            token=creds["SessionToken"],
            expiration=creds["Expiration"],
            assumed_role_arn=response["AssumedRoleUser"]["Arn"],
            attempts=[AssumeAttempt(region, "ok")],
        )

    def assume(self, key: RoleKey) -> AssumeResult:
        """AssumeRole with failover across regions; customer errors stop at the first region."""
        result, _, attempts = self._failover(
            lambda region: self.assume_in_region(key, region),
            what=f"issue credentials for {key.role_arn}",
        )
        result.attempts = attempts
        return result

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
    ) -> RefreshableCredentials:
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

    def _first_credentials(self, key: RoleKey) -> RefreshableCredentials:
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
        duration = key.duration
        made = RefreshableCredentials.create_from_metadata(
            metadata=metadata,
            refresh_using=lambda: self._fetch(key),
            method="logferry-sts-broker",
            # botocore's defaults (15/10 min) would refresh 15-minute tokens on every use.
            advisory_timeout=min(15 * 60, duration // 4),
            mandatory_timeout=min(10 * 60, duration // 6),
        )
        made._time_fetcher = self._now_datetime
        with self._lock:
            self._cache[key] = made
            self._failures.pop(key, None)
        return made

    def _now_datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), tz=dt.UTC)

    def _fetch(self, key: RoleKey) -> dict[str, str]:
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
