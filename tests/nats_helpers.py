"""NATS JetStream servers for the tests: started by the tests themselves, on loopback only.

`nats_server` is one JetStream node per test module; `nats_cluster3` a 3-node cluster (replicas
3, for leader kills). Both run with `sync_interval: always` (logferry.local.nats_cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import operation
from logferry.local.emulator import Emulator
from logferry.local.nats_cluster import NatsCluster
from service_helpers import NodeProcess, base_config, nats_spool


def _cluster(tmp: Path, nodes: int) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp, nodes=nodes).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from _cluster(tmp_path_factory.mktemp("nats1"), 1)


@pytest.fixture(scope="module")
def nats_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from _cluster(tmp_path_factory.mktemp("nats3"), 3)


def nats_node(
    emulator: Emulator,
    nats: NatsCluster,
    tmp_path: Path,
    name: str,
    role: str,
    prefix: str,
    *,
    server: dict[str, Any] | None = None,
    **spool: Any,
) -> NodeProcess:
    """One `logferry serve --role ROLE` on the NATS backend (not started), its files under
    `tmp_path / name`; `spool` adds `[spool]` keys (e.g. replicas = 3)."""
    config = base_config(
        emulator,
        tmp_path / name / "spool",
        server={"idle_flush_seconds": 1, **(server or {})},
        spool=nats_spool(nats.urls, prefix, name, **spool),
    )
    return NodeProcess(emulator, config, tmp_path / name, role)


# -- per-node AWS call records and KV record history (issue 29 must-show 5) -----------------
# (imports here: this section was appended, the module's head is shared with other work)

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from logferry.local.latency_proxy import (  # noqa: E402
    Forward,
    LatencyProxy,
    ProxyRequest,
    ProxyResponse,
)

S3_WRITES = frozenset(
    {
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    }
)


def s3_operation(request: ProxyRequest) -> str:
    """The S3 operation of a proxied call (the chaos harness reads it off the wire)."""
    return operation(request)


@dataclass(frozen=True)
class S3Call:
    arrived: float
    """time.monotonic() (this process) when the proxy received the request."""
    op: str
    status: int


class S3CallLog:
    """Proxy middleware: every S3 call one node made, when it arrived, how it was answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[S3Call] = []

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        arrived = time.monotonic()
        response = await forward()
        if request.service == "s3":
            with self._lock:
                self.calls.append(S3Call(arrived, s3_operation(request), response.status))
        return response

    def writes(self, since: float, until: float = float("inf")) -> list[S3Call]:
        """S3 writes that arrived in [since, until)."""
        with self._lock:
            return [c for c in self.calls if c.op in S3_WRITES and since <= c.arrived < until]


@contextmanager
def recording_proxy(emulator: Emulator) -> Iterator[tuple[LatencyProxy, S3CallLog]]:
    """A pass-through proxy to the emulator that records one node's S3 calls."""
    calls = S3CallLog()
    proxy = LatencyProxy(emulator.url, None, [calls], rewrite_token=emulator.rewrite_token)
    proxy.start()
    try:
        yield proxy, calls
    finally:
        proxy.stop()


def proxied_nats_node(
    emulator: Emulator,
    nats: NatsCluster,
    tmp_path: Path,
    name: str,
    role: str,
    prefix: str,
    proxy_url: str,
    **spool: Any,
) -> NodeProcess:
    """`nats_node` whose AWS calls (STS in both regions, S3, Kinesis) go through `proxy_url`."""
    config = base_config(
        emulator,
        tmp_path / name / "spool",
        vendor={"sts_endpoints": {"us-east-1": proxy_url, "us-west-2": proxy_url}},
        aws={"endpoint_url": proxy_url},
        server={"idle_flush_seconds": 1},
        spool=nats_spool(nats.urls, prefix, name, **spool),
    )
    return NodeProcess(emulator, config, tmp_path / name, role)


@dataclass(frozen=True)
class KvEntry:
    seen: float
    """time.monotonic() (this process) when the watch delivered it."""
    key: str
    revision: int
    doc: dict[str, Any] | None


class KvRecorder:
    """Watches one KV bucket from the test process and keeps every entry it delivers: the
    endpoint records' history (the bucket keeps one revision; a live watch sees them all)."""

    def __init__(self, urls: str, bucket: str) -> None:
        self.urls, self.bucket = urls, bucket
        self.entries: list[KvEntry] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._nc: Any = None
        self._task: Any = None

    def __enter__(self) -> KvRecorder:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
        return self

    async def _start(self) -> None:
        import nats

        self._nc = await nats.connect(servers=self.urls.split(","), max_reconnect_attempts=-1)
        kv = await self._nc.jetstream().key_value(self.bucket)
        watcher = await kv.watchall()
        self._task = asyncio.get_running_loop().create_task(self._watch(watcher))

    async def _watch(self, watcher: Any) -> None:
        while True:
            entry = await watcher.updates(timeout=None)
            if entry is None:
                continue
            doc = json.loads(entry.value) if entry.value else None
            with self._lock:
                self.entries.append(KvEntry(time.monotonic(), entry.key, entry.revision, doc))

    def snapshot(self) -> list[KvEntry]:
        with self._lock:
            return list(self.entries)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._nc is not None:
                await self._nc.close()
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me]
            for task in others:  # the watch and the tasks nats-py leaves behind
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- serve-level helpers of the proof tests (tests/test_nats_serve_proof.py) ----------------


import httpx  # noqa: E402

from e2e_helpers import body_of, bucket_content, make_lines, put_customer, put_endpoint  # noqa: E402
from service_helpers import nats_owned, wait_for  # noqa: E402

MIB = 1024 * 1024


def s3_endpoint(
    serve: NodeProcess, customer: str, bucket: str, role_arn: str, **fields: Any
) -> None:
    """A customer and its S3 endpoint "s3" through `serve`'s API (files of 1 MiB unless
    `fields` say otherwise)."""
    with serve.admin() as admin:
        put_customer(admin, customer)
        body = {
            "type": "s3",
            "bucket_name": bucket,
            "iam_role": role_arn,
            "path": "logs/",
            "period": 3600,
            "file_max_bytes": MIB,
            **fields,
        }
        r = put_endpoint(admin, customer, "s3", body)
        assert r.status_code == 201, r.text


def wait_endpoint(serve: NodeProcess, customer: str) -> None:
    """Until the registry watch brought the endpoint to `serve`."""
    with serve.admin() as admin:
        wait_for(
            lambda: admin.get(f"/v1/customers/{customer}/endpoints/s3").status_code == 200,
            timeout=30,
        )


def wait_delivered(emulator: Emulator, bucket: str, acked: list[bytes], timeout: float) -> None:
    want = set(acked)
    wait_for(lambda: want <= set(bucket_content(emulator, bucket, "logs/").lines), timeout=timeout)


def send(serve: NodeProcess, customer: str, tag: str, requests: int, lines: int) -> list[bytes]:
    """`requests` requests of `lines` 100-byte lines to `serve`; each must get its 202."""
    sent: list[bytes] = []
    with serve.admin() as admin:
        for i in range(requests):
            batch = make_lines(f"{tag}-{i}", lines, 100)
            r = admin.post(f"/v1/ingest/{customer}/s3", content=body_of(batch), timeout=120)
            assert r.status_code == 202, r.text
            sent += batch
    return sent


def owner_of(a: NodeProcess, b: NodeProcess) -> tuple[NodeProcess, NodeProcess]:
    """(the delivery node that owns the one endpoint, the other one)."""
    found: tuple[NodeProcess, NodeProcess] = wait_for(
        lambda: (a, b) if nats_owned(a) == 1 else (b, a) if nats_owned(b) == 1 else None,
        timeout=60,
    )
    return found


def put_more_endpoint(serve: NodeProcess, customer: str, name: str, body: dict[str, Any]) -> None:
    with serve.admin() as admin:
        r = put_endpoint(admin, customer, name, body)
        assert r.status_code == 201, r.text


class Sender:
    """Posts numbered 500-line requests to one node in a thread until stopped; keeps what got
    a 202 and everything it sent (a request cut by a kill may or may not land), and each
    answer's status (0: no answer)."""

    def __init__(self, serve: NodeProcess, customer: str, tag: str) -> None:
        self.serve, self.customer, self.tag = serve, customer, tag
        self.acked: list[bytes] = []
        self.sent: list[bytes] = []
        self.answers: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.serve.admin() as client:
            i = 0
            while not self.stop.is_set():
                lines = make_lines(f"{self.tag}-{i}", 500, 100)
                i += 1
                self.sent += lines
                try:
                    r = client.post(
                        f"/v1/ingest/{self.customer}/s3", content=body_of(lines), timeout=30
                    )
                except httpx.HTTPError:
                    self.answers.append(0)
                    time.sleep(0.1)  # the node is gone; the test stops this sender
                    continue
                self.answers.append(r.status_code)
                if r.status_code == 202:
                    self.acked += lines

    def __enter__(self) -> Sender:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


class Poster:
    """Posts `lines`-line requests for one customer in a thread (every `pause` seconds until
    stopped); keeps each answer's status and Retry-After, and the lines that got a 202."""

    def __init__(
        self, serve: NodeProcess, customer: str, lines: int, pause: float, *, stop: threading.Event
    ) -> None:
        self.serve, self.customer, self.lines, self.pause = serve, customer, lines, pause
        self.answers: list[tuple[int, str | None]] = []
        self.acked: list[bytes] = []
        self.acked_bytes = 0
        self.bytes_before_first_429: int | None = None
        self.stop = stop
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.serve.admin() as client:
            i = 0
            while not self.stop.is_set():
                batch = make_lines(f"{self.customer}-{i}", self.lines, 100)
                i += 1
                body = body_of(batch)
                r = client.post(f"/v1/ingest/{self.customer}/s3", content=body, timeout=60)
                self.answers.append((r.status_code, r.headers.get("Retry-After")))
                if r.status_code == 202:
                    self.acked += batch
                    self.acked_bytes += len(body)
                elif r.status_code == 429 and self.bytes_before_first_429 is None:
                    self.bytes_before_first_429 = self.acked_bytes
                self.stop.wait(self.pause)

    def statuses(self) -> set[int]:
        return {status for status, _ in self.answers}
