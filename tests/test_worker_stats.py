"""The worker's stats batch: every changed endpoint saved once per batch, a deleted one never."""

from __future__ import annotations

from dataclasses import asdict

from logferry.service.worker_stats import EndpointStats, StatsBook


def test_marked_stats_are_taken_once_and_retired_ones_never() -> None:
    book = StatsBook()
    a, b = EndpointStats(lines_accepted=1), EndpointStats(lines_accepted=2)
    book.mark("a", a)
    book.mark("a", a)
    book.mark("b", b)
    assert sorted((uid, row["lines_accepted"]) for uid, row in book.take()) == [("a", 1), ("b", 2)]
    assert book.take() == []
    book.mark("a", a)
    assert book.take_one("a") == asdict(a)
    assert book.take_one("a") is None
    book.mark("b", b)
    book.retire("b")  # deleted: a step still finishing must not bring its row back
    book.mark("b", b)
    assert book.take() == [] and book.take_one("b") is None
