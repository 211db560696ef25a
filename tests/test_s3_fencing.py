"""Write fencing at the destination and the journal seam, against the emulator in server mode.

Every write that ends a file (PutObject, CompleteMultipartUpload) carries `If-None-Match: *`:
a second writer of the same file — a stale owner, or an earlier life of the same sink whose
answer was lost — meets a 412 and takes the file's range as delivered. The journal lives
behind `JournalStore`; `MemoryKv` below stands in for the NATS KV record (a plain JSON document
saved only by the endpoint's current owner), never for our own code.

Every check reads the bucket back with the customer's admin credentials: one object per file,
each line exactly once, no multipart upload left open.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError

from logferry.aws.clients import AwsClients, AwsTarget
from logferry.aws.policies import S3_ACTIONS
from logferry.errors import TransientError
from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import Forward, ProxyRequest, ProxyResponse, latency_proxy
from logferry.sinks.backoff import Backoff
from logferry.sinks.base import SinkContext
from logferry.sinks.registry import factory
from logferry.sinks.s3 import S3Sink
from logferry.sinks.s3.recovery import LIFECYCLE_PROOF_SECONDS
from logferry.sinks.s3_config import S3Endpoint
from logferry.sinks.s3_journal import (
    DocumentJournal,
    Journal,
    JournalStore,
    has_unfinished,
    journal_store,
)
from logferry.spool.chunk import Chunk
from logferry.spool.errors import SpoolFenced
from s3_helpers import (
    S3Role,
    decode_object,
    make_s3_role,
    pending_uploads,
    pgp_keypair,
    read_objects,
    role_credentials,
)

T0 = 1_720_132_646.0
MIB = 1024 * 1024
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=60)


# --- the stand-in for the NATS KV record ------------------------------------------------------


class Fenced(Exception):
    """The stand-in's `SpoolFenced`: another node owns the endpoint now."""


@dataclass
class MemoryKv:
    """One endpoint's KV record: the journal document, its owner, a revision per write."""

    doc: str | None = None
    owner: str | None = None
    revision: int = 0
    writes: list[str] = field(default_factory=list)

    def take(self, node: str) -> MemoryDocuments:
        """`node` becomes the owner (the CAS on the endpoint key a takeover does)."""
        self.owner = node
        self.revision += 1
        return MemoryDocuments(self, node)


@dataclass
class MemoryDocuments:
    """One node's handle on the record: what `EndpointJournal` offers (load/save/discard)."""

    kv: MemoryKv
    node: str

    def load(self) -> dict[str, Any] | None:
        return None if self.kv.doc is None else dict(json.loads(self.kv.doc))

    def save(self, doc: dict[str, Any], *, sync: bool = True) -> None:
        if self.kv.owner != self.node:
            raise Fenced(f"{self.node} no longer owns the endpoint ({self.kv.owner} does)")
        self.kv.doc = json.dumps(doc)  # a plain JSON document, nothing else crosses
        self.kv.revision += 1
        self.kv.writes.append(self.node)

    def discard(self) -> None:
        if self.kv.owner != self.node:
            raise Fenced(self.node)
        self.kv.doc = None


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def role(emulator: Emulator) -> S3Role:
    """The guide's role: exactly s3:PutObject + s3:AbortMultipartUpload, no read at all."""
    return make_s3_role(emulator, lambda p: f"{p}-{uuid.uuid4().hex[:8]}")


def clients_for(emulator: Emulator, role: S3Role, url: str | None = None) -> AwsClients:
    return AwsClients(
        role_credentials(emulator, role),
        AwsTarget(endpoint_url=url or emulator.url),
        config=NO_RETRIES,
    )


def endpoint(role: S3Role, **fields: Any) -> S3Endpoint:
    fields.setdefault("path", f"f{random.getrandbits(32):08x}/")
    return S3Endpoint(name="Fence", bucket_name=role.bucket, iam_role=role.role_arn, **fields)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_sink(
    clients: AwsClients,
    ep: S3Endpoint,
    state_dir: Path,
    *,
    journal: Any = None,
    clock: Callable[[], float] = lambda: T0,
    **kwargs: Any,
) -> S3Sink:
    kwargs.setdefault("backoff", Backoff(base=0.01, cap=0.01, max_attempts=1))
    kwargs.setdefault("hostname", "cache-fence")
    return S3Sink(
        ep,
        clients,
        state_dir,
        uid_prefix="fx-",
        clock=clock,
        sleep=lambda _: None,
        journal=journal,
        **kwargs,
    )


def hex_lines(n: int, seed: int = 3) -> list[bytes]:
    """Lines that barely compress, to reach multipart sizes with little data."""
    rng = random.Random(seed)
    return [b"%07d " % i + rng.randbytes(60).hex().encode() for i in range(n)]


def one_chunk(lines: list[bytes]) -> Chunk:
    data = b"".join(line + b"\n" for line in lines)
    return Chunk(0, len(data), T0, data, len(lines))


def objects(emulator: Emulator, role: S3Role, ep: S3Endpoint) -> dict[str, bytes]:
    return {k: o.body for k, o in read_objects(emulator, role.bucket, ep.key_prefix).items()}


def no_open_uploads(emulator: Emulator, role: S3Role, ep: S3Endpoint) -> bool:
    return not [u for u in pending_uploads(emulator, role.bucket) if u["Key"].startswith(ep.path)]


def s3_operation(request: ProxyRequest) -> str:
    query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
    if request.method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if request.method == "PUT" and not query:
        return "PutObject"
    return request.method


_INTERNAL = b"<Error><Code>InternalError</Code><Message>reply lost</Message></Error>"


class LoseReplies:
    """Proxy middleware: the first `times` calls of `op` reach the emulator and are done there,
    but their answer is replaced by a 500 (the reply was lost on the way back)."""

    def __init__(self, op: str, times: int = 1) -> None:
        self.op = op
        self.left = times
        self.lost: list[int] = []

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        answer = await forward()
        if s3_operation(request) == self.op and self.left > 0 and answer.status == 200:
            self.left -= 1
            self.lost.append(answer.status)
            return ProxyResponse(500, {"content-type": "application/xml"}, _INTERNAL)
        return answer


# --- the customer's side: permissions and the emulator's conditional writes --------------------


def test_if_none_match_needs_only_the_guides_two_permissions(
    emulator: Emulator, role: S3Role
) -> None:
    """With exactly PutObject + AbortMultipartUpload (IAM enforced), a conditional write of a
    new key succeeds and one of an existing key is refused with 412 (not AccessDenied) — for
    PutObject and for CompleteMultipartUpload."""
    policy = emulator.client("iam").get_policy_version(
        PolicyArn=role.policy_arn,
        VersionId=emulator.client("iam").get_policy(PolicyArn=role.policy_arn)["Policy"][
            "DefaultVersionId"
        ],
    )["PolicyVersion"]["Document"]
    statements = policy["Statement"] if isinstance(policy, dict) else json.loads(policy)
    actions = statements["Action"] if isinstance(statements, dict) else statements[0]["Action"]
    assert sorted(actions) == sorted(S3_ACTIONS) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    s3 = clients_for(emulator, role).client("s3", "us-east-1")
    key = f"perm-{uuid.uuid4().hex[:8]}.log"
    s3.put_object(Bucket=role.bucket, Key=key, Body=b"first\n", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=role.bucket, Key=key, Body=b"second\n", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412

    def upload(key: str) -> tuple[str, list[dict[str, Any]]]:
        upload_id = s3.create_multipart_upload(Bucket=role.bucket, Key=key)["UploadId"]
        etag = s3.upload_part(
            Bucket=role.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"part\n"
        )["ETag"]
        return upload_id, [{"PartNumber": 1, "ETag": etag}]

    fresh = f"perm-{uuid.uuid4().hex[:8]}.log"
    upload_id, parts = upload(fresh)
    s3.complete_multipart_upload(
        Bucket=role.bucket,
        Key=fresh,
        UploadId=upload_id,
        MultipartUpload={"Parts": parts},
        IfNoneMatch="*",
    )
    upload_id, parts = upload(fresh)  # a second upload of the same key
    with pytest.raises(ClientError) as refused:
        s3.complete_multipart_upload(
            Bucket=role.bucket,
            Key=fresh,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfNoneMatch="*",
        )
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    s3.abort_multipart_upload(Bucket=role.bucket, Key=fresh, UploadId=upload_id)
    admin = emulator.client("s3")
    assert admin.get_object(Bucket=role.bucket, Key=key)["Body"].read() == b"first\n"
    assert admin.get_object(Bucket=role.bucket, Key=fresh)["Body"].read() == b"part\n"


def test_racing_conditional_writes_leave_one_winner(emulator: Emulator, role: S3Role) -> None:
    """Real S3 checks `If-None-Match` atomically with the write: of N writes racing on one key
    exactly one succeeds (the emulator's gap patch `_patch_s3_conditional_write_atomicity`)."""
    s3 = clients_for(emulator, role).client("s3", "us-east-1")
    for _ in range(3):
        key = f"race-{uuid.uuid4().hex[:8]}.log"
        start = threading.Barrier(8)

        def put(i: int, key: str = key, start: threading.Barrier = start) -> str:
            start.wait()
            try:
                s3.put_object(Bucket=role.bucket, Key=key, Body=b"%d\n" % i, IfNoneMatch="*")
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
            return f"ok:{i}"

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(put, range(8)))
        winners = [r for r in results if r.startswith("ok:")]
        assert len(winners) == 1 and results.count("PreconditionFailed") == 7, results
        body = emulator.client("s3").get_object(Bucket=role.bucket, Key=key)["Body"].read()
        assert body == winners[0][3:].encode() + b"\n"


# --- the sink: two writers of one file ---------------------------------------------------------


def test_two_sinks_completing_the_same_multipart_file_make_one_object(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """Split brain: two nodes each believe they own the endpoint and build the same file (same
    key) in their own multipart uploads; their completions race. One object; the loser takes
    the 412 as delivered, aborts its upload and reports no error."""
    ep = endpoint(role)
    lines = hex_lines(70_000)  # ≈ 8.6 MiB: one 5 MiB part + the last part
    chunk = one_chunk(lines)
    sinks = [
        make_sink(clients_for(emulator, role), ep, tmp_path / n, part_size=5 * MIB)
        for n in ("a", "b")
    ]
    start = threading.Barrier(2)
    for sink in sinks:
        sink.recover()
        # Both are held at their completion, then released together.
        sink._client().meta.events.register(
            "before-call.s3.CompleteMultipartUpload", lambda **_: (start.wait(), None)[1]
        )

    def deliver(sink: S3Sink) -> None:
        sink.feed(chunk)
        sink.flush()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(deliver, sinks))
    assert sorted(s.stats.already_complete for s in sinks) == [0, 1]
    assert sorted(s.stats.objects for s in sinks) == [0, 1]
    for sink in sinks:
        assert sink.durable_offset == chunk.end  # both: the range is delivered
        assert sink.stats.state == "ok" and sink.stats.last_error is None
        assert not sink.holds_data()
    (body,) = objects(emulator, role, ep).values()
    assert decode_object(body, ep.codec()) == chunk.data
    assert no_open_uploads(emulator, role, ep)  # the loser aborted its parts


def test_a_stale_owner_finishing_a_file_the_new_owner_wrote_takes_the_412(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """Node A journals a file's end (a flush) and sends its PutObject, which hangs (A is
    paused). B takes the endpoint over from the shared KV record, rebuilds the file from the
    spool under the same key and writes it. A resumes: its PutObject meets the key (412), its
    range is delivered, and its next journal write is fenced, so it stops."""
    ep = endpoint(role, compression_codec="gzip")
    kv = MemoryKv()
    lines = hex_lines(3000)
    chunk = one_chunk(lines)
    a_docs = kv.take("node-a")
    a = make_sink(clients_for(emulator, role), ep, tmp_path / "a", journal=a_docs)
    a.recover()
    in_flight, resume = threading.Event(), threading.Event()

    def hang(**_: Any) -> None:
        in_flight.set()
        resume.wait(60)

    a._client().meta.events.register("before-call.s3.PutObject", hang)
    with ThreadPoolExecutor(1) as pool:

        def deliver() -> None:
            a.feed(chunk)
            a.flush()

        a_done = pool.submit(deliver)
        assert in_flight.wait(30)
        journaled = json.loads(kv.doc or "{}")["active"]
        assert (journaled["start"], journaled["end"]) == (0, chunk.end)  # end before the write

        b = make_sink(clients_for(emulator, role), ep, tmp_path / "b", journal=kv.take("node-b"))
        assert b.open(0) == 0  # rebuild [0, end) under the journaled key
        b.feed(chunk)
        b.flush()
        assert b.durable_offset == chunk.end and b.stats.objects == 1
        resume.set()
        with pytest.raises(Fenced):
            a_done.result(timeout=60)  # its PutObject got 412; then its journal write failed
    assert a.stats.already_complete == 1 and a.stats.objects == 0
    assert a.stats.state == "ok"  # the 412 was no endpoint error
    assert kv.owner == "node-b" and "node-a" not in kv.writes[kv.writes.index("node-b") :]
    (body,) = objects(emulator, role, ep).values()
    assert decode_object(body, ep.codec()) == chunk.data


def test_a_409_conflict_is_retried_not_an_endpoint_error(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """S3 answers 409 ConditionalRequestConflict when another conditional write of the key is
    in progress (the emulator never does: a before-send hook answers it). AWS says retry: a
    transient error, and the retry settles it."""
    ep = endpoint(role)
    chunk = one_chunk(hex_lines(500))
    sink = make_sink(clients_for(emulator, role), ep, tmp_path)
    sink.recover()
    body = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ConditionalRequestConflict</Code>"
        b"<Message>A conflicting operation is in progress.</Message></Error>"
    )
    answered = [0]

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield body

    def conflict(request: Any, **_: Any) -> AWSResponse | None:
        if answered[0]:
            return None
        answered[0] += 1
        return AWSResponse(request.url, 409, {"Content-Type": "application/xml"}, Raw())

    sink._client().meta.events.register("before-send.s3.PutObject", conflict)
    sink.feed(chunk)
    with pytest.raises(TransientError) as info:
        sink.flush()
    assert info.value.code == "ConditionalRequestConflict"
    assert sink.status()["state"] == "retrying"
    assert sink.recover() == 0
    sink.feed(chunk)
    sink.flush()
    assert sink.status()["state"] == "ok" and sink.durable_offset == chunk.end
    assert list(objects(emulator, role, ep).values()) == [chunk.data]


def test_a_file_max_cut_replayed_on_another_host_ends_at_the_same_line(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """`file_max_bytes` counts framed bytes, and classic framing holds the delivering host's
    name: another node would cut the file elsewhere, and its fenced write (412 for the key of
    the first cut) would then drop or double lines. With a shared journal the cut is journaled
    before the write, so the new owner rebuilds exactly the first owner's file."""
    ep = endpoint(role, message_type="classic", file_max_bytes=MIB)
    lines = hex_lines(20_000)  # ≈ 2.5 MiB raw, ≈ 3.4 MiB framed: three or four files
    chunk = one_chunk(lines)
    kv = MemoryKv()
    a = make_sink(
        clients_for(emulator, role), ep, tmp_path / "a", journal=kv.take("a"), hostname="a"
    )
    a.recover()

    class Killed(BaseException):
        pass

    def die(**_: Any) -> None:
        raise Killed

    a._client().meta.events.register("after-call.s3.PutObject", die)
    with pytest.raises(Killed):
        a.feed(chunk)  # the first file is written, then the process dies
    assert len(objects(emulator, role, ep)) == 1
    b = make_sink(
        clients_for(emulator, role),
        ep,
        tmp_path / "b",
        journal=kv.take("b"),
        hostname="cache-node-with-a-much-longer-name",
    )
    assert b.open(0) == 0
    b.feed(chunk)
    b.flush()
    assert b.stats.already_complete == 1 and b.durable_offset == chunk.end
    got: list[bytes] = []
    for body in objects(emulator, role, ep).values():
        got += [line.split(b"]: ", 1)[1] for line in body.split(b"\n")[:-1]]
    assert sorted(got) == sorted(lines)  # every line exactly once


def test_a_domain_without_conditional_writes_is_written_unfenced(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """An S3-compatible store answering 501 NotImplemented to If-None-Match (a before-send hook
    stands in for it) still gets its files: the sink writes without the header from then on."""
    ep = endpoint(role)
    chunk = one_chunk(hex_lines(500))
    sink = make_sink(clients_for(emulator, role), ep, tmp_path)
    sink.recover()
    body = b"<Error><Code>NotImplemented</Code><Message>If-None-Match</Message></Error>"
    seen: list[bytes | str | None] = []

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield body

    def refuse_condition(request: Any, **_: Any) -> AWSResponse | None:
        seen.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") is None:
            return None
        return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, Raw())

    sink._client().meta.events.register("before-send.s3.PutObject", refuse_condition)
    sink.feed(chunk)
    sink.flush()
    assert seen == [b"*", None]
    assert sink.stats.unfenced and sink.status()["unfenced"] is True
    assert sink.stats.state == "ok" and sink.durable_offset == chunk.end
    assert list(objects(emulator, role, ep).values()) == [chunk.data]


# --- a completion whose answer is lost ----------------------------------------------------------


@pytest.mark.parametrize("size", ["single-part", "multipart"])
def test_a_completion_whose_reply_is_lost_is_replayed_without_duplicate_or_error(
    emulator: Emulator, role: S3Role, tmp_path: Path, size: str
) -> None:
    """The emulator does the write; the proxy loses its answer. The sink fails with a transient
    error, recovers and replays: no second object, no endpoint error, nothing left open."""
    op = "PutObject" if size == "single-part" else "CompleteMultipartUpload"
    lose = LoseReplies(op)
    ep = endpoint(role)
    lines = hex_lines(3000 if size == "single-part" else 70_000)
    chunk = one_chunk(lines)
    with latency_proxy(emulator.url, middlewares=[lose]) as proxy:
        clients = clients_for(emulator, role, proxy.url)
        first = make_sink(clients, ep, tmp_path, part_size=5 * MIB)
        first.recover()
        first.feed(chunk)
        with pytest.raises(TransientError):
            first.flush()
        assert lose.lost == [200]  # the emulator had done it
        assert len(objects(emulator, role, ep)) == 1
        again = first.recover()  # what the worker does after any failure
        assert again == (0 if size == "single-part" else chunk.end)
        if again < chunk.end:
            first.feed(chunk)
            first.flush()
        assert first.durable_offset == chunk.end
        assert first.stats.state == "ok"
    (body,) = objects(emulator, role, ep).values()
    assert body == chunk.data
    assert no_open_uploads(emulator, role, ep)
    if size == "single-part":
        assert first.stats.already_complete == 1


class AnswerNoSuchUpload:
    """Proxy middleware: a CompleteMultipartUpload of an upload that was already completed is
    answered 404 NoSuchUpload — what S3 may answer once a completed upload is forgotten (the
    emulator instead repeats its 200)."""

    def __init__(self) -> None:
        self.completed: set[str] = set()
        self.answered = 0

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        if s3_operation(request) != "CompleteMultipartUpload":
            return await forward()
        upload_id = parse_qs(urlsplit(request.path).query)["uploadId"][0]
        if upload_id in self.completed:
            self.answered += 1
            body = b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"
            return ProxyResponse(404, {"content-type": "application/xml"}, body)
        answer = await forward()
        if answer.status == 200:
            self.completed.add(upload_id)
        return answer


def _multipart_whose_completion_was_lost(
    emulator: Emulator, role: S3Role, tmp_path: Path, proxy_url: str, kv: MemoryKv, clock: Clock
) -> tuple[S3Endpoint, Chunk, int]:
    """Node A uploads a two-part file, completes it, and dies before journaling the completion
    (the answer lost): the KV record says the completion is in flight."""
    ep = endpoint(role)
    chunk = one_chunk(hex_lines(70_000))
    a = make_sink(
        clients_for(emulator, role, proxy_url),
        ep,
        tmp_path / "a",
        journal=kv.take("node-a"),
        clock=clock,
        part_size=5 * MIB,
    )
    a.recover()
    a.feed(chunk)

    class Killed(BaseException):
        pass

    def die(**_: Any) -> None:
        raise Killed

    a._client().meta.events.register("after-call.s3.CompleteMultipartUpload", die)
    with pytest.raises(Killed):
        a.flush()
    active = json.loads(kv.doc or "{}")["active"]
    assert active["upload_id"] and active["end"] == chunk.end
    assert len(objects(emulator, role, ep)) == 1
    return ep, chunk, a.durable  # what A's worker had committed: every journaled part


def test_no_such_upload_for_a_young_completing_upload_means_it_was_completed(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """B takes over a record whose file was complete-in-flight; S3 answers NoSuchUpload to
    B's completion. The spool already released the file, the upload is younger than any
    lifecycle rule and logferry never journaled an abort of it: B takes it as delivered."""
    gate = AnswerNoSuchUpload()
    kv, clock = MemoryKv(), Clock()
    with latency_proxy(emulator.url, middlewares=[gate]) as proxy:
        ep, chunk, released = _multipart_whose_completion_was_lost(
            emulator, role, tmp_path, proxy.url, kv, clock
        )
        assert released == chunk.end
        clock.now += 3600  # an hour later
        b_clients = clients_for(emulator, role, proxy.url)
        b = make_sink(b_clients, ep, tmp_path / "b", journal=kv.take("node-b"), clock=clock)
        assert b.open(released) == chunk.end
    assert gate.answered == 1
    assert b.durable_offset == chunk.end and b.lost == [] and b.stats.state == "ok"
    assert json.loads(kv.doc or "{}")["active"] is None
    (body,) = objects(emulator, role, ep).values()
    assert body == chunk.data
    assert no_open_uploads(emulator, role, ep)


def test_no_such_upload_for_an_old_completing_upload_is_reported_not_resent(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """The same, but the upload is older than the shortest lifecycle rule: it may have been
    completed or aborted by the rule. Its lines cannot be sent again (released), so they are
    taken as delivered and reported as a possibly lost range naming the key to check."""
    gate = AnswerNoSuchUpload()
    kv, clock = MemoryKv(), Clock()
    with latency_proxy(emulator.url, middlewares=[gate]) as proxy:
        ep, chunk, released = _multipart_whose_completion_was_lost(
            emulator, role, tmp_path, proxy.url, kv, clock
        )
        clock.now += LIFECYCLE_PROOF_SECONDS + 1
        b_clients = clients_for(emulator, role, proxy.url)
        b = make_sink(b_clients, ep, tmp_path / "b", journal=kv.take("node-b"), clock=clock)
        assert b.open(released) == chunk.end
    ((start, end, why),) = b.lost
    (key,) = objects(emulator, role, ep)
    assert (start, end) == (0, chunk.end) and key in why and "lifecycle" in why
    assert [(r.start, r.end) for r in factory("s3").lost_ranges(b)] == [(0, chunk.end)]


def test_no_such_upload_while_the_spool_still_holds_the_file_rebuilds_it_safely(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """Nothing needs proving while the spool still holds the file: it is rebuilt under the same
    key and If-None-Match settles it (here: 412, it had been completed)."""
    gate = AnswerNoSuchUpload()
    kv, clock = MemoryKv(), Clock()
    with latency_proxy(emulator.url, middlewares=[gate]) as proxy:
        ep, chunk, _ = _multipart_whose_completion_was_lost(
            emulator, role, tmp_path, proxy.url, kv, clock
        )
        b_clients = clients_for(emulator, role, proxy.url)
        b = make_sink(
            b_clients, ep, tmp_path / "b", journal=kv.take("node-b"), clock=clock, part_size=5 * MIB
        )
        assert b.open(0) == 0  # the spool was never committed past the file's start
        b.feed(chunk)
        b.flush()
    assert b.durable_offset == chunk.end and b.lost == []
    assert b.stats.already_complete == 1 and b.stats.objects == 0
    (body,) = objects(emulator, role, ep).values()
    assert body == chunk.data
    assert no_open_uploads(emulator, role, ep)


def test_an_upload_logferry_gave_up_is_never_mistaken_for_a_completed_one(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """A journaled upload that cannot be completed as journaled (InvalidPart) is given up:
    journaled as abandoned before its abort, so a crash right after the abort leaves a journal
    that makes the next recovery finish the abort and rebuild the file — not one that still
    names the upload, whose absence (NoSuchUpload) would then read as a completion."""
    ep = endpoint(role)
    chunk = one_chunk(hex_lines(70_000))
    kv = MemoryKv()
    docs = kv.take("node-a")
    a = make_sink(clients_for(emulator, role), ep, tmp_path, journal=docs, part_size=5 * MIB)
    a.recover()
    a.feed(chunk)

    class Killed(BaseException):
        pass

    def die(**_: Any) -> None:
        raise Killed

    client = a._client()
    client.meta.events.register("before-call.s3.CompleteMultipartUpload", die)
    with pytest.raises(Killed):
        a.flush()
    client.meta.events.unregister("before-call.s3.CompleteMultipartUpload", die)
    doc = json.loads(kv.doc or "{}")
    doc["active"]["parts"][0]["etag"] = '"0123456789abcdef0123456789abcdef"'  # → InvalidPart
    kv.doc = json.dumps(doc)
    upload_id = doc["active"]["upload_id"]
    b = make_sink(
        clients_for(emulator, role), ep, tmp_path, journal=kv.take("b"), part_size=5 * MIB
    )
    b._client().meta.events.register("after-call.s3.AbortMultipartUpload", die)
    with pytest.raises(Killed):
        b.open(0)
    doc = json.loads(kv.doc or "{}")
    assert doc["abandoned"] == [{"key": doc["active"]["key"], "upload_id": upload_id}]
    assert doc["active"]["upload_id"] is None
    assert no_open_uploads(emulator, role, ep)  # the abort was done, then the process died
    assert has_unfinished(DocumentJournal(MemoryDocuments(kv, "b")))
    c = make_sink(
        clients_for(emulator, role), ep, tmp_path, journal=kv.take("c"), part_size=5 * MIB
    )
    assert c.open(0) == 0  # aborted now; the file is rebuilt from the spool
    assert json.loads(kv.doc or "{}")["abandoned"] == []
    c.feed(chunk)
    c.flush()
    (body,) = objects(emulator, role, ep).values()
    assert body == chunk.data
    assert no_open_uploads(emulator, role, ep)


# --- PGP: the same fence ----------------------------------------------------------------------


def test_a_pgp_file_whose_put_reply_is_lost_is_not_written_twice(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """A PGP file is rebuilt from the spool after a failure and encrypted afresh (another
    session key, other bytes): the 412 keeps the first object, which decrypts to the lines."""
    public, secret = pgp_keypair()
    lose = LoseReplies("PutObject")
    ep = endpoint(role, public_key=public, compression_codec="gzip")
    chunk = one_chunk(hex_lines(2000))
    with latency_proxy(emulator.url, middlewares=[lose]) as proxy:
        sink = make_sink(clients_for(emulator, role, proxy.url), ep, tmp_path)
        sink.recover()
        sink.feed(chunk)
        with pytest.raises(TransientError):
            sink.flush()
        first = objects(emulator, role, ep)
        assert sink.recover() == 0
        sink.feed(chunk)
        sink.flush()
    assert sink.stats.already_complete == 1 and sink.durable_offset == chunk.end
    assert objects(emulator, role, ep) == first
    (body,) = first.values()
    assert decode_object(body, ep.codec(), secret) == chunk.data


# --- the journal seam ---------------------------------------------------------------------------


def test_the_factory_builds_the_sink_on_the_store_the_context_gives(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """`SinkContext.journal` = a document store (the NATS KV record's shape): the sink journals
    there and nothing under state_dir; None = the local file journal, as before."""
    ep = endpoint(role)
    clients = clients_for(emulator, role)
    s3 = factory("s3")
    kv = MemoryKv()
    context = SinkContext(tmp_path / "kv", "fx-", threading.Event(), journal=kv.take("n1"))
    sink = s3.build(ep, clients, context)
    assert sink.open(0) == 0
    sink.feed(one_chunk(hex_lines(100)))
    sink.flush()
    assert json.loads(kv.doc or "{}")["durable"] == sink.durable
    assert not (tmp_path / "kv" / "s3-journal").exists()
    assert not s3.has_unfinished_state(tmp_path / "kv")

    local = s3.build(ep, clients, SinkContext(tmp_path / "local", "fx-", threading.Event()))
    assert local.open(0) == 0
    assert Journal(tmp_path / "local").load() is not None
    store: JournalStore = journal_store(None, tmp_path / "local")
    assert isinstance(store, Journal)
    assert isinstance(journal_store(MemoryDocuments(kv, "n1"), tmp_path), DocumentJournal)


def test_another_nodes_upload_is_completed_at_takeover_so_its_late_parts_cannot_land(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """Node 1 stops after its first part (dead, or only paused with a part half sent); node 2
    takes the KV record over. It does not resume node 1's upload: it completes it with the
    journaled part at once and writes the rest to a new file. A part node 1 sends late (after
    SIGCONT) then meets NoSuchUpload instead of replacing a part of node 2's file."""
    kv = MemoryKv()
    ep = endpoint(role)
    clients = clients_for(emulator, role)
    everything = one_chunk(hex_lines(90_000))
    first = make_sink(clients, ep, tmp_path / "1", journal=kv.take("node-1"), part_size=5 * MIB)
    first.recover()
    for piece in _pieces(everything):
        first.feed(piece)
        if first.stats.parts >= 1:
            break
    (upload,) = [u for u in pending_uploads(emulator, role.bucket) if u["Key"].startswith(ep.path)]
    second = make_sink(clients, ep, tmp_path / "2", journal=kv.take("node-2"), part_size=5 * MIB)
    resume_at = second.open(0)
    assert resume_at > 0
    assert no_open_uploads(emulator, role, ep)  # node 1's upload is complete already
    # node 1 wakes up and sends its next part: the upload is gone
    s3 = clients.client("s3", ep.effective_region)
    with pytest.raises(ClientError) as late:
        s3.upload_part(
            Bucket=role.bucket,
            Key=upload["Key"],
            UploadId=upload["UploadId"],
            PartNumber=2,
            Body=b"late part from the paused node",
        )
    assert late.value.response["Error"]["Code"] == "NoSuchUpload"
    second.feed(everything)
    second.flush()
    found = objects(emulator, role, ep)
    assert len(found) == 2 and upload["Key"] in found
    assert found[upload["Key"]] == everything.data[:resume_at]
    rest = next(body for key, body in found.items() if key != upload["Key"])
    assert found[upload["Key"]] + rest == everything.data
    assert kv.doc is not None and json.loads(kv.doc)["active"] is None
    assert no_open_uploads(emulator, role, ep)
    assert not list((tmp_path / "2").glob("s3-journal*"))


def test_a_sink_that_no_longer_holds_its_endpoint_sends_nothing(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    """`SinkContext.holds` turns False (the lease lapsed while the node was paused): the next
    UploadPart is not sent, the sink raises SpoolFenced, and the upload keeps only what was
    sent before; the journal (the new owner's to act on) is untouched."""
    kv = MemoryKv()
    ep = endpoint(role)
    clients = clients_for(emulator, role)
    everything = one_chunk(hex_lines(90_000))
    holding = [True]
    pool = ThreadPoolExecutor(4)
    sink = make_sink(
        clients,
        ep,
        tmp_path / "1",
        journal=kv.take("node-1"),
        part_size=5 * MIB,
        holds=lambda: holding[0],
        io_executor=pool,
    )
    sink.recover()
    pieces = _pieces(everything)
    fed = 0
    while sink.stats.parts < 1:
        if fed < len(pieces):
            sink.feed(pieces[fed])
            fed += 1
        sink.pump(caught_up=False)
    journal_before = kv.doc
    holding[0] = False
    with pytest.raises(SpoolFenced, match="no longer owns the endpoint"):
        for piece in pieces[fed:]:
            sink.feed(piece)
            sink.pump(caught_up=False)
        sink.flush()
        while sink.holds_data():  # the refusal surfaces when its call is taken in
            sink.pump(caught_up=False)
            time.sleep(0.01)
    pool.shutdown(wait=True)
    (upload,) = [u for u in pending_uploads(emulator, role.bucket) if u["Key"].startswith(ep.path)]
    parts = emulator.client("s3").list_parts(
        Bucket=role.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    )
    assert [p["PartNumber"] for p in parts.get("Parts", [])] == [1]
    assert objects(emulator, role, ep) == {}
    assert kv.doc == journal_before
    emulator.client("s3").abort_multipart_upload(
        Bucket=role.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    )


def test_discard_forgets_the_journal_in_the_store(
    emulator: Emulator, role: S3Role, tmp_path: Path
) -> None:
    ep = endpoint(role)
    kv = MemoryKv()
    sink = make_sink(
        clients_for(emulator, role), ep, tmp_path, journal=kv.take("n"), part_size=5 * MIB
    )
    sink.recover()
    for piece in _pieces(one_chunk(hex_lines(60_000))):
        sink.feed(piece)
        if sink.stats.parts >= 1:
            break
    assert json.loads(kv.doc or "{}")["active"]["upload_id"]
    assert not no_open_uploads(emulator, role, ep)
    sink.discard()
    assert kv.doc is None
    assert no_open_uploads(emulator, role, ep)


def _pieces(chunk: Chunk) -> list[Chunk]:
    """`chunk` cut at line boundaries near every MiB, as a spool would hand it over."""
    out: list[Chunk] = []
    start = 0
    while start < chunk.end:
        cut = chunk.data.find(b"\n", start + MIB)
        end = chunk.end if cut < 0 else cut + 1
        out.append(Chunk(start, end, T0, chunk.data[start:end], 0))
        start = end
    return out


# --- through a real `logferry serve` ----------------------------------------------------------


class ReplyLog:
    """Proxy middleware (behind the chaos gate): which S3 writes the emulator answered how."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        answer = await forward()
        if request.service == "s3":
            self.seen.append((s3_operation(request), answer.status))
        return answer


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_serve_killed_while_a_put_reply_was_lost_meets_the_412_on_restart(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """kill -9 of `logferry serve` while the emulator has written a file but its answer is held
    by the fault proxy: the restarted serve replays the file, S3 answers 412, and the bucket
    holds every acknowledged line once, in one object, with no endpoint error."""
    from chaos.harness import gated_proxy, proxied_s3_config
    from e2e_helpers import bucket_content, wait_pending_zero
    from service_helpers import ServeProcess

    customer = unique("fence")
    token = "fence-customer-token-0123456789abcdef"
    role = make_s3_role(emulator, unique, external_id=customer)
    replies = ReplyLog()
    lines = [b"fence %05d %s" % (i, uuid.uuid4().hex.encode()) for i in range(2000)]
    with gated_proxy(emulator, more=[replies]) as (proxy, gate):
        config = proxied_s3_config(
            emulator, tmp_path / "spool", proxy.url, {}, customer, role, period=3600
        )
        serve = ServeProcess(emulator, config, tmp_path, env={"CHAOS_TOKEN": token})
        serve.start()
        armed = gate.arm(["PutObject"], "after")
        answer = serve.as_token(token).post(
            f"/v1/ingest/{customer}/s3", content=b"\n".join(lines) + b"\n"
        )
        assert answer.status_code == 202
        assert armed.held.wait(60), "the idle flush never sent its PutObject"
        serve.kill9()
        gate.disarm()
        assert len(read_objects(emulator, role.bucket)) == 1  # written; serve never knew
        serve.start()
        wait_pending_zero(serve, customer, "s3", timeout=120)
        status = serve.admin().get(f"/v1/customers/{customer}/endpoints/s3/status").json()
        assert serve.terminate() == 0
    assert ("PutObject", 412) in replies.seen
    assert [r for r in replies.seen if r[0] == "PutObject" and r[1] == 200] == [("PutObject", 200)]
    assert len(read_objects(emulator, role.bucket)) == 1
    assert bucket_content(emulator, role.bucket).lines == Counter(lines)
    assert status["errors"] == [] and status["last_error"] is None, status
    assert status["sink"]["already_complete"] == 1 and status["sink"]["state"] == "ok", status
