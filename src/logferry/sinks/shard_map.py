"""The open shards of one stream, and where each record goes.

Kinesis routes a record by a 128-bit hash key: MD5 of the partition key, or the record's
`ExplicitHashKey` when given. Hashing random partition keys spreads records only statistically
(and Fluent Bit / Vector do just that); we instead pick the shard ourselves, round-robin over the
*open* shards, and give the record an explicit hash key inside that shard's range. The spread is
then exact, and a response whose `ShardId` differs from the shard we aimed at proves the map is
stale (a split, merge or UpdateShardCount happened): the sink lists the shards again.

The key is drawn at random inside the shard's range rather than at its midpoint so that, while
the map is stale, records aimed at a parent that has just been split still spread evenly over
both children.

Only `ListShards` is called here (the guide's permission policy allows it and nothing more).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HASH_KEY_MAX = 2**128 - 1


@dataclass(frozen=True, slots=True)
class Shard:
    """An open shard and its hash key range (both ends inclusive, as in ListShards)."""

    shard_id: str
    start: int
    end: int

    def contains(self, key: int) -> bool:
        return self.start <= key <= self.end

    def random_key(self, rng: random.Random) -> str:
        """A decimal ExplicitHashKey inside this shard's range."""
        width = self.end - self.start + 1
        return str(self.start + rng.getrandbits(128) % width)


class ShardMap:
    """A snapshot of the open shards (sorted by hash range) with a round-robin cursor."""

    def __init__(self, shards: Sequence[Shard], *, loaded_at: float, closed: int = 0) -> None:
        if not shards:
            raise ValueError("a shard map needs at least one open shard")
        self.shards: tuple[Shard, ...] = tuple(sorted(shards, key=lambda s: s.start))
        self.loaded_at = loaded_at
        self.closed = closed
        """How many closed (parent) shards ListShards still returned."""
        self._by_id = {s.shard_id: s for s in self.shards}
        self._cursor = 0

    def __len__(self) -> int:
        return len(self.shards)

    def ids(self) -> list[str]:
        return [s.shard_id for s in self.shards]

    def get(self, shard_id: str) -> Shard | None:
        return self._by_id.get(shard_id)

    def peek(self) -> Shard:
        """The shard the next record goes to (round-robin), without moving on."""
        return self.shards[self._cursor % len(self.shards)]

    def advance(self) -> None:
        self._cursor += 1

    def sticky(self, token: int) -> Shard:
        """A shard chosen by `token` (the pieces of one split line all share it)."""
        return self.shards[token % len(self.shards)]

    def shard_for_key(self, key: int) -> Shard | None:
        for shard in self.shards:
            if shard.contains(key):
                return shard
        return None

    def covers_keyspace(self) -> bool:
        """Open shards of a healthy stream tile 0..2^128-1 with no gap or overlap."""
        expected = 0
        for shard in self.shards:
            if shard.start != expected:
                return False
            expected = shard.end + 1
        return expected == HASH_KEY_MAX + 1


def parse_shards(raw: Sequence[dict[str, Any]]) -> tuple[list[Shard], int]:
    """Open shards from ListShards entries, and the number of closed ones.

    A shard is closed once its `SequenceNumberRange` has an `EndingSequenceNumber` (after a split
    or merge, or UpdateShardCount): writes never go there again.
    """
    open_shards: list[Shard] = []
    closed = 0
    for entry in raw:
        if "EndingSequenceNumber" in entry.get("SequenceNumberRange", {}):
            closed += 1
            continue
        keys = entry["HashKeyRange"]
        open_shards.append(
            Shard(entry["ShardId"], int(keys["StartingHashKey"]), int(keys["EndingHashKey"]))
        )
    return open_shards, closed


def list_shards(client: Any, stream_arn: str, *, page_size: int = 1000) -> list[dict[str, Any]]:
    """Every shard ListShards returns for the stream, following NextToken.

    The ARN (never the name) is sent on every page: a NextToken must not be combined with
    StreamName, and IAM authorizes the call against the stream ARN.
    """
    entries: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamARN": stream_arn, "MaxResults": page_size}
    while True:
        page = client.list_shards(**kwargs)
        entries.extend(page.get("Shards", []))
        token = page.get("NextToken")
        if not token:
            return entries
        kwargs["NextToken"] = token


def load_shard_map(
    client: Any, stream_arn: str, *, now: float, page_size: int = 1000
) -> ShardMap | None:
    """The current map, or None when the stream has no open shard (e.g. still being created)."""
    open_shards, closed = parse_shards(list_shards(client, stream_arn, page_size=page_size))
    if not open_shards:
        return None
    return ShardMap(open_shards, loaded_at=now, closed=closed)
