"""The registry in NATS KV (issue 29, Part B item 4): two nodes against one real nats-server.

Each `KvRegistry` is what one `logferry serve` process holds; two of them on the same server
stand for two nodes. What they must agree on: one uid per endpoint (it names the subject and
the S3 keys), external IDs bound once (tombstones too), tokens (a revocation stops the token on
the other node), and every change reaching the other node without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from logferry.local.nats_cluster import NatsCluster
from logferry.service.registry import Registry, StateStore
from logferry.service.registry_kv import KvRegistry, RegistryUnavailable
from logferry.service.store import ConfigToken, ExternalIdTaken, Store

pytest_plugins = ["tests.nats_helpers"]


def _node(cluster: NatsCluster, tmp: Path, name: str, prefix: str) -> KvRegistry:
    registry = KvRegistry(
        cluster.urls.split(","),
        prefix=prefix,
        replicas=1,
        local=Store(tmp / f"{name}.db"),
        name=name,
    )
    registry.start()
    return registry


@pytest.fixture
def two_nodes(
    nats_server: NatsCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[KvRegistry, KvRegistry]]:
    prefix = "T" + str(abs(hash(request.node.name)) % 10**8)
    a = _node(nats_server, tmp_path, "a", prefix)
    b = _node(nats_server, tmp_path, "b", prefix)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def test_both_stores_implement_the_protocols(tmp_path: Path) -> None:
    store: StateStore = Store(tmp_path / "x.db")  # mypy checks the assignment
    assert isinstance(store, Registry) and isinstance(store, StateStore)
    store.close()
    kv: StateStore = KvRegistry(
        ["nats://127.0.0.1:1"], prefix="X", replicas=1, local=Store(tmp_path / "y.db")
    )
    assert isinstance(kv, StateStore)
    kv.local.close()


def test_an_endpoint_made_on_one_node_is_served_by_the_other(
    two_nodes: tuple[KvRegistry, KvRegistry],
) -> None:
    a, b = two_nodes
    a.put_customer("acme", "acme-ext", {"spool_max_bytes": 1 << 20})
    record, new = a.put_endpoint("acme", "logs", "s3", {"bucket_name": "b"})
    assert new
    seen = _eventually(lambda: b.get_endpoint("acme", "logs"))
    assert seen.uid_prefix == record.uid_prefix and seen.config == {"bucket_name": "b"}
    assert _eventually(lambda: b.get_customer("acme")).spool_max_bytes == 1 << 20
    # an update of the same type keeps the uid (same subject, same S3 keys); another type not
    again, new = b.put_endpoint("acme", "logs", "s3", {"bucket_name": "c"})
    assert not new and again.uid_prefix == record.uid_prefix
    other, new = b.put_endpoint("acme", "logs", "kinesis", {"topic": "t"})
    assert new and other.uid_prefix != record.uid_prefix
    assert _eventually(
        lambda: (a.get_endpoint("acme", "logs") or record).uid_prefix == other.uid_prefix
    )
    assert b.delete_endpoint("acme", "logs") == other.uid_prefix
    _eventually(lambda: a.get_endpoint("acme", "logs") is None)
    assert a.delete_endpoint("acme", "logs") is None


def test_concurrent_creates_agree_on_one_uid(two_nodes: tuple[KvRegistry, KvRegistry]) -> None:
    a, b = two_nodes
    a.put_customer("c1", "c1")
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: (a if i % 2 else b).put_endpoint("c1", "e", "s3", {"i": i}), range(16)
            )
        )
    uids = {r.uid_prefix for r, _ in results}
    assert len(uids) == 1
    assert sum(new for _, new in results) == 1
    _eventually(
        lambda: (
            (a.get_endpoint("c1", "e") or results[0][0]).config
            == (b.get_endpoint("c1", "e") or results[1][0]).config
        )
    )


def test_external_ids_are_bound_once_ever(two_nodes: tuple[KvRegistry, KvRegistry]) -> None:
    a, b = two_nodes
    _, new = a.put_customer("one", "ext-1")
    assert new
    _, new = b.put_customer("one", "ext-1")  # the same customer again: fine, not new
    assert not new
    with pytest.raises(ExternalIdTaken):
        b.put_customer("two", "ext-1")
    a.put_endpoint("one", "e", "s3", {})
    uids = b.delete_customer("one")
    assert len(uids) == 1
    _eventually(lambda: a.get_customer("one") is None and a.get_endpoint("one", "e") is None)
    assert _eventually(lambda: a.external_id_bound("ext-1"))
    with pytest.raises(ExternalIdTaken) as caught:
        a.put_customer("three", "ext-1")
    assert caught.value.deleted


def test_tokens_and_revocation_reach_the_other_node(
    two_nodes: tuple[KvRegistry, KvRegistry],
) -> None:
    a, b = two_nodes
    a.put_customer("acme", "acme")
    token_id, token = a.issue_token("acme")
    assert _eventually(lambda: b.customer_for_token(token)) == "acme"
    assert b.customer_for_token(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert [t["id"] for t in b.list_tokens("acme")] == [token_id]
    assert b.revoke_token("acme", token_id)
    _eventually(lambda: a.customer_for_token(token) is None)
    assert not a.revoke_token("acme", token_id)
    # config tokens: the config is their truth
    a.reconcile_static_tokens({"acme": ["s3cret-static-token"]})
    assert _eventually(lambda: b.customer_for_token("s3cret-static-token")) == "acme"
    static_id = next(t["id"] for t in b.list_tokens("acme") if t["source"] == "config")
    with pytest.raises(ConfigToken):
        b.revoke_token("acme", static_id)
    assert b.reconcile_static_tokens({"acme": []}) == 1
    _eventually(lambda: a.customer_for_token("s3cret-static-token") is None)


def test_listeners_see_changes_on_their_loop(two_nodes: tuple[KvRegistry, KvRegistry]) -> None:
    a, b = two_nodes
    seen: list[tuple[str, Any, bool]] = []

    async def run() -> None:
        b.listen(lambda kind, key, record: seen.append((kind, key, record is not None)))

        async def until(event: tuple[str, Any, bool]) -> None:
            deadline = time.monotonic() + 10
            while event not in seen:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.02)

        # A KV watch shows the latest value of a key: a create and a delete in quick
        # succession may reach a lagging watcher as the delete alone, so wait for each.
        await asyncio.to_thread(a.put_customer, "acme", "acme")
        await until(("customer", "acme", True))
        await asyncio.to_thread(a.put_endpoint, "acme", "logs", "s3", {})
        await until(("endpoint", ("acme", "logs"), True))
        await asyncio.to_thread(a.delete_endpoint, "acme", "logs")
        await until(("endpoint", ("acme", "logs"), False))

    asyncio.run(run())


def test_unreachable_nats_is_a_clear_error(tmp_path: Path) -> None:
    registry = KvRegistry(
        ["nats://127.0.0.1:1"],
        prefix="X",
        replicas=1,
        local=Store(tmp_path / "z.db"),
        connect_timeout=1,
    )
    with pytest.raises((RegistryUnavailable, OSError)) as caught:
        registry.start()
    assert "127.0.0.1:1" in str(caught.value) or "connect" in str(caught.value).lower()


def test_applying_an_unchanged_config_again_costs_no_round_trip(
    two_nodes: tuple[KvRegistry, KvRegistry],
) -> None:
    """Every node applies the whole config at start: with thousands of customers and endpoints,
    one KV read each made a restart take seconds. What the mirror already holds unchanged is
    answered from memory; a change still goes through compare-and-set and reaches the other
    node."""
    a, b = two_nodes
    limits = {"spool_max_bytes": 1 << 20}
    a.put_customer("c1", "x-c1", limits)
    made, created = a.put_endpoint("c1", "e", "s3", {"bucket_name": "b", "period": 5})
    assert created
    _eventually(lambda: b.get_endpoint("c1", "e") is not None and b.get_customer("c1"))
    calls: list[Any] = []
    real_call = b._call

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real_call(*args, **kwargs)

    b._call = counting  # type: ignore[method-assign]
    customer, new = b.put_customer("c1", "x-c1", limits)
    assert (customer.spool_max_bytes, new) == (1 << 20, False)
    same, new = b.put_endpoint("c1", "e", "s3", {"bucket_name": "b", "period": 5})
    assert (same.uid_prefix, new) == (made.uid_prefix, False)
    assert calls == []
    changed, new = b.put_endpoint("c1", "e", "s3", {"bucket_name": "b", "period": 60})
    assert (changed.uid_prefix, changed.config["period"], new) == (made.uid_prefix, 60, False)
    b.put_customer("c1", "x-c1", {"spool_max_bytes": 2 << 20})
    assert len(calls) == 2
    _eventually(
        lambda: (
            (a.get_endpoint("c1", "e") or made).config["period"] == 60
            and (a.get_customer("c1") or customer).spool_max_bytes == 2 << 20
        )
    )


def test_a_config_of_many_endpoints_is_one_batch_and_both_nodes_agree(
    two_nodes: tuple[KvRegistry, KvRegistry],
) -> None:
    """A first start applies every config endpoint; one compare-and-set after another, 2,000
    endpoints waited 4,000 round trips. The batch writes them many at a time, in one call, and
    two nodes starting together with the same config still agree on one uid per endpoint."""
    a, b = two_nodes
    a.put_customer("c1", "x-c1")
    items = [("c1", f"e{i}", "s3", {"bucket_name": "b", "period": 5}) for i in range(120)]
    a.put_static_token("c1", "static-token-of-c1-0123456789")
    _eventually(
        lambda: b.get_customer("c1") and b.customer_for_token("static-token-of-c1-0123456789")
    )
    calls = {"a": 0, "b": 0}
    for name, node in (("a", a), ("b", b)):
        real_call = node._call

        def counting(*args: Any, _real: Any = real_call, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        node._call = counting  # type: ignore[method-assign]
    with ThreadPoolExecutor(2) as pool:
        from_a, from_b = pool.map(lambda node: node.put_endpoints(items), (a, b))
    assert calls == {"a": 1, "b": 1}
    assert [r.name for r, _ in from_a] == [f"e{i}" for i in range(120)], "answers keep the order"
    assert [r.uid_prefix for r, _ in from_a] == [r.uid_prefix for r, _ in from_b]
    assert len({r.uid_prefix for r, _ in from_a}) == 120
    assert sum(new for _, new in from_a + from_b) == 120, "each endpoint created once"
    # Applied again (a restart): answered from the mirror, static tokens too.
    _eventually(lambda: all(a.get_endpoint("c1", f"e{i}") for i in range(120)))
    reads: list[str] = []
    real_get = a._get

    async def counting_get(short: str, key: str) -> Any:
        reads.append(f"{short}/{key}")
        return await real_get(short, key)

    a._get = counting_get  # type: ignore[method-assign]
    again = a.put_endpoints(items)
    assert [r.uid_prefix for r, _ in again] == [r.uid_prefix for r, _ in from_a]
    assert a.reconcile_static_tokens({"c1": ["static-token-of-c1-0123456789"]}) == 0
    assert reads == [], "nothing read from KV: the mirror holds all of it unchanged"


def test_a_batch_waits_for_every_write_and_keeps_to_its_bound() -> None:
    """`_at_most`: no more than the bound in flight, and a failed write does not leave the
    others running unobserved (the caller sees the first error once all have ended)."""
    from logferry.service.registry_kv import _at_most

    in_flight = peak = finished = 0

    async def write(i: int) -> int:
        nonlocal in_flight, peak, finished
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (i % 3))
        in_flight -= 1
        finished += 1
        if i == 5:
            raise ValueError("write 5 refused")
        return i

    assert asyncio.run(_at_most(4, [write(i) for i in range(5)])) == [0, 1, 2, 3, 4]
    assert peak == 4
    finished = 0
    with pytest.raises(ValueError, match="write 5 refused"):
        asyncio.run(_at_most(4, [write(i) for i in range(20)]))
    assert finished == 20
