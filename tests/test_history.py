"""The console chart's per-minute ring (`service.history`), on a controlled clock."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from logferry.service.history import BUCKET_SECONDS, BUCKETS, EndpointHistory
from logferry.service.metrics import Metrics


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


def test_samples_in_threads_count_every_line_once() -> None:
    """History requests sample in threads (off the event loop), next to the background sampler:
    however they interleave, the buckets add up to the counters, never more."""
    metrics = Metrics(lambda: {})
    key = ("c", "e")
    service = SimpleNamespace(metrics=metrics, endpoints={key: None})
    history = EndpointHistory(clock=lambda: 600.0)
    stop = threading.Event()

    def deliver() -> None:
        for _ in range(20_000):
            metrics.delivered_lines.labels("c", "e", "s3").inc()
            metrics.delivered_bytes.labels("c", "e", "s3").inc(10)
        stop.set()

    def sampler() -> None:
        while not stop.is_set():
            history.sample(service)  # type: ignore[arg-type]

    threads = [threading.Thread(target=deliver)] + [
        threading.Thread(target=sampler) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history.sample(service)  # type: ignore[arg-type]
    buckets = history.buckets(key)
    assert sum(b["lines"] for b in buckets) == 20_000
    assert sum(b["bytes"] for b in buckets) == 200_000
