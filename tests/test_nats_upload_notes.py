"""A multipart upload created just before a delivery node dies is aborted by the node that
takes the endpoint over (real nats-server, real emulator with the guide's policy).

The window: CreateMultipartUpload has answered, and the journal (the endpoint's KV record) does
not name the upload yet. Its ID must already be somewhere the next owner, another machine, can
read: a note in the same record. A note on the dead node's disk leaves an empty upload billing
in the customer's bucket until a lifecycle rule ends it.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from logferry.aws.clients import AwsClients, AwsTarget
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from logferry.sinks.backoff import Backoff
from logferry.sinks.s3 import S3Sink
from logferry.sinks.s3_config import S3Endpoint
from logferry.spool.chunk import Chunk
from logferry.spool.errors import SpoolFenced
from logferry.spool.nats import NatsBackend
from logferry.spool.nats.errors import NatsUnavailable
from logferry.spool.nats.journal import EndpointJournal
from logferry.spool.nats.wire import encode_key
from nats_helpers import nats_server  # noqa: F401 - fixture
from nats_spool_helpers import backend, settings, until
from s3_helpers import make_s3_role, pending_uploads, read_objects, role_credentials

T0 = 1_720_132_646.0
MIB = 1024 * 1024


class Killed(BaseException):
    """kill -9 at this line: nothing after it runs on the node."""


class DiesBeforeJournalingTheUpload(EndpointJournal):
    """The record store of a node killed right after CreateMultipartUpload answered: its
    journal save that would name the upload never happens."""

    def save(self, doc: dict[str, Any], *, sync: bool = True) -> None:
        if (doc.get("active") or {}).get("upload_id"):
            raise Killed
        super().save(doc, sync=sync)


def _sink(emulator: Emulator, role: Any, ep: S3Endpoint, state: Path, journal: Any) -> S3Sink:
    clients = AwsClients(
        role_credentials(emulator, role),
        AwsTarget(endpoint_url=emulator.url),
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    return S3Sink(
        ep,
        clients,
        state,
        uid_prefix="un-",
        clock=lambda: T0,
        sleep=lambda _: None,
        backoff=Backoff(base=0.01, cap=0.01, max_attempts=1),
        hostname="cache-notes",
        part_size=5 * MIB,
        journal=journal,
    )


def _role_and_endpoint(emulator: Emulator, name: str) -> tuple[Any, S3Endpoint]:
    """The guide's role (PutObject + AbortMultipartUpload only) and an endpoint on its bucket."""
    role = make_s3_role(emulator, lambda p: f"{p}-{random.getrandbits(32):08x}")
    path = f"{name.lower()}-{random.getrandbits(32):08x}/"
    return role, S3Endpoint(name=name, bucket_name=role.bucket, iam_role=role.role_arn, path=path)


def _lines(n: int) -> bytes:
    """Lines that barely compress, so a few MiB make a multipart file."""
    rng = random.Random(7)
    return b"".join(b"%07d " % i + rng.randbytes(60).hex().encode() + b"\n" for i in range(n))


def _record(node: NatsBackend, bucket: str, key: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        kv = await node.kv(bucket)
        entry = await kv.get(encode_key(key))
        return dict(json.loads(entry.value or b"{}"))

    return node.call(get(), 10)


def test_an_upload_created_just_before_the_owner_died_is_aborted_by_the_next_owner(
    emulator: Emulator,
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    role, ep = _role_and_endpoint(emulator, "Notes")
    data = _lines(120_000)  # ~14.6 MiB of hex: three parts of 5 MiB
    everything = Chunk(0, len(data), T0, data, 120_000)
    s = settings(nats_server)

    def mine() -> list[dict[str, Any]]:
        return [u for u in pending_uploads(emulator, role.bucket) if u["Key"].startswith(ep.path)]

    async def run() -> None:
        async with backend(s, "node-a", tmp_path) as a:
            a.set_endpoints(["f"])
            await until(lambda: "f" in a.owned(), "a owns f")
            first = _sink(
                emulator, role, ep, tmp_path / "a-scratch", DiesBeforeJournalingTheUpload(a, "f")
            )
            await asyncio.to_thread(first.recover)
            try:
                await asyncio.to_thread(first.feed, everything)
            except Killed:
                pass
            else:
                raise AssertionError("the sink never created a multipart upload")
            (upload,) = await asyncio.to_thread(mine)
            record = await asyncio.to_thread(_record, a, s.endpoints_bucket, "f")
            assert record["uploads"] == [{"key": upload["Key"], "upload_id": upload["UploadId"]}]
            assert not list((tmp_path / "a-scratch").glob("created-*"))
        # node a is gone with its scratch directory; node b is another machine
        async with backend(s, "node-b", tmp_path) as b:
            b.set_endpoints(["f"])
            await until(lambda: "f" in b.owned(), "b takes f over")
            second = _sink(emulator, role, ep, tmp_path / "b-scratch", b.journal("f"))
            resume_at = await asyncio.to_thread(second.recover)
            assert resume_at == 0
            assert await asyncio.to_thread(mine) == []  # a's upload aborted at takeover
            assert second.stats.aborted_uploads == 1
            record = await asyncio.to_thread(_record, b, s.endpoints_bucket, "f")
            assert "uploads" not in record
            await asyncio.to_thread(second.feed, everything)
            await asyncio.to_thread(second.flush)
            found = await asyncio.to_thread(read_objects, emulator, role.bucket, ep.path)
            assert b"".join(o.body for _, o in sorted(found.items())) == data
            assert await asyncio.to_thread(mine) == []
            record = await asyncio.to_thread(_record, b, s.endpoints_bucket, "f")
            assert "uploads" not in record and record["journal"]["active"] is None

    asyncio.run(run())


def test_deleting_the_endpoint_on_a_node_that_does_not_own_it_aborts_the_noted_upload(
    emulator: Emulator,
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The API's delete may land on any node: it aborts the uploads the record's journal and
    notes name, although it cannot write the record (its owner is another node)."""
    role, ep = _role_and_endpoint(emulator, "Gone")
    data = _lines(60_000)
    s = settings(nats_server)

    def mine() -> list[dict[str, Any]]:
        return [u for u in pending_uploads(emulator, role.bucket) if u["Key"].startswith(ep.path)]

    async def run() -> None:
        async with (
            backend(s, "node-a", tmp_path) as a,
            backend(s, "node-b", tmp_path, deliver=False) as b,
        ):
            a.set_endpoints(["g"])  # b delivers nothing: a owns g throughout
            await until(lambda: "g" in a.owned(), "a owns g")
            owner = _sink(emulator, role, ep, tmp_path / "a", DiesBeforeJournalingTheUpload(a, "g"))
            await asyncio.to_thread(owner.recover)
            try:
                await asyncio.to_thread(owner.feed, Chunk(0, len(data), T0, data, 60_000))
            except Killed:
                pass
            assert len(await asyncio.to_thread(mine)) == 1
            await until(lambda: bool((b.ownership.record("g") or {}).get("uploads")), "b sees")
            deleting = _sink(emulator, role, ep, tmp_path / "b", b.journal("g"))
            try:
                await asyncio.to_thread(deleting.discard)
            except SpoolFenced:
                pass  # the record's own reset is the owner's (the service logs it)
            assert await asyncio.to_thread(mine) == []

    asyncio.run(run())


class OutOfReachWithTheLease(EndpointJournal):
    """The record store of a node whose NATS went away just after CreateMultipartUpload
    answered (no quorum): the note's write goes unanswered, and by then the node's lease has
    run out by its own clock, so its sink may send nothing, not even the abort."""

    def __init__(self, node: NatsBackend, key: str, lease: list[bool]) -> None:
        super().__init__(node, key)
        self.lease = lease

    def note_upload(self, key: str, upload_id: str) -> None:
        self.lease[0] = False
        raise NatsUnavailable("record write unanswered: NoStreamResponseError()")


@pytest.mark.parametrize("step", ["probe", "data"])
def test_an_upload_neither_noted_nor_aborted_is_aborted_when_the_node_recovers_again(
    emulator: Emulator,
    nats_server: NatsCluster,  # noqa: F811
    tmp_path: Path,
    step: str,
) -> None:
    """CI caught it in the no-quorum chaos test: the write probe's upload stayed open after
    NATS lost its quorum mid-probe. The record could not take the note and the fenced sink
    could not send the abort; the ID must then wait on this node's disk for its next recovery
    of the endpoint, which aborts it."""
    role, ep = _role_and_endpoint(emulator, "Reach")
    data = _lines(60_000)  # ~7.3 MiB: a multipart file
    s = settings(nats_server)

    def mine() -> list[dict[str, Any]]:
        return [u for u in pending_uploads(emulator, role.bucket) if u["Key"].startswith(ep.path)]

    async def run() -> None:
        async with backend(s, "node-a", tmp_path) as a:
            a.set_endpoints(["r"])
            await until(lambda: "r" in a.owned(), "a owns r")
            lease = [True]
            first = _sink(
                emulator, role, ep, tmp_path / "scratch", OutOfReachWithTheLease(a, "r", lease)
            )
            first._holds = lambda: lease[0]
            await asyncio.to_thread(first.recover)
            with pytest.raises(NatsUnavailable):
                if step == "probe":
                    await asyncio.to_thread(first.healthcheck)
                else:
                    await asyncio.to_thread(first.feed, Chunk(0, len(data), T0, data, 60_000))
            assert len(await asyncio.to_thread(mine)) == 1  # neither noted nor aborted
            assert len(list((tmp_path / "scratch").glob("created-*"))) == 1
            # the same node owns the endpoint again, with NATS back
            again = _sink(emulator, role, ep, tmp_path / "scratch", a.journal("r"))
            assert await asyncio.to_thread(again.recover) == 0
            assert await asyncio.to_thread(mine) == []
            assert again.stats.aborted_uploads == 1
            assert not list((tmp_path / "scratch").glob("created-*"))

    asyncio.run(run())
