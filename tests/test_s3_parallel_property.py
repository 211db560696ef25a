"""The delivery property (tests/test_delivery_property.py) with parts in flight on an io pool.

Same contract and crash injection, but the sink keeps up to 3 parts in flight, the driver feeds
only while `wants_data()` and sleeps until `wake`, and a "crash" also ends the dead process's
calls: its pool is drained (each call landed or not, as when the process is killed) before the
restart rebuilds sink and spool from disk. The bucket must hold exactly the input lines, no
object may exceed file_max_bytes, and no multipart upload may be left open.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.aws.clients import AwsClients
from logferry.local.emulator import Emulator
from logferry.sinks.s3 import S3Sink
from logferry.sinks.s3_budget import InflightBudget
from logferry.sinks.s3_config import S3Endpoint
from logferry.spool import Spool
from s3_helpers import S3Role, decode_object, pending_uploads, read_objects
from test_delivery_property import LINE, MIB, Crash, Driver, credentials, request_lines, role

__all__ = ["credentials", "role"]  # module fixtures, shared with the inline property

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


class PoolDriver(Driver):
    """The worker's loop with an io pool: feed while the sink wants data, wait for `wake`."""

    pool: ThreadPoolExecutor
    woken: threading.Event

    def sink(self) -> S3Sink:
        clients = AwsClients(self.credentials, self.emulator.target)
        event = "after-call.s3" if self.crash_after_call else "before-call.s3"
        clients.client("s3", "us-east-1").meta.events.register(event, self._hook)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="prop-io")
        self.woken = threading.Event()
        return S3Sink(
            self.endpoint,
            clients,
            self.state_dir,
            uid_prefix="prop-",
            part_size=5 * MIB,
            member_size=MIB,
            clock=lambda: 1_720_132_646.0,
            io_executor=self.pool,
            wake=self.woken.set,
            parts_in_flight=3,
            budget=InflightBudget(64 * MIB),
        )

    def run(self) -> None:
        for _attempt in range(5):
            spool = Spool(self.spool_dir)
            try:
                self._deliver(spool)
                spool.close()
                return
            except Crash:
                spool.close()  # the process died: everything in memory is gone
            finally:
                self.pool.shutdown(wait=True)  # ...and its calls in flight ended
        raise AssertionError("delivery did not finish after 5 restarts")

    def _deliver(self, spool: Spool) -> None:
        sink = self.sink()
        pos = sink.open(spool.committed_offset)
        while True:
            if sink.wants_data():
                for chunk in spool.read(pos, 4 * MIB):
                    sink.feed(chunk)
                    pos = chunk.end
            caught_up = pos >= spool.end_offset
            if caught_up:
                sink.flush()
            delay = sink.pump(caught_up=caught_up)
            durable = sink.durable
            if durable > spool.committed_offset:
                spool.commit(durable)
                sink.committed(durable)
            if caught_up and not sink.holds_data():
                assert spool.pending_bytes == 0
                return
            if caught_up or not sink.wants_data():
                self.woken.wait(delay or 1.0)
                self.woken.clear()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    requests=st.lists(
        st.one_of(st.integers(1, 50), st.integers(50, 30_000), st.just(16 * MIB // LINE)),
        min_size=1,
        max_size=4,
    ).filter(lambda sizes: sum(sizes) * LINE <= 24 * MIB),
    file_max=st.sampled_from([0, 0, MIB, 3 * MIB]),
    codec=st.sampled_from(["none", "zstd"]),
    crash_at=st.one_of(st.none(), st.integers(1, 12)),
    crash_after_call=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_parallel_parts_deliver_exactly_once_whatever_the_crash(
    emulator: Emulator,
    role: S3Role,
    credentials: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
    requests: list[int],
    file_max: int,
    codec: str,
    crash_at: int | None,
    crash_after_call: bool,
    seed: int,
) -> None:
    tmp = tmp_path_factory.mktemp("pprop")
    rng = random.Random(seed)
    fields: dict[str, object] = {"file_max_bytes": file_max, "message_type": "blank"}
    if codec == "none":
        fields["gzip_level"] = 0
    else:
        fields["compression_codec"] = codec
    prefix = f"pp{uuid.uuid4().hex[:10]}/"
    endpoint = S3Endpoint(
        name="pprop", bucket_name=role.bucket, iam_role=role.role_arn, path=prefix, **fields
    )
    spool = Spool(tmp / "spool")
    sent: list[bytes] = []
    for tag, count in enumerate(requests):
        body = request_lines(rng, tag, count)
        spool.append_sync(body, count)
        sent.extend(body.splitlines())
    spool.close()

    driver = PoolDriver(
        emulator, credentials, endpoint, tmp / "spool", tmp / "state", crash_at, crash_after_call
    )
    driver.run()

    got: list[bytes] = []
    for obj in read_objects(emulator, role.bucket, prefix).values():
        plain = decode_object(obj.body, endpoint.codec())
        if file_max:
            assert len(plain) <= file_max, f"{obj.key}: {len(plain)} > {file_max}"
        got.extend(plain.splitlines())
    assert Counter(got) == Counter(sent), (
        f"lost {len(Counter(sent) - Counter(got))}, doubled {len(Counter(got) - Counter(sent))}"
    )
    assert not [u for u in pending_uploads(emulator, role.bucket) if u["Key"].startswith(prefix)]
