"""Helpers for the delivery end-to-end tests: drive a real `logferry serve` over its API and
read what landed with the customer's admin credentials.

Everything here observes from outside (HTTP status, the bucket, the stream, files on disk), so a
test built on it asserts the delivery contract, not the code's idea of it. Every wait is bounded
and, when it runs out, says what it last saw and quotes the tail of the serve log, so a stalled
endpoint fails in seconds with its reason instead of hanging the suite.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from logferry.aws.names import StreamArn
from logferry.local.emulator import Emulator
from logferry.local.toml_out import to_toml
from logferry.sinks.codecs import get_codec
from s3_helpers import read_objects
from service_helpers import ServeProcess

CODEC_BY_SUFFIX = {
    ".gz": get_codec("gzip", 1),
    ".zst": get_codec("zstd"),
}


def make_lines(tag: str, count: int, size: int = 100, start: int = 0) -> list[bytes]:
    """`count` distinct lines of exactly `size` bytes (newline not counted), numbered from
    `start` so every copy of a line can be traced back to its number."""
    out = []
    for i in range(start, start + count):
        head = f"{tag}-{i:08d} "
        out.append((head + "x" * max(0, size - len(head))).encode())
    return out


def body_of(lines: Iterable[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def lines_for_body(tag: str, total_bytes: int, size: int = 100) -> list[bytes]:
    """Lines whose newline-terminated body is exactly `total_bytes` long (the last line absorbs
    the remainder)."""
    per = size + 1
    count, rest = divmod(total_bytes, per)
    lines = make_lines(tag, count, size)
    if rest:
        assert rest > len(tag) + 10, "remainder too small for a numbered line"
        lines += make_lines(tag, 1, rest - 1, start=count)
    assert sum(len(line) + 1 for line in lines) == total_bytes
    return lines


# ---------------------------------------------------------------------------- serve + API


def rewrite_config(serve: ServeProcess, **tables: dict[str, Any]) -> None:
    """Merge `tables` into the serve config and rewrite its file (takes effect at next start)."""
    for key, value in tables.items():
        serve.config.setdefault(key, {}).update(value)
    serve.config_path.write_text(to_toml(serve.config))


def put_customer(admin: httpx.Client, customer: str) -> None:
    r = admin.put(f"/v1/customers/{customer}", json={})
    assert r.status_code in (200, 201), r.text


def put_endpoint(
    admin: httpx.Client, customer: str, name: str, body: dict[str, Any], *, verify: bool = False
) -> httpx.Response:
    query = "" if verify else "?verify=false"
    return admin.put(f"/v1/customers/{customer}/endpoints/{name}{query}", json=body)


def ingest(client: httpx.Client, customer: str, name: str, body: bytes) -> int:
    """POST one request; asserts 202 and returns the accepted line count."""
    r = client.post(f"/v1/ingest/{customer}/{name}", content=body, timeout=120)
    assert r.status_code == 202, (r.status_code, r.text[:500])
    return int(r.json()["accepted"])


def status(admin: httpx.Client, customer: str, name: str) -> dict[str, Any]:
    r = admin.get(f"/v1/customers/{customer}/endpoints/{name}/status")
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return dict(r.json())


def _log_tail(serve: ServeProcess, lines: int = 3) -> str:
    """The last error-ish lines of this start's log (the reason an endpoint stalled)."""
    text = serve.logs().splitlines()
    errors = [ln for ln in text if "error" in ln.lower()]
    return "\n".join(ln[-600:] for ln in (errors or text)[-lines:])


def wait_pending_zero(
    serve: ServeProcess,
    customer: str,
    name: str,
    *,
    timeout: float = 90.0,
    stall: float = 30.0,
) -> dict[str, Any]:
    """Poll the endpoint's status until no line is pending.

    Fails after `timeout`, or earlier when the endpoint reports an error and its pending count
    has not moved for `stall` seconds (a stuck endpoint fails fast, a slow one may finish), with
    the last status and the serve log's last errors."""
    started = time.monotonic()
    moved = started
    last: dict[str, Any] = {}
    previous: int | None = None
    with serve.admin() as admin:
        while True:
            now = time.monotonic()
            last = status(admin, customer, name)
            pending = last["lines"]["pending"]
            if pending == 0:
                return last
            if pending != previous:
                previous, moved = pending, now
            stuck = last.get("last_error") is not None and now - moved > stall
            if stuck or now - started > timeout:
                break
            time.sleep(0.5)
    brief = {k: last.get(k) for k in ("state", "lines", "last_error")}
    why = f"no progress for {stall}s" if stuck else f"not done after {timeout}s"
    raise AssertionError(
        f"{customer}/{name}: {previous} lines still pending ({why}); status {brief}\n"
        f"serve log:\n{_log_tail(serve)}"
    )


# ---------------------------------------------------------------------------- S3


@dataclass
class BucketContent:
    lines: Counter[bytes] = field(default_factory=Counter)
    sizes: dict[str, int] = field(default_factory=dict)
    """Object key → uncompressed size."""


def decode_key(key: str, body: bytes) -> bytes:
    """An object's uncompressed bytes, by its suffix (.gz, .zst, or none)."""
    for suffix, codec in CODEC_BY_SUFFIX.items():
        if key.endswith(suffix):
            return codec.decompress(body)
    assert key.endswith(".log"), f"unexpected object suffix: {key}"
    return body


def bucket_content(emulator: Emulator, bucket: str, prefix: str = "") -> BucketContent:
    out = BucketContent()
    for key, obj in read_objects(emulator, bucket, prefix).items():
        data = decode_key(key, obj.body)
        assert data.endswith(b"\n"), f"{key} does not end with a newline"
        out.sizes[key] = len(data)
        out.lines.update(data.split(b"\n")[:-1])
    return out


def assert_exactly_once(found: Counter[bytes], sent: Iterable[bytes]) -> None:
    """The multiset of delivered lines equals the multiset sent; the message says how not."""
    expected = Counter(sent)
    if found == expected:
        return
    missing = expected - found
    extra = found - expected
    dup = sum(n - 1 for line, n in found.items() if n > 1 and expected[line] < n)
    raise AssertionError(
        f"sent {sum(expected.values())} lines, found {sum(found.values())}: "
        f"{sum(missing.values())} missing, {sum(extra.values())} extra ({dup} duplicates); "
        f"first missing {sorted(missing)[:2]!r}, first extra {sorted(extra)[:2]!r}"
    )


# ---------------------------------------------------------------------------- Kinesis


class StreamTail:
    """Reads a stream's new records incrementally (one iterator per shard), as the admin, so a
    test can watch delivery progress cheaply. Assumes no resharding during the test."""

    def __init__(self, emulator: Emulator, stream: StreamArn) -> None:
        self.kinesis = emulator.client("kinesis", region=stream.region)
        self.stream = stream
        self.records: list[dict[str, Any]] = []
        self._iterators: dict[str, str | None] = {}
        shards = self.kinesis.list_shards(StreamARN=stream.arn)["Shards"]
        for shard in shards:
            self._iterators[shard["ShardId"]] = self.kinesis.get_shard_iterator(
                StreamARN=stream.arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]

    def poll(self) -> int:
        """Read whatever arrived since the last poll; the total number of records seen."""
        for shard, iterator in list(self._iterators.items()):
            while iterator:
                page = self.kinesis.get_records(
                    ShardIterator=iterator, Limit=10000, StreamARN=self.stream.arn
                )
                self.records += page["Records"]
                iterator = page.get("NextShardIterator")
                if not page["Records"]:
                    break
            self._iterators[shard] = iterator
        return len(self.records)


# ---------------------------------------------------------------------------- state on disk


def endpoint_uid(spool_dir: Path, customer: str, name: str) -> str:
    """The endpoint's uid prefix (names its spool directory) from the state db."""
    with sqlite3.connect(spool_dir / "logferry.db") as db:
        row = db.execute(
            "SELECT uid_prefix FROM endpoints WHERE customer_id=? AND name=?", (customer, name)
        ).fetchone()
    assert row is not None, f"no stored endpoint {customer}/{name}"
    return str(row[0])


def segment_files(spool_dir: Path, uid: str) -> list[Path]:
    return sorted((spool_dir / "data" / uid).glob("*.seg"))


LINE_NUMBER = re.compile(rb"-(\d{8}) ")


def line_number(data: bytes) -> int:
    """The number `make_lines` put in a line (found anywhere in framed record data)."""
    found = LINE_NUMBER.search(data)
    assert found is not None, f"no line number in {data[:80]!r}"
    return int(found.group(1))
