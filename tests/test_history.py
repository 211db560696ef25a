"""The console chart's per-minute ring (`service.history`), on a controlled clock."""

from __future__ import annotations

from logferry.service.history import BUCKET_SECONDS, BUCKETS, EndpointHistory


def test_counters_become_per_minute_buckets_for_the_last_hour() -> None:
    now = [3600.0 * 10]
    history = EndpointHistory(clock=lambda: now[0])
    key = ("c", "e")
    history.record(key, 10, 1000, 0)  # counters start at zero with the process
    history.record(key, 25, 2500, 1)
    now[0] += BUCKET_SECONDS
    history.record(key, 30, 3000, 1)
    now[0] += BUCKET_SECONDS
    history.record(key, 30, 3000, 1)  # nothing new: no bucket
    buckets = history.buckets(key)
    assert len(buckets) == BUCKETS
    assert buckets[-1]["start"] == now[0]
    assert [(b["lines"], b["bytes"], b["errors"]) for b in buckets[-3:]] == [
        (25, 2500, 1),
        (5, 500, 0),
        (0, 0, 0),
    ]
    now[0] += BUCKET_SECONDS * BUCKETS  # an hour later the old minutes have left the window
    assert sum(b["lines"] for b in history.buckets(key)) == 0
    assert history.buckets(("other", "e")) == [
        {"start": b["start"], "lines": 0, "bytes": 0, "errors": 0} for b in history.buckets(key)
    ]


def test_a_counter_that_restarts_counts_from_zero() -> None:
    history = EndpointHistory(clock=lambda: 120.0)
    history.record(("c", "e"), 50, 500, 0)
    history.record(("c", "e"), 7, 70, 0)  # went down: a new series
    assert sum(b["lines"] for b in history.buckets(("c", "e"))) == 57
