"""STS calls with regional failover: region health, one call classified, the failover loop.

The half of the credential broker (aws/sts_broker.py) that talks to STS. A region that cannot
serve now (unreachable, throttled, 5xx, RegionDisabledException) cools down and the next one is
tried; any other AWS answer is a setup problem that no other region would answer differently.
Cooldowns follow the one backoff policy (`logferry.backoff.Backoff`, without jitter).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TypeVar

from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
)

from logferry.aws.clients import AwsClients, AwsTarget
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
    unreachable_fix,
    vendor_fix,
)
from logferry.backoff import Backoff
from logferry.errors import AwsErrorInfo, InputError, SetupError, TransientError

__all__ = ["DEFAULT_STS_REGIONS", "StsFailover"]

DEFAULT_STS_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
T = TypeVar("T")


class StsFailover:
    """STS in several regions as the vendor: AssumeRole and GetCallerIdentity with failover.

    Thread-safe; STS calls block, so asyncio callers run them in a thread.
    """

    def __init__(
        self,
        *,
        vendor_account_id: str | None = None,
        regions: Iterable[str] = DEFAULT_STS_REGIONS,
        sts_endpoints: dict[str, str] | None = None,
        target: AwsTarget | None = None,
        vendor_credentials: object | None = None,
        profile: str | None = None,
        cooldown_seconds: float = 60.0,
        max_cooldown_seconds: float = 900.0,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.vendor_account_id = vendor_account_id
        self.regions = list(regions)
        if not self.regions:
            raise InputError("sts regions", "at least one STS region is needed.")
        self.sts_endpoints = dict(sts_endpoints or {})
        self.target = target or AwsTarget()
        self.cooldown_seconds = cooldown_seconds
        self.max_cooldown_seconds = max_cooldown_seconds
        self.cooldown = Backoff(base=cooldown_seconds, cap=max_cooldown_seconds, jitter="none")
        """How long a failing region waits before it is tried first again."""
        self.clock = clock
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._health = {region: RegionHealth() for region in self.regions}
        self._lock = threading.Lock()
        self._sts_clients: dict[str, BaseClient] = {}
        # The vendor's own identity; its STS clients share the process-wide service models.
        self._vendor = AwsClients(vendor_credentials, profile=profile)
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
        """A region's health after one call: an answer heals it; a failure cools it down for
        `cooldown.delay(failures - 1)` (the one backoff policy, without jitter: a schedule)."""
        with self._lock:
            health = self._health.setdefault(region, RegionHealth())
            if ok:
                health.failures = 0
                health.cooldown_until = 0.0
                health.last_error = None
            else:
                health.failures += 1
                health.cooldown_until = self.clock() + self.cooldown.delay(health.failures - 1)
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
