"""Assumed-role credentials that refresh by the lifetime STS granted, not the one we asked for.

botocore's `RefreshableCredentials` refreshes ahead of expiry in two windows: advisory (one
thread refreshes, the others go on with the old key) and mandatory (every caller waits for the
new key). Its defaults, 15 and 10 minutes, suit one-hour credentials; the broker used to scale
them to the *requested* DurationSeconds. But the Expiration STS returns is what counts: a role
whose session policy, a proxy or a chaos test (tests/chaos: keys that die every 30 s) hands out
shorter credentials would otherwise sit inside the advisory window from the first use and call
AssumeRole before every request. Here the windows are set from each answer's real lifetime
(expiry minus now): a quarter and a sixth of it, at most botocore's 15 and 10 minutes, so
AssumeRole runs about once per three quarters of a lifetime whatever STS granted.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from botocore.credentials import RefreshableCredentials
from botocore.utils import parse_timestamp

__all__ = ["StsCredentials", "refresh_windows"]

ADVISORY_MAX, MANDATORY_MAX = 15 * 60.0, 10 * 60.0
"""botocore's default windows, kept for credentials of an hour or more."""


def refresh_windows(lifetime: float) -> tuple[float, float]:
    """(advisory, mandatory) seconds before expiry for credentials that live `lifetime` s:
    botocore's 15 / 10 minutes of a one-hour credential, scaled down to shorter ones."""
    life = max(0.0, lifetime)
    return min(ADVISORY_MAX, life / 4), min(MANDATORY_MAX, life / 6)


class StsCredentials(RefreshableCredentials):
    """One role's shared, self-refreshing credentials, as the broker caches them.

    `fetch` returns botocore's refresh metadata (access_key, secret_key, token, expiry_time);
    `clock` is the broker's (tests move it). `refreshes` counts the AssumeRoles after the first.
    """

    def __init__(
        self,
        metadata: dict[str, str],
        fetch: Callable[[], dict[str, str]],
        *,
        clock: Callable[[], float] = time.time,
        method: str = "logferry-sts-broker",
    ) -> None:
        self._clock = clock
        self._fetch_metadata = fetch
        self._forced = False
        self.refreshes = 0
        expiry = parse_timestamp(metadata["expiry_time"])
        self.lifetime = expiry.timestamp() - clock()
        """Seconds the current key had to live when it arrived."""
        advisory, mandatory = refresh_windows(self.lifetime)
        super().__init__(
            access_key=metadata["access_key"],
            secret_key=metadata["secret_key"],
            token=metadata["token"],
            expiry_time=expiry,
            refresh_using=self._refreshed,
            method=method,
            time_fetcher=self._now,
            advisory_timeout=advisory,
            mandatory_timeout=mandatory,
        )

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    def _refreshed(self) -> dict[str, str]:
        """botocore's `refresh_using` (called under its refresh lock): new credentials, with the
        windows re-scaled to their lifetime before botocore installs them."""
        metadata = self._fetch_metadata()
        self.lifetime = parse_timestamp(metadata["expiry_time"]).timestamp() - self._clock()
        # botocore reads the windows from these attributes on every use (the constructor sets
        # them the same way); pinned botocore version, see pyproject.
        self._advisory_refresh_timeout, self._mandatory_refresh_timeout = refresh_windows(
            self.lifetime
        )
        self._forced = False
        self.refreshes += 1
        return metadata

    def refresh_needed(self, refresh_in: Any = None) -> bool:
        """botocore's check, plus "yes" after `force_refresh` until new credentials arrived."""
        return self._forced or bool(super().refresh_needed(refresh_in))

    def force_refresh(self) -> None:
        """AWS answered ExpiredToken although our clock says the key is valid (skew, a key cut
        short): fetch new credentials now, as a mandatory refresh — every caller waits for them,
        and an STS failure is raised. Only botocore's public `get_frozen_credentials` is used."""
        self._forced = True
        self.get_frozen_credentials()
