"""S3Sink against the emulator, as the customer's role made with the guide's exact policy.

Every test reads the bucket back with the customer's admin credentials and compares lines
(a multiset: nothing lost, nothing doubled), keys (deterministic), and pending multipart uploads.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from logferry.aws.clients import DELIVERY_CONFIG, AwsClients, AwsTarget
from logferry.aws.policies import S3_ACTIONS
from logferry.errors import SetupError, TransientError
from logferry.local.emulator import Emulator
from logferry.sinks.aws_errors import classify
from logferry.sinks.backoff import Backoff, Stopped, retry_call, wait
from logferry.sinks.registry import factory
from logferry.sinks.s3 import S3Sink, SinkNeedsRecovery, stable_pid
from logferry.sinks.s3_config import S3Endpoint
from logferry.sinks.s3_journal import Journal
from logferry.spool.chunk import Chunk
from s3_helpers import (
    S3Role,
    decode_object,
    line_counter,
    make_chunks,
    make_s3_role,
    pending_uploads,
    pgp_keypair,
    read_objects,
    role_credentials,
    set_policy_actions,
)

T0 = 1_720_132_646.0  # 2024-07-04T22:37:26Z
MIB = 1024 * 1024
NO_BOTOCORE_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=60)
"""Only for the tests of the sink's own retry loop (`backoff=`), where botocore's retries would
absorb the injected faults before the loop sees them. Everything else runs at production
settings."""
SINK_LOOP_BACKOFF = Backoff(base=0.01, cap=0.05, max_attempts=4)
"""The sink's own loop, made visible: production leaves it at one call (S3Sink's default) and lets
botocore retry connection blips and the worker's RETRY_POLICY retry the rest."""
ALLOWED_OPERATIONS = {
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
}


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_role(emulator: Emulator) -> S3Role:
    """One bucket and guide-made role for the tests that only need a working destination."""
    import uuid

    return make_s3_role(emulator, lambda p: f"{p}-{uuid.uuid4().hex[:8]}")


_CREDENTIALS: dict[str, Any] = {}


class Harness:
    """A sink on the role's clients, an injectable clock, recorded sleeps and S3 operations."""

    def __init__(
        self,
        emulator: Emulator,
        role: S3Role,
        state_dir: Path,
        clients: AwsClients | None = None,
        *,
        botocore_retries: bool = True,
    ) -> None:
        self.emulator = emulator
        self.role = role
        self.state_dir = state_dir
        # The delivery clients' production config (botocore standard retries, 3 attempts), unless
        # a test of the sink's own retry loop turns botocore's retries off.
        if role.role_arn not in _CREDENTIALS:  # one AssumeRole per role (tokens last 1 h)
            _CREDENTIALS[role.role_arn] = role_credentials(emulator, role)
        self.clients = clients or AwsClients(
            _CREDENTIALS[role.role_arn],
            emulator.target,
            config=DELIVERY_CONFIG if botocore_retries else NO_BOTOCORE_RETRIES,
        )
        self.now = T0
        self.sleeps: list[float] = []
        self.operations: list[str] = []
        self.s3 = self.clients.client("s3", "us-east-1")
        self.s3.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.operations.append(model.name)

    def sink(self, endpoint: S3Endpoint, *, uid_prefix: str = "t1-", **kwargs: Any) -> S3Sink:
        return S3Sink(
            endpoint,
            self.clients,
            self.state_dir,
            uid_prefix=uid_prefix,
            clock=lambda: self.now,
            hostname="cache-sjc3128",
            sleep=self.sleeps.append,
            **kwargs,
        )

    def endpoint(self, **fields: Any) -> S3Endpoint:
        fields.setdefault("path", f"t{random.getrandbits(32):08x}/")
        return S3Endpoint(
            name="LogTest", bucket_name=self.role.bucket, iam_role=self.role.role_arn, **fields
        )

    def objects(self, endpoint: S3Endpoint) -> dict[str, Any]:
        return read_objects(self.emulator, self.role.bucket, endpoint.key_prefix)


def access_lines(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    paths = ["/", "/index.html", "/api/v1/items", "/static/app.js", "/img/logo.png"]
    return [
        (
            f'10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)} - - "GET '
            f'{rng.choice(paths)}?q={rng.randrange(10**6)} HTTP/1.1" {rng.choice([200, 304, 404])} '
            f"{rng.randrange(50_000)} req={i}"
        ).encode()
        for i in range(n)
    ]


def hex_lines(n: int, seed: int = 3, width: int = 120) -> list[bytes]:
    """Lines that barely compress, to reach multipart sizes with little data."""
    rng = random.Random(seed)
    return [b"%07d " % i + rng.randbytes(width // 2).hex().encode() for i in range(n)]


FRAMING = {
    "blank": re.compile(rb"^(?P<msg>.*)$"),
    "classic": re.compile(
        rb"^<134>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cache-sjc3128 "
        rb"LogTest\[(?P<pid>\d+)\]: (?P<msg>.*)$"
    ),
    "loggly": re.compile(
        rb"^<134>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cache-sjc3128 "
        rb"LogTest (?P<pid>\d+) - - (?P<msg>.*)$"
    ),
    "logplex": re.compile(
        rb"^(?P<len>\d+) (?P<rest><134>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cache-sjc3128 LogTest "
        rb"(?P<pid>\d+) - (?P<msg>.*))$"
    ),
}


def unframe(line: bytes, message_type: str) -> bytes:
    match = FRAMING[message_type].match(line)
    assert match is not None, (message_type, line[:120])
    if message_type == "logplex":
        assert int(match["len"]) == len(match["rest"]) + 1  # the count includes the newline
    return match["msg"]


def fault(
    status: int, code: str, message: str = "injected", times: int = 1
) -> Callable[..., AWSResponse | None]:
    """A before-send hook answering the first `times` requests with an S3 error document."""
    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>{message}</Message><RequestId>0</RequestId></Error>"
    ).encode()
    left = [times]

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield body

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        if left[0] <= 0:
            return None
        left[0] -= 1
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, Raw())

    return hook


def drop_connection(times: int = 1) -> Callable[..., None]:
    left = [times]

    def hook(request: Any, **_: Any) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise ConnectionClosedError(endpoint_url=request.url)

    return hook


def uid_offset(key: str, prefix: str = "t1-") -> int:
    match = re.search(re.escape(prefix) + r"([0-9a-f]{16})\.log", key)
    assert match, key
    return int(match.group(1), 16)


# --- lines in == lines out --------------------------------------------------------------------

CODECS = {
    "none": {},
    "gzip_level_7": {"gzip_level": 7},
    "gzip": {"compression_codec": "gzip"},
    "zstd": {"compression_codec": "zstd"},
    "snappy": {"compression_codec": "snappy"},
}


@pytest.mark.parametrize("message_type", ["blank", "classic", "loggly", "logplex"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_lines_in_equal_lines_out(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path, codec: str, message_type: str
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(period=60, message_type=message_type, **CODECS[codec])
    sink = h.sink(ep)
    assert sink.recover() == 0
    lines = access_lines(3000)
    # 30 chunks, 8 s apart: 240 s of data over 5 one-minute periods.
    chunks = list(make_chunks(lines, per_chunk=100, accepted_at=lambda i: T0 + 8 * i))
    for chunk in chunks:
        sink.feed(chunk)
    sink.flush()
    assert sink.durable_offset == chunks[-1].end

    objects = h.objects(ep)
    periods = sorted({ep.period_start(c.accepted_at) for c in chunks})
    assert len(objects) == len(periods) == 5
    codec_obj = ep.codec()
    got: Counter[bytes] = Counter()
    for key, obj in objects.items():
        assert key.startswith(ep.path) and key.endswith(ep.suffix)
        assert obj.content_type == codec_obj.content_type
        assert obj.content_encoding is None
        text = decode_object(obj.body, codec_obj)
        got.update(unframe(line, message_type) for line in line_counter([text]).elements())
    assert got == Counter(lines)
    # Keys: <path><period start>-<uid_prefix><start offset, hex>.log<suffix>, one per period.
    first_chunk_of = {}
    for chunk in chunks:
        first_chunk_of.setdefault(ep.period_start(chunk.accepted_at), chunk)
    expected = {ep.object_key(p, f"t1-{first_chunk_of[p].start:016x}") for p in periods}
    assert set(objects) == expected
    if message_type != "blank":
        pids = {FRAMING[message_type].match(line)["pid"] for line in text.split(b"\n")[:-1]}
        assert pids == {str(stable_pid("t1-")).encode()}
    assert pending_uploads(emulator, shared_role.bucket) == []
    assert set(h.operations) <= ALLOWED_OPERATIONS


@pytest.mark.parametrize("message_type", ["classic", "logplex"])
def test_file_max_bytes_rotates_on_framed_size(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path, message_type: str
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(file_max_bytes=MIB, message_type=message_type, compression_codec="zstd")
    sink = h.sink(ep)
    sink.recover()
    lines = access_lines(40_000, seed=11)  # ≈ 3.7 MiB raw, ≈ 5.5 MiB framed
    lines.insert(20_000, b"x" * (MIB + 10))  # one line longer than the limit: a file of its own
    chunks = list(make_chunks(lines, per_chunk=700, accepted_at=T0))
    for chunk in chunks:
        sink.feed(chunk)
    sink.flush()
    objects = h.objects(ep)
    files = sorted((uid_offset(k), decode_object(o.body, ep.codec())) for k, o in objects.items())
    sizes = [len(text) for _, text in files]
    assert len(files) >= 6
    oversize = [text for _, text in files if len(text) > MIB]
    assert len(oversize) == 1 and oversize[0].count(b"\n") == 1
    for (start, text), (next_start, next_text) in itertools.pairwise(files):
        raw = sum(len(unframe(line, message_type)) + 1 for line in text.split(b"\n")[:-1])
        assert start + raw == next_start  # files are contiguous byte ranges of the spool
        first_next = next_text[: next_text.index(b"\n") + 1]
        if len(text) <= MIB:  # greedy: the next file's first line would not have fitted
            assert len(text) + len(first_next) > MIB
    assert max(s for s in sizes if s != len(oversize[0])) <= MIB
    got = Counter(unframe(line, message_type) for _, t in files for line in t.split(b"\n")[:-1])
    assert got == Counter(lines)


def test_tick_closes_period_by_clock_and_flush_closes_early(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(period=300, compression_codec="gzip")
    sink = h.sink(ep)
    sink.recover()
    start = ep.period_start(T0)
    lines = access_lines(500)
    chunks = list(make_chunks(lines, per_chunk=100, accepted_at=T0))
    for chunk in chunks[:3]:
        sink.feed(chunk)
    h.now = start + 299
    sink.tick()
    assert h.objects(ep) == {}
    assert sink.durable_offset == 0
    h.now = start + 300
    sink.tick()
    assert list(h.objects(ep)) == [ep.object_key(start, "t1-" + "0" * 16)]
    assert sink.durable_offset == chunks[2].end
    # A late chunk of the same period starts a new file (same period, its own uid).
    sink.feed(chunks[3])
    sink.flush()
    assert len(h.objects(ep)) == 2
    assert sink.durable_offset == chunks[3].end
    sink.flush()  # nothing open: no-op
    assert len(h.objects(ep)) == 2


def test_a_file_stamped_while_the_clock_was_ahead_closes_once_the_clock_is_corrected(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    """Lines accepted during a forward step of the wall clock carry a period in the future; once
    the clock is set back, their file closes at the next tick instead of waiting (here a day)
    for real time to reach that period."""
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(period=300, compression_codec="gzip")
    sink = h.sink(ep)
    sink.recover()
    ahead = T0 + 86_400
    chunks = list(make_chunks(access_lines(200), per_chunk=100, accepted_at=ahead))
    for chunk in chunks:
        sink.feed(chunk)
    h.now = ahead + 10  # the clock is still ahead: the period has not ended
    sink.tick()
    assert h.objects(ep) == {}
    h.now = T0 + 20  # corrected
    sink.tick()
    assert list(h.objects(ep)) == [ep.object_key(ep.period_start(ahead), "t1-" + "0" * 16)]
    assert sink.durable_offset == chunks[-1].end


# --- determinism and replay -------------------------------------------------------------------


def test_replaying_the_same_range_writes_the_same_keys(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path / "a")
    ep = h.endpoint(period=60, file_max_bytes=MIB, compression_codec="gzip", message_type="loggly")
    lines = access_lines(30_000, seed=5)
    chunks = list(make_chunks(lines, per_chunk=1000, accepted_at=lambda i: T0 + 9 * i))
    first = h.sink(ep)
    first.recover()
    for chunk in chunks:
        first.feed(chunk)
    first.flush()
    before = h.objects(ep)
    assert len(before) >= 5
    # The journal is lost (new disk) and the whole range is sent again by the same incarnation.
    replay = Harness(emulator, shared_role, tmp_path / "b").sink(ep)
    assert replay.recover() == 0
    for chunk in chunks:
        replay.feed(chunk)
    replay.flush()
    after = h.objects(ep)
    assert set(after) == set(before)
    assert {k: o.body for k, o in after.items()} == {k: o.body for k, o in before.items()}
    # Each key was found written (If-None-Match: * → 412): nothing rewritten, no error.
    assert replay.stats.already_complete == len(before) and replay.stats.objects == 0
    assert replay.stats.state == "ok"


def test_restart_skips_what_is_durable_and_keeps_flush_boundaries(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(compression_codec="zstd")
    lines = access_lines(1000)
    chunks = list(make_chunks(lines, per_chunk=100, accepted_at=T0))
    first = h.sink(ep)
    first.recover()
    for chunk in chunks[:4]:
        first.feed(chunk)
    first.flush()  # an early boundary (not implied by the data)
    for chunk in chunks[4:7]:
        first.feed(chunk)
    del first  # crash: the open file [4, 7) never reached S3

    second = h.sink(ep)
    resume = second.recover()
    assert resume == chunks[4].start == second.durable_offset
    for chunk in chunks:  # the caller re-sends from its older commit point: skipped below resume
        second.feed(chunk)
    second.flush()
    objects = h.objects(ep)
    assert sorted(uid_offset(k) for k in objects) == [0, chunks[4].start]
    got = line_counter(decode_object(o.body, ep.codec()) for o in objects.values())
    assert got == Counter(lines)


def test_boundary_is_journaled_before_upload_and_rebuilt_exactly(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(compression_codec="gzip")
    lines = access_lines(600)
    chunks = list(make_chunks(lines, per_chunk=100, accepted_at=T0))
    first = h.sink(ep, backoff=Backoff(base=0.01, cap=0.01, max_attempts=1))
    first.recover()
    for chunk in chunks[:2]:
        first.feed(chunk)
    h.s3.meta.events.register("before-send.s3.PutObject", drop_connection(times=10))
    with pytest.raises(TransientError):
        first.flush()  # boundary at chunks[1].end decided and journaled, upload failed
    with pytest.raises(SinkNeedsRecovery):
        first.feed(chunks[2])
    state = Journal(tmp_path).load()
    assert state is not None and state.active is not None
    assert (state.active.start, state.active.end) == (0, chunks[1].end)
    assert h.objects(ep) == {}

    h.s3.meta.events.unregister("before-send.s3.PutObject")
    h2 = Harness(emulator, shared_role, tmp_path)
    second = h2.sink(ep)
    assert second.recover() == 0
    for chunk in chunks:  # same period: without the journal all six would form one file
        second.feed(chunk)
    second.flush()
    objects = h.objects(ep)
    assert sorted(uid_offset(k) for k in objects) == [0, chunks[1].end]
    first_file = objects[ep.object_key(ep.period_start(T0), "t1-" + "0" * 16)]
    assert decode_object(first_file.body, ep.codec()) == chunks[0].data + chunks[1].data


# --- multipart ------------------------------------------------------------------------------


def test_large_file_is_multipart_and_resumes_after_a_crash(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(compression_codec="gzip", gzip_level=None)
    lines = hex_lines(120_000)  # ≈ 15 MiB raw, ≈ 9 MiB gzip → two 5 MiB parts + a tail
    chunks = list(make_chunks(lines, per_chunk=2000, accepted_at=T0))
    first = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    first.recover()
    fed = 0
    while first.stats.parts < 1:
        first.feed(chunks[fed])
        fed += 1
    upload_id = Journal(tmp_path).load().active.upload_id  # type: ignore[union-attr]
    del first  # crash after part 1: the upload stays open in S3
    assert [u["UploadId"] for u in pending_uploads(emulator, shared_role.bucket)] == [upload_id]

    h2 = Harness(emulator, shared_role, tmp_path)
    second = h2.sink(ep, part_size=5 * MIB, member_size=MIB)
    resume = second.recover()
    assert 0 < resume <= chunks[fed - 1].end
    assert Journal(tmp_path).load().active.upload_id == upload_id  # type: ignore[union-attr]
    # The spool may cut chunks differently on replay: one chunk straddling `resume`.
    everything = b"".join(c.data for c in chunks)
    second.feed(Chunk(0, len(everything), T0, everything, len(lines)))
    second.flush()
    objects = h.objects(ep)
    assert len(objects) == 1
    (obj,) = objects.values()
    assert decode_object(obj.body, ep.codec()) == b"".join(c.data for c in chunks)
    assert pending_uploads(emulator, shared_role.bucket) == []
    assert second.stats.parts >= 1 and "CreateMultipartUpload" not in h2.operations
    assert set(h.operations) | set(h2.operations) <= ALLOWED_OPERATIONS
    etag = emulator.client("s3").head_object(Bucket=shared_role.bucket, Key=obj.key)["ETag"]
    assert re.search(r"-\d+\"?$", etag), etag  # a multipart object


def _emulator_reports_no_such_upload(emulator: Emulator, bucket: str) -> bool:
    try:
        emulator.client("s3").upload_part(
            Bucket=bucket, Key="probe", UploadId="gone", PartNumber=1, Body=b""
        )
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "NoSuchUpload"
    return False


def test_upload_that_vanished_is_rewritten_from_its_start(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    # A missing emulator patch must fail this test, never skip it silently.
    assert _emulator_reports_no_such_upload(emulator, shared_role.bucket), (
        "the emulator answers UploadPart on an unknown UploadId without 404 NoSuchUpload: the "
        "S3 unknown-upload patch in logferry.local.patches is missing or broken (moto 5.2.5 gap)"
    )
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint()
    lines = hex_lines(60_000)
    chunks = list(make_chunks(lines, per_chunk=2000, accepted_at=T0))
    first = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    first.recover()
    fed = 0
    while first.stats.parts < 1:
        first.feed(chunks[fed])
        fed += 1
    del first
    (upload,) = pending_uploads(emulator, shared_role.bucket)
    emulator.client("s3").abort_multipart_upload(  # e.g. a lifecycle rule did it
        Bucket=shared_role.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    )
    second = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    assert second.recover() == 0
    for chunk in chunks:
        second.feed(chunk)
    second.flush()
    (obj,) = h.objects(ep).values()
    assert obj.key == upload["Key"]
    assert obj.body == b"".join(c.data for c in chunks)
    assert pending_uploads(emulator, shared_role.bucket) == []


# --- PGP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["small", "multipart"])
def test_pgp_files_decrypt_with_the_private_key(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path, size: str
) -> None:
    public, secret = pgp_keypair()
    h = Harness(emulator, shared_role, tmp_path)
    if size == "small":
        ep = h.endpoint(public_key=public, compression_codec="gzip", message_type="classic")
        lines = access_lines(2000)
    else:
        ep = h.endpoint(public_key=public)
        lines = hex_lines(50_000)  # ≈ 6 MiB: multipart at 5 MiB parts, from the temp file
    sink = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    sink.recover()
    for chunk in make_chunks(lines, per_chunk=500, accepted_at=T0):
        sink.feed(chunk)
    assert list(tmp_path.glob("*.spill")), "PGP files are buffered on disk, not in memory"
    sink.flush()
    assert not list(tmp_path.glob("*.spill")) and not list(tmp_path.glob("*.pgp-out"))
    (obj,) = h.objects(ep).values()
    assert obj.key.endswith(ep.suffix) and ep.suffix.endswith(".pgp")
    assert obj.content_type == "application/pgp-encrypted"
    assert not obj.body.startswith(b"-----BEGIN")  # binary OpenPGP message
    text = decode_object(obj.body, ep.codec(), secret)
    got = Counter(unframe(line, ep.message_type) for line in text.split(b"\n")[:-1])
    assert got == Counter(lines)
    assert ("UploadPart" in h.operations) == (size == "multipart")


def test_pgp_crash_mid_multipart_aborts_and_rebuilds(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    public, secret = pgp_keypair()
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(public_key=public)
    lines = hex_lines(90_000)  # ≈ 11 MiB: three parts
    chunks = list(make_chunks(lines, per_chunk=1000, accepted_at=T0))
    first = h.sink(ep, part_size=5 * MIB, member_size=MIB, backoff=Backoff(max_attempts=1))
    first.recover()
    for chunk in chunks:
        first.feed(chunk)
    calls = [0]

    def second_part_fails(request: Any, **_: Any) -> None:
        calls[0] += 1
        if calls[0] >= 2:
            raise ConnectionClosedError(endpoint_url=request.url)

    h.s3.meta.events.register("before-send.s3.UploadPart", second_part_fails)
    with pytest.raises(TransientError):
        first.flush()
    h.s3.meta.events.unregister("before-send.s3.UploadPart", second_part_fails)
    assert len(pending_uploads(emulator, shared_role.bucket)) == 1

    second = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    assert second.recover() == 0  # an OpenPGP message cannot be continued: abort, rebuild
    assert pending_uploads(emulator, shared_role.bucket) == []
    assert second.stats.aborted_uploads == 1
    for chunk in chunks:
        second.feed(chunk)
    second.flush()
    (obj,) = h.objects(ep).values()
    assert decode_object(obj.body, ep.codec(), secret) == b"".join(c.data for c in chunks)


# --- permissions, setup errors, healthcheck ---------------------------------------------------


def test_healthcheck_passes_with_the_guide_policy_and_leaves_nothing(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique, prefix="cdn/")
    h = Harness(emulator, role, tmp_path)
    sink = h.sink(h.endpoint(path="cdn/%Y/%m/"))
    sink.healthcheck()
    assert h.operations == ["CreateMultipartUpload", "AbortMultipartUpload"]
    assert pending_uploads(emulator, role.bucket) == []
    assert sink.stats.state == "ok"


def test_missing_abort_permission_is_named_by_healthcheck(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique, actions=["s3:PutObject"])
    h = Harness(emulator, role, tmp_path)
    sink = h.sink(h.endpoint())
    with pytest.raises(SetupError) as info:
        sink.healthcheck()
    err = info.value
    assert err.code == "AccessDenied"
    assert err.info.operation == "AbortMultipartUpload"
    assert "s3:AbortMultipartUpload" in err.fix
    assert f"arn:aws:s3:::{role.bucket}/" in err.fix
    assert "abort-multipart-upload" in err.fix  # how to remove the probe it could not abort
    assert sink.stats.state == "error" and sink.stats.last_error.code == "AccessDenied"
    for upload in pending_uploads(emulator, role.bucket):  # clean up as the fix says
        emulator.client("s3").abort_multipart_upload(
            Bucket=role.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )


class _Killed(BaseException):
    """A simulated kill -9 between two AWS calls (not an Exception: nothing catches it)."""


def test_a_probe_left_open_by_a_crash_is_aborted_on_the_next_start(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique)
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint()

    def killed(**_: Any) -> None:
        raise _Killed

    h.s3.meta.events.register("before-call.s3.AbortMultipartUpload", killed)
    with pytest.raises(_Killed):
        h.sink(ep).healthcheck()  # the probe is created, the process dies before the abort
    h.s3.meta.events.unregister("before-call.s3.AbortMultipartUpload", killed)
    (left,) = pending_uploads(emulator, role.bucket)
    assert ".logferry-healthcheck-" in left["Key"]

    assert h.sink(ep).recover() == 0  # the restarted endpoint
    assert pending_uploads(emulator, role.bucket) == []


@pytest.mark.parametrize("failure", ["kill -9", "disk error"])
def test_an_upload_created_before_the_journal_knew_it_is_aborted_by_recovery(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path, failure: str
) -> None:
    """CreateMultipartUpload answered, then the process dies (or the journal write fails)
    before the journal holds the ID: the upload must not stay open in the customer's bucket,
    and the file is rebuilt under the same key."""
    role = make_s3_role(emulator, unique)
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint(compression_codec="gzip", gzip_level=None)
    lines = hex_lines(120_000)  # ≈ 15 MiB raw, ≈ 9 MiB gzip: multipart at 5 MiB parts
    everything = b"\n".join(lines) + b"\n"
    chunk = Chunk(0, len(everything), T0, everything, len(lines))
    first = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    first.recover()
    save = first._journal.save
    error: BaseException = _Killed() if failure == "kill -9" else OSError(28, "No space left")

    def failing_save(state: Any, **kwargs: Any) -> None:
        if state.active is not None and state.active.upload_id is not None:
            raise error
        save(state, **kwargs)

    first._journal.save = failing_save  # type: ignore[method-assign]
    with pytest.raises(type(error)):
        first.feed(chunk)
    (left,) = pending_uploads(emulator, role.bucket)  # created; its ID reached only the note
    assert left["Key"].startswith(ep.key_prefix)

    if failure == "kill -9":
        del first
        second = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    else:  # the same process recovers the failed sink
        first._journal.save = save  # type: ignore[method-assign]
        second = first
    assert second.recover() == 0
    assert pending_uploads(emulator, role.bucket) == []
    assert second.stats.aborted_uploads == 1
    second.feed(chunk)
    second.flush()
    (obj,) = h.objects(ep).values()
    assert obj.key == left["Key"]  # the same file, rebuilt
    assert decode_object(obj.body, ep.codec()) == everything
    assert pending_uploads(emulator, role.bucket) == []
    assert not list(tmp_path.glob("created-*"))


def test_a_note_caught_before_its_rename_is_aborted_and_a_torn_one_removed(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique)
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint()
    key = f"{ep.key_prefix}left-by-a-crash.log.gz"
    upload_id = h.s3.create_multipart_upload(Bucket=role.bucket, Key=key)["UploadId"]
    (tmp_path / "created-0123456789abcdef.json.tmp").write_text(
        json.dumps({"key": key, "upload_id": upload_id})
    )
    (tmp_path / "created-fedcba9876543210.json.tmp").write_text('{"key": "x", "upl')
    assert h.sink(ep).recover() == 0
    assert pending_uploads(emulator, role.bucket) == []
    assert not list(tmp_path.glob("created-*"))


def test_recovery_that_must_abort_names_the_missing_permission(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique, actions=["s3:PutObject"])
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint()
    chunks = list(make_chunks(hex_lines(50_000), per_chunk=2000, accepted_at=T0))
    first = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    first.recover()

    def die(**_: Any) -> None:
        raise _Killed

    # Killed after CreateMultipartUpload, before its first part: an upload holding nothing.
    h.s3.meta.events.register("before-call.s3.UploadPart", die)
    with pytest.raises(_Killed):
        for chunk in chunks:
            first.feed(chunk)
    h.s3.meta.events.unregister("before-call.s3.UploadPart", die)
    del first
    # The endpoint comes back as a new incarnation: the empty upload cannot be continued.
    second = h.sink(ep, uid_prefix="t2-", part_size=5 * MIB, member_size=MIB)
    with pytest.raises(SetupError) as info:
        second.recover()
    assert "s3:AbortMultipartUpload" in info.value.fix
    assert len(pending_uploads(emulator, role.bucket)) == 1  # not orphaned: still journaled
    assert Journal(tmp_path).load().active is not None  # type: ignore[union-attr]

    set_policy_actions(emulator, role, S3_ACTIONS)  # the customer applies the fix
    assert second.recover() == 0
    assert pending_uploads(emulator, role.bucket) == []
    for chunk in chunks:
        second.feed(chunk)
    second.flush()
    (obj,) = h.objects(ep).values()
    assert "t2-" in obj.key and obj.body == b"".join(c.data for c in chunks)


def test_a_changed_endpoint_completes_parts_the_spool_already_released(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    """Parts uploaded and journaled are what lets the spool release their lines, so a new
    incarnation (changed settings) completes them as an object instead of aborting them."""
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint()
    chunks = list(make_chunks(hex_lines(80_000), per_chunk=2000, accepted_at=T0))  # 1 part + rest
    first = h.sink(ep, part_size=5 * MIB, member_size=MIB)
    first.recover()
    for chunk in chunks:
        first.feed(chunk)
    assert first.stats.parts == 1
    released = first.durable  # what the worker commits: the end of the journaled part
    assert chunks[0].start < released < chunks[-1].end
    del first  # crash with an open upload
    second = h.sink(ep, uid_prefix="t2-", part_size=5 * MIB, member_size=MIB)
    assert second.open(released) == released
    for chunk in chunks:
        second.feed(chunk)
    second.flush()
    objects = h.objects(ep)
    assert len(objects) == 2 and pending_uploads(emulator, shared_role.bucket) == []
    body = b"".join(o.body for o in sorted(objects.values(), key=lambda o: "t2-" in o.key))
    assert body == b"".join(c.data for c in chunks)


def test_access_denied_keeps_the_data_until_fixed(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique, prefix="allowed/")
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint(path="other/", compression_codec="gzip")
    lines = access_lines(300)
    chunks = list(make_chunks(lines, per_chunk=100, accepted_at=T0))
    sink = h.sink(ep)
    assert sink.recover() == 0
    for chunk in chunks:
        sink.feed(chunk)
    with pytest.raises(SetupError) as info:
        sink.flush()
    err = info.value
    assert err.code == "AccessDenied" and err.info.operation == "PutObject"
    assert f"s3:PutObject on arn:aws:s3:::{role.bucket}/other/*" in err.fix
    assert sink.stats.state == "error"
    assert sink.stats.last_error is not None and sink.stats.last_error.fix == err.fix
    assert sink.durable_offset == 0  # the caller keeps every line
    assert h.sleeps == []  # a setup error is never retried

    # The customer widens the policy; the caller recovers and re-feeds from the answer.
    iam = emulator.client("iam")
    iam.create_policy_version(
        PolicyArn=role.policy_arn,
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": {
                    "Effect": "Allow",
                    "Action": S3_ACTIONS,
                    "Resource": f"arn:aws:s3:::{role.bucket}/*",
                },
            }
        ),
        SetAsDefault=True,
    )
    assert sink.recover() == 0
    for chunk in chunks:
        sink.feed(chunk)
    sink.flush()
    got = line_counter(decode_object(o.body, ep.codec()) for o in h.objects(ep).values())
    assert got == Counter(lines)
    assert sink.stats.state == "ok"


def test_missing_bucket_is_a_setup_error_with_the_bucket_named(
    emulator: Emulator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    role = make_s3_role(emulator, unique, create_bucket=False)
    h = Harness(emulator, role, tmp_path)
    ep = h.endpoint()
    sink = h.sink(ep)
    sink.recover()
    sink.feed(next(make_chunks([b"hello"], accepted_at=T0)))
    with pytest.raises(SetupError) as info:
        sink.flush()
    assert info.value.code == "NoSuchBucket"
    assert role.bucket in info.value.fix
    assert sink.durable_offset == 0


def test_headers_storage_class_and_encryption(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint(
        compression_codec="zstd",
        redundancy="standard_ia",
        server_side_encryption="aws:kms",
        server_side_encryption_kms_key_id="alias/logs",
    )
    sink = h.sink(ep)
    sink.recover()
    sink.feed(next(make_chunks(access_lines(10), accepted_at=T0)))
    sink.flush()
    (obj,) = h.objects(ep).values()
    assert obj.content_type == "application/zstd"
    assert obj.storage_class == "STANDARD_IA"
    assert obj.sse == "aws:kms"


# --- retries --------------------------------------------------------------------------------


def test_transient_errors_are_retried_with_backoff(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path, botocore_retries=False)
    ep = h.endpoint()
    slow_down, internal, reset = (
        fault(503, "SlowDown"),
        fault(500, "InternalError"),
        drop_connection(),
    )
    script = [slow_down, reset, internal]

    def flaky(request: Any, **kwargs: Any) -> AWSResponse | None:
        return script.pop(0)(request, **kwargs) if script else None

    h.s3.meta.events.register("before-send.s3.PutObject", flaky)
    sink = h.sink(ep, backoff=SINK_LOOP_BACKOFF)
    sink.recover()
    sink.feed(next(make_chunks([b"a", b"b"], accepted_at=T0)))
    sink.flush()
    assert len(h.objects(ep)) == 1
    assert sink.stats.retries == 3 and len(h.sleeps) == 3
    assert all(0 <= s <= 0.05 for s in h.sleeps)
    assert sink.stats.state == "ok" and sink.stats.last_error.code == "InternalError"


def test_expired_token_is_retried_at_once(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint()
    h.s3.meta.events.register(
        "before-send.s3.PutObject", fault(400, "ExpiredToken", "The provided token has expired.")
    )
    sink = h.sink(ep)
    sink.recover()
    sink.feed(next(make_chunks([b"a"], accepted_at=T0)))
    sink.flush()
    assert len(h.objects(ep)) == 1
    assert h.sleeps == []  # refreshed and retried immediately


def test_transient_errors_give_up_without_losing_data(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path, botocore_retries=False)
    ep = h.endpoint()
    h.s3.meta.events.register("before-send.s3.PutObject", fault(500, "InternalError", times=100))
    sink = h.sink(ep, backoff=SINK_LOOP_BACKOFF)
    sink.recover()
    sink.feed(next(make_chunks([b"a"], accepted_at=T0)))
    with pytest.raises(TransientError) as info:
        sink.flush()
    assert info.value.code == "InternalError"
    assert len(h.sleeps) == 3  # max_attempts=4 calls, 3 waits
    assert sink.durable_offset == 0 and sink.stats.state == "retrying"


def test_at_production_settings_botocore_absorbs_blips_and_the_rest_waits_for_the_worker(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    """Production: the delivery clients' botocore retries (3 retries, 4 calls) absorb short
    faults inside one flush; a longer run of faults fails the flush with the data kept, and the
    worker's next attempt (RETRY_POLICY, tests/test_worker_retry_serve.py) delivers it once."""
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint()
    sink = h.sink(ep)  # S3Sink's own default: one call per flush, no sink-level sleeping
    sink.recover()
    script = [fault(503, "SlowDown"), drop_connection(), fault(500, "InternalError")]
    calls: list[str] = []

    def flaky(request: Any, **kwargs: Any) -> AWSResponse | None:
        calls.append("PutObject")
        return script.pop(0)(request, **kwargs) if script else None

    h.s3.meta.events.register("before-send.s3.PutObject", flaky)
    sink.feed(next(make_chunks([b"a", b"b"], accepted_at=T0)))
    sink.flush()
    assert len(calls) == 4 and h.sleeps == [] and sink.stats.retries == 0
    assert [o.body for o in h.objects(ep).values()] == [b"a\nb\n"]

    script.extend(fault(500, "InternalError") for _ in range(4))
    (chunk,) = make_chunks([b"c"], start=4, accepted_at=T0 + 1)
    sink.feed(chunk)
    with pytest.raises(TransientError) as info:
        sink.flush()
    assert info.value.code == "InternalError" and len(calls) == 8
    assert sink.durable_offset == 4 and len(h.objects(ep)) == 1  # kept, nothing half-written
    sink.recover()  # the worker's later attempt: recover, re-read from the durable offset
    sink.feed(chunk)
    sink.flush()
    assert sink.durable_offset == 6
    bodies = sorted(o.body for o in h.objects(ep).values())
    assert bodies == [b"a\nb\n", b"c\n"]


def test_stop_event_interrupts_the_wait(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint()
    h.s3.meta.events.register("before-send.s3.PutObject", fault(503, "SlowDown", times=100))
    stop = threading.Event()
    sink = S3Sink(
        ep,
        h.clients,
        tmp_path,
        uid_prefix="t1-",
        stop=stop,
        sleep=lambda s: stop.set(),  # shutdown arrives during the first wait
        backoff=Backoff(base=0.01, cap=0.01, max_attempts=50),
    )
    sink.recover()
    sink.feed(next(make_chunks([b"a"], accepted_at=T0)))
    with pytest.raises(Stopped) as info:
        sink.flush()
    assert info.value.error.code == "SlowDown"
    assert sink.durable_offset == 0


# --- error classification and backoff (pure) ----------------------------------------------------


def _client_error(code: str, status: int, operation: str, **extra: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened", **extra},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize(
    ("code", "status", "operation", "kind", "needle"),
    [
        ("AccessDenied", 403, "PutObject", SetupError, "s3:PutObject on arn:aws:s3:::b/p/*"),
        ("AccessDenied", 403, "UploadPart", SetupError, "s3:PutObject"),
        ("AccessDenied", 403, "AbortMultipartUpload", SetupError, "s3:AbortMultipartUpload"),
        ("NoSuchBucket", 404, "PutObject", SetupError, "Create bucket"),
        ("KMS.NotFoundException", 400, "PutObject", SetupError, "KMS key"),
        ("KMS.DisabledException", 400, "CreateMultipartUpload", SetupError, "enabled"),
        ("InvalidStorageClass", 400, "PutObject", SetupError, "redundancy"),
        ("AccessControlListNotSupported", 400, "PutObject", SetupError, "remove acl"),
        ("AuthorizationHeaderMalformed", 400, "PutObject", SetupError, "region"),
        ("SlowDown", 503, "UploadPart", TransientError, "retries"),
        ("InternalError", 500, "CompleteMultipartUpload", TransientError, "retries"),
        ("RequestTimeout", 400, "UploadPart", TransientError, "retries"),
        ("ExpiredToken", 400, "PutObject", TransientError, "refreshed"),
        ("SomethingNew", 503, "PutObject", TransientError, "retries"),
        ("SomethingNew", 400, "PutObject", SetupError, "SomethingNew happened"),
    ],
)
def test_classify_client_errors(
    code: str, status: int, operation: str, kind: type, needle: str
) -> None:
    err = classify(
        _client_error(code, status, operation),
        service="s3",
        operation=operation,
        region="eu-west-1",
        resource="arn:aws:s3:::b/p/*",
        target="s3://b/p/x.log",
    )
    assert type(err) is kind
    assert err.code == code and err.region == "eu-west-1" and err.info.http_status == status
    assert needle in (err.fix or "")
    assert "s3://b/p/x.log" in err.message and code in err.message


def test_classify_real_invalid_storage_class(emulator: Emulator, shared_role: S3Role) -> None:
    with pytest.raises(ClientError) as info:
        emulator.client("s3").put_object(
            Bucket=shared_role.bucket, Key="x", Body=b"x", StorageClass="FOO"
        )
    err = classify(info.value, service="s3", operation="PutObject", region="us-east-1")
    assert isinstance(err, SetupError) and err.code == "InvalidStorageClass"


def test_classify_connection_errors_and_kms_access_denied() -> None:
    for exc in (
        ConnectionClosedError(endpoint_url="https://s3"),
        EndpointConnectionError(endpoint_url="https://s3"),
        ConnectionResetError(),
    ):
        err = classify(exc, service="s3", operation="PutObject", region="us-east-1")
        assert isinstance(err, TransientError), exc
    denied = _client_error("AccessDenied", 403, "PutObject")
    denied.response["Error"]["Message"] = "User is not authorized to perform: kms:GenerateDataKey"
    err = classify(denied, service="s3", operation="PutObject", region="us-east-1")
    assert isinstance(err, SetupError) and "kms:GenerateDataKey" in (err.fix or "")
    kinesis = classify(
        _client_error("AccessDeniedException", 400, "PutRecords"),
        service="kinesis",
        operation="PutRecords",
        region="us-east-1",
        resource="arn:aws:kinesis:us-east-1:123456789012:stream/s",
    )
    assert "kinesis:PutRecords on arn:aws:kinesis:us-east-1:123456789012:stream/s" in kinesis.fix


def test_backoff_is_capped_full_jitter() -> None:
    policy = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    for attempt in range(12):
        ceiling = min(4.0, 0.5 * 2**attempt)
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spans the whole window


def test_retry_call_refreshes_once_then_backs_off() -> None:
    attempts: list[int] = []
    refreshed: list[str] = []
    sleeps: list[float] = []

    def call() -> str:
        attempts.append(1)
        if len(attempts) <= 2:
            raise _client_error("ExpiredToken", 400, "PutObject")
        return "ok"

    result = retry_call(
        call,
        classify=lambda e: classify(e, service="s3", operation="PutObject", region=None),
        policy=Backoff(base=0.01, cap=0.01, max_attempts=5),
        sleep=sleeps.append,
        refresh=lambda e: refreshed.append(e.code) is None,
    )
    assert result == "ok" and len(attempts) == 3
    assert len(refreshed) == 1 and len(sleeps) == 1  # one immediate retry, then backoff


def test_wait_returns_false_when_stopped() -> None:
    stop = threading.Event()
    assert wait(0.0, stop=stop) is True
    stop.set()
    assert wait(10.0, stop=stop) is False  # returns at once


def test_feed_skips_prefix_only_at_line_boundaries(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    h = Harness(emulator, shared_role, tmp_path)
    ep = h.endpoint()
    sink = h.sink(ep)
    sink.recover()
    sink.feed(Chunk(0, 4, T0, b"abc\n", 1))
    sink.flush()
    assert sink.recover() == 4
    with pytest.raises(ValueError, match="line boundary"):
        sink.feed(Chunk(2, 8, T0, b"xyzab\n", 1))


def test_domain_sends_uploads_to_an_s3_compatible_endpoint(
    emulator: Emulator, shared_role: S3Role, tmp_path: Path
) -> None:
    # Clients with no endpoint configured at all: only `domain` can lead them to the emulator
    # (through the registry's target, as serve builds it; loopback needs allow_private_domain).
    creds = role_credentials(emulator, shared_role)
    ep = S3Endpoint(
        name="LogTest",
        bucket_name=shared_role.bucket,
        iam_role=shared_role.role_arn,
        path="compat/",
        domain=emulator.url,
        region="eu-central-1",
    )
    target = factory("s3").target(ep, AwsTarget(allow_private_domain=True))
    clients = AwsClients(creds, target, config=NO_BOTOCORE_RETRIES)
    sink = S3Sink(ep, clients, tmp_path, uid_prefix="c-", clock=lambda: T0)
    sink.recover()
    sink.feed(next(make_chunks([b"to a compatible store"], accepted_at=T0)))
    sink.flush()
    (obj,) = read_objects(emulator, shared_role.bucket, "compat/").values()
    assert obj.body == b"to a compatible store\n"
