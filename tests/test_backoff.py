"""The one backoff policy: a capped exponential whose jitter each caller names."""

from __future__ import annotations

import random

import pytest

from logferry.backoff import Backoff
from logferry.sinks import backoff as sinks_backoff


def test_ceiling_doubles_from_base_up_to_cap() -> None:
    policy = Backoff(base=0.02, cap=1.0, jitter="none")
    assert [policy.delay(n) for n in range(8)] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
    assert policy.delay(10_000) == 1.0  # no overflow however long the outage


@pytest.mark.parametrize(("jitter", "low_share"), [("full", 0.0), ("equal", 0.5)])
def test_jitter_stays_within_its_share_of_the_ceiling(jitter: str, low_share: float) -> None:
    policy = Backoff(base=0.5, cap=30.0, jitter=jitter, rng=random.Random(7))  # type: ignore[arg-type]
    for attempt in range(12):
        ceiling = policy.ceiling(attempt)
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(low_share * ceiling <= d <= ceiling for d in delays)
        # Jittered: the delays spread over the range instead of repeating one value.
        assert max(delays) - min(delays) > 0.3 * (1 - low_share) * ceiling


def test_the_sinks_module_re_exports_the_same_policy() -> None:
    assert sinks_backoff.Backoff is Backoff
