"""The store's reads never wait for a writer: some run on the event loop (a first request's
stats, a customer lookup), where waiting behind a commit (fsync, synchronous=FULL) stalled every
request of every customer. Real SQLite files, a writer thread holding its transaction open."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from logferry.service.store import Store


def test_reads_go_on_while_a_write_transaction_is_open(tmp_path: Path) -> None:
    store = Store(tmp_path / "logferry.db")
    store.put_customer("cust-1", "ext-1")
    store.save_stats("uid-1", {"lines_accepted": 7})
    _, token = store.issue_token("cust-1")
    inside, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with store._tx() as db:  # e.g. a stats batch whose COMMIT waits on the disk
            db.execute("UPDATE endpoint_stats SET stats='{}' WHERE uid_prefix='uid-1'")
            inside.set()
            release.wait(30)

    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(slow_writer)
        assert inside.wait(10), writing.exception(timeout=1)
        try:
            reads = ThreadPoolExecutor(1).submit(
                lambda: (
                    store.load_stats("uid-1"),
                    store.get_customer("cust-1"),
                    store.customer_for_token(token),
                    store.list_endpoints(),
                )
            )
            stats, customer, owner, endpoints = reads.result(timeout=10)  # not blocked
        finally:
            release.set()
        writing.result(timeout=10)
    assert stats == {"lines_accepted": 7}
    assert customer is not None and customer.external_id == "ext-1"
    assert owner == "cust-1" and endpoints == []
    store.close()


def test_a_revoked_token_is_not_cached_by_a_lookup_that_overlapped_the_revocation(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "logferry.db")
    store.put_customer("cust-1", "ext-1")
    token_id, token = store.issue_token("cust-1")
    generation = store._token_generation
    assert store.revoke_token("cust-1", token_id)
    assert store._token_generation == generation + 2  # before and after the change
    assert store.customer_for_token(token) is None
    assert store.cached_customer_for_token(token) is None
    store.close()
