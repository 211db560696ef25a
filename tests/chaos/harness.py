"""The chaos harness: a real `logferry serve` behind a fault proxy, killed at chosen moments.

Every AWS call of the serve process goes through a `LatencyProxy` (src/logferry/local) with the
`OpGate` middleware below, which names each call (CreateMultipartUpload, UploadPart, PutRecords,
AssumeRole, ...), counts the calls in flight and can hold the next call of a kind *before* it
reaches the emulator (the request is lost) or *after* the emulator accepted it (the reply is lost).
A test arms the gate, waits until a matching call is held, and kills serve -9 at that instant, so
a kill moment is a named place in the protocol rather than a hopeful sleep. The seed of every
random choice comes from `LOGFERRY_CHAOS_SEED` (or is drawn and printed on failure).

Checks are by content: the customer's bucket or stream is read back as a multiset of lines and
compared with what serve acknowledged (202) and what was in flight when it died.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import (
    Forward,
    LatencyProxy,
    Middleware,
    ProxyConfig,
    ProxyRequest,
    ProxyResponse,
)
from service_helpers import ServeProcess, base_config

SEED_ENV = "LOGFERRY_CHAOS_SEED"


def chaos_seed() -> int:
    """The run's seed: `LOGFERRY_CHAOS_SEED` when set (to reproduce a run), else a fresh one."""
    given = os.environ.get(SEED_ENV)
    return int(given) if given else random.SystemRandom().randrange(1, 2**31)


# ---------------------------------------------------------------------------- naming calls


def operation(request: ProxyRequest) -> str:
    """The AWS operation of a proxied call, from what is on the wire (method, query, target)."""
    if request.service == "s3":
        query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
        if request.method == "POST" and "uploads" in query:
            return "CreateMultipartUpload"
        if request.method == "PUT" and "partNumber" in query:
            return "UploadPart"
        if request.method == "POST" and "uploadId" in query:
            return "CompleteMultipartUpload"
        if request.method == "DELETE" and "uploadId" in query:
            return "AbortMultipartUpload"
        return {"PUT": "PutObject"}.get(request.method, f"s3:{request.method}")
    if request.target:
        return request.target.rsplit(".", 1)[-1]
    match = re.search(rb"Action=([A-Za-z]+)", request.body)
    return match.group(1).decode() if match else f"{request.service}:{request.method}"


_UNAVAILABLE = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
    b"<Message>Service is unable to handle request.</Message></Error>"
)
_SECRET_FIELDS = re.compile(rb"<(SecretAccessKey|SessionToken)>([^<]+)</")


@dataclass
class Held:
    """A call the gate holds: the test kills serve while it waits here."""

    op: str
    phase: str
    """"before": never reached the emulator; "after": the emulator did it, the reply is held."""
    records: int = 0


@dataclass
class _Arm:
    ops: frozenset[str]
    phase: str
    held: threading.Event = field(default_factory=threading.Event)
    info: Held | None = None


class OpGate:
    """Proxy middleware: names and counts calls, holds one on demand, and keeps every
    assumed-role secret it sees (for the secrets scan)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.finished_at: dict[str, float] = {}
        self.secrets: set[str] = set()
        self._arm: _Arm | None = None
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refusing: frozenset[str] = frozenset()
        """Ops answered 503 ServiceUnavailable at once: an outage the client sees and retries."""
        self.refused = 0
        self.held_in_outage = 0
        """Calls that arrived while their operation was paused (answered 503 afterwards)."""
        self.paused: frozenset[str] = frozenset()
        """Ops held (not forwarded) until unpaused: an outage of that part of AWS."""

    def arm(self, ops: Iterable[str], phase: str) -> _Arm:
        """Hold the next call of one of `ops` in `phase`; `.held` is set when it is held."""
        armed = _Arm(frozenset(ops), phase)
        with self._lock:
            self._arm = armed
        return armed

    def disarm(self) -> None:
        """Forget the arm and let every held call go (to a dead client: it answers 503)."""
        with self._lock:
            self._arm = None
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def pause(self, ops: Iterable[str]) -> None:
        self.paused = frozenset(ops)

    def unpause(self) -> None:
        self.paused = frozenset()
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.in_flight)

    def recently_finished(self, op: str, within: float) -> bool:
        return time.monotonic() - self.finished_at.get(op, 0.0) < within

    async def _wait_release(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._release is None or self._release.is_set():
            self._release = asyncio.Event()
        await self._release.wait()

    def _take_arm(self, op: str, phase: str) -> _Arm | None:
        with self._lock:
            armed = self._arm
            if armed is None or op not in armed.ops or armed.phase != phase:
                return None
            self._arm = None
            return armed

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        op = operation(request)
        records = request.body.count(b'"PartitionKey"') if op == "PutRecords" else 0
        with self._lock:
            self.calls[op] += 1
            self.in_flight[op] += 1
        try:
            if op in self.refusing:
                self.refused += 1
                return ProxyResponse(503, {"content-type": "application/xml"}, _UNAVAILABLE)
            if op in self.paused:
                self.held_in_outage += 1
                while op in self.paused:
                    await self._wait_release()
                # Never forwarded late: the caller may be dead (a kill during the outage).
                return ProxyResponse(503, {}, b"the service was down (chaos gate)")
            armed = self._take_arm(op, "before")
            if armed is not None:
                armed.info = Held(op, "before", records)
                armed.held.set()
                await self._wait_release()
                return ProxyResponse(503, {}, b"held by the chaos gate")
            answer = await forward()
            if op == "AssumeRole":
                self.secrets.update(
                    m.group(2).decode() for m in _SECRET_FIELDS.finditer(answer.body)
                )
            armed = self._take_arm(op, "after")
            if armed is not None:
                armed.info = Held(op, "after", records)
                armed.held.set()
                await self._wait_release()
            return answer
        finally:
            with self._lock:
                self.in_flight[op] -= 1
                self.finished_at[op] = time.monotonic()


_ACCESS_KEY = re.compile(r"Credential=([A-Z0-9]+)/")
_EXPIRATION = re.compile(rb"<Expiration>[^<]+</Expiration>")
_ASSUMED_KEY = re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>")
_DATA_CALLS = frozenset(
    {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "PutRecords"}
)


def _expired_answer(service: str) -> ProxyResponse:
    """What S3 and Kinesis answer to a call signed with an expired session token."""
    if service == "kinesis":
        body = (
            b'{"__type":"ExpiredTokenException",'
            b'"message":"The security token included in the request is expired"}'
        )
        return ProxyResponse(400, {"content-type": "application/x-amz-json-1.1"}, body)
    body = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ExpiredToken</Code>"
        b"<Message>The provided token has expired.</Message></Error>"
    )
    return ProxyResponse(400, {"content-type": "application/xml"}, body)


class ShortCredentials:
    """Proxy middleware: assumed-role credentials that live `lifetime` seconds.

    AssumeRole cannot ask for less than 900 s (DESIGN §4), so the proxy rewrites `Expiration`
    in every AssumeRole reply to issue + `lifetime`, and answers any later call signed with that
    key `ExpiredToken` / `ExpiredTokenException`, as AWS does. It records when each data call
    reached the emulator, so a test can show delivery paused while STS was down. With `roles`,
    only those roles' keys are short-lived (the others keep what STS issued)."""

    def __init__(self, lifetime: float, roles: Iterable[str] | None = None) -> None:
        self.lifetime = lifetime
        self.roles = None if roles is None else frozenset(roles)
        self._lock = threading.Lock()
        self.expires: dict[str, float] = {}
        self.issued = 0
        self.rejected: Counter[str] = Counter()
        self.forwarded: list[tuple[float, str]] = []
        """(wall time, op) of every data call the emulator answered 2xx."""

    async def __call__(self, request: ProxyRequest, forward: Forward) -> ProxyResponse:
        op = operation(request)
        header = dict((k.lower(), v) for k, v in request.headers).get("authorization", "")
        match = _ACCESS_KEY.search(header)
        key = match.group(1) if match else ""
        with self._lock:
            expiry = self.expires.get(key)
        if expiry is not None and time.time() >= expiry:
            with self._lock:
                self.rejected[op] += 1
            return _expired_answer(request.service)
        answer = await forward()
        if op == "AssumeRole" and answer.status == 200 and self._shortens(request):
            expires_at = int(time.time() + self.lifetime)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)).encode()
            body = _EXPIRATION.sub(b"<Expiration>" + stamp + b"</Expiration>", answer.body)
            issued = _ASSUMED_KEY.search(body)
            with self._lock:
                self.issued += 1
                if issued:
                    self.expires[issued.group(1).decode()] = expires_at
            return ProxyResponse(answer.status, answer.headers, body)
        if op in _DATA_CALLS and 200 <= answer.status < 300:
            with self._lock:
                self.forwarded.append((time.time(), op))
        return answer

    def _shortens(self, request: ProxyRequest) -> bool:
        if self.roles is None:
            return True
        form = parse_qs(request.body.decode(errors="replace"))
        return form.get("RoleArn", [""])[0] in self.roles

    def data_calls_between(self, start: float, end: float) -> Counter[str]:
        with self._lock:
            return Counter(op for at, op in self.forwarded if start <= at < end)


@contextmanager
def gated_proxy(
    emulator: Emulator,
    config: ProxyConfig | None = None,
    more: Sequence[Middleware] = (),
) -> Iterator[tuple[LatencyProxy, OpGate]]:
    """A fault proxy with an `OpGate` first, then `more` middlewares (after the gate: a refused
    or held call never reaches them)."""
    gate = OpGate()
    proxy = LatencyProxy(
        emulator.url, config, [gate, *more], rewrite_token=emulator.rewrite_token
    ).start()
    try:
        yield proxy, gate
    finally:
        gate.disarm()
        gate.unpause()
        proxy.stop()


# ---------------------------------------------------------------------------- senders


def chaos_s3_customers(customer: str, role: Any, **endpoint: Any) -> list[dict[str, Any]]:
    """`[[customers]]` with one customer (token from $CHAOS_TOKEN) and one S3 endpoint "s3"."""
    s3 = {"type": "s3", "name": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
    return [{"id": customer, "token_env": "CHAOS_TOKEN", "endpoints": [{**s3, **endpoint}]}]


def proxied_s3_config(
    emulator: Emulator,
    spool_dir: Path,
    proxy_url: str,
    spool_backend: dict[str, Any],
    customer: str,
    role: Any,
    *,
    server: dict[str, Any] | None = None,
    **endpoint: Any,
) -> dict[str, Any]:
    """A serve config whose AWS traffic (S3 and STS in two regions) goes through the chaos proxy,
    with one customer (token from $CHAOS_TOKEN) and one S3 endpoint named "s3"."""
    return base_config(
        emulator,
        spool_dir,
        vendor={"sts_endpoints": {"us-east-1": proxy_url, "us-west-2": proxy_url}},
        aws={"endpoint_url": proxy_url},
        server={"idle_flush_seconds": 1, **(server or {})},
        spool={**spool_backend},
        customers=chaos_s3_customers(customer, role, **endpoint),
    )


@dataclass
class Ledger:
    """What serve acknowledged (202) and what was in flight or refused (may or may not land)."""

    acked: list[bytes] = field(default_factory=list)
    unsure: set[bytes] = field(default_factory=set)
    refused: Counter[int] = field(default_factory=Counter)
    bodies: list[str] = field(default_factory=list)
    """Non-202 answer bodies (for the secrets scan)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0

    def batch(self, tag: str, count: int, size: int) -> list[bytes]:
        """`count` lines never sent before (unique content: a copy is traceable)."""
        with self._lock:
            start = self._next
            self._next += count
        return [f"{tag}-{i:09d} ".encode().ljust(size, b"x") for i in range(start, start + count)]


class Loader:
    """Threads that post batches of unique lines until stopped, recording every answer."""

    def __init__(
        self,
        serve: ServeProcess,
        token: str,
        path: str,
        ledger: Ledger,
        *,
        tag: str,
        threads: int = 2,
        lines: int = 1000,
        size: int = 200,
        pause: float = 0.0,
        rng: random.Random | None = None,
        burst: tuple[int, int] = (1, 1),
    ) -> None:
        self.serve, self.token, self.path, self.ledger = serve, token, path, ledger
        self.tag, self.lines, self.size, self.pause, self.burst = tag, lines, size, pause, burst
        self.rng = random.Random((rng or random.Random()).random())
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0
        """Ingest requests sent and not answered yet (a kill now lands inside a group commit)."""
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> Loader:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=150)

    def _run(self, worker: int) -> None:
        rng = random.Random(self.rng.random() + worker)
        with self.serve.as_token(self.token) as client:
            while not self.stop_event.is_set():
                for _ in range(rng.randint(*self.burst)):
                    if self.stop_event.is_set():
                        return
                    lines = self.ledger.batch(f"{self.tag}{worker}", self.lines, self.size)
                    body = b"".join(line + b"\n" for line in lines)
                    with self._lock:
                        self.in_flight += 1
                    try:
                        r = client.post(self.path, content=body, timeout=120)
                    except httpx.HTTPError:
                        self.ledger.unsure.update(lines)
                        return  # serve died mid-request: not acknowledged
                    finally:
                        with self._lock:
                            self.in_flight -= 1
                    if r.status_code == 202:
                        with self.ledger._lock:
                            self.ledger.acked.extend(lines)
                    else:
                        self.ledger.unsure.update(lines)
                        self.ledger.refused[r.status_code] += 1
                        self.ledger.bodies.append(r.text)
                        time.sleep(0.2)
                if self.pause:
                    self.stop_event.wait(self.pause)


# ---------------------------------------------------------------------------- checks


@dataclass
class Tally:
    """One case's figures (they go into docs/reliability.md)."""

    case: str
    seed: int
    kills: int = 0
    moments: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    checked: int = 0
    lost: int = 0
    duplicated: int = 0
    open_uploads: int = 0

    def line(self) -> str:
        moments = ", ".join(f"{k} {v}" for k, v in sorted(self.moments.items()))
        return (
            f"CHAOS {self.case} seed={self.seed} kills={self.kills} acked={self.acked} "
            f"checked={self.checked} lost={self.lost} duplicated={self.duplicated} "
            f"open_uploads={self.open_uploads} moments=[{moments}]"
        )


def compare(found: Counter[bytes], ledger: Ledger) -> tuple[int, int, int]:
    """(lost, duplicated, foreign): acknowledged lines missing, extra copies of any line, and
    lines that were never sent at all."""
    acked = Counter(ledger.acked)
    assert all(n == 1 for n in acked.values()), "the ledger itself holds a line twice"
    lost = sum(1 for line in acked if found[line] == 0)
    duplicated = sum(n - 1 for n in found.values() if n > 1)
    foreign = sum(1 for line in found if line not in acked and line not in ledger.unsure)
    return lost, duplicated, foreign


def write_tally(tally: Tally, directory: Path | None = None) -> None:
    """Print the figures and append them to `$LOGFERRY_CHAOS_REPORT` when set (for the doc)."""
    print(tally.line())
    target = os.environ.get("LOGFERRY_CHAOS_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(tally.line() + "\n")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


# ---------------------------------------------------------------------------- secrets


def find_secrets(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """Where any secret appears: "<secret name> in <text name>" for each hit.

    `secrets` maps a name (never the value) to the value, so a failure message can say which
    secret leaked where without printing it."""
    hits = []
    for secret_name, value in secrets.items():
        if len(value) < 8:
            raise ValueError(f"{secret_name} is too short to scan for reliably")
        for text_name, text in texts.items():
            if value in text:
                hits.append(f"{secret_name} in {text_name}")
    return hits


def outputs_of(serve: ServeProcess, customers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Every log line of every start, each endpoint's status, the customer listing, /metrics."""
    texts = {"serve logs": serve.all_logs()}
    with serve.admin() as admin:
        texts["/metrics"] = admin.get("/metrics").text
        for customer, name in customers:
            base = f"/v1/customers/{customer}"
            texts[f"{base} status"] = admin.get(f"{base}/endpoints/{name}/status").text
            texts[base] = admin.get(base).text
            texts[f"{base}/endpoints"] = admin.get(f"{base}/endpoints").text
        texts["/v1/sts/regions"] = admin.get("/v1/sts/regions").text
    return texts


def assert_no_secrets(
    emulator: Emulator,
    gate: OpGate,
    texts: dict[str, str],
    tokens: dict[str, str],
) -> int:
    """No token, vendor secret, or assumed-role secret key / session token in `texts`;
    returns how many secrets were checked (a scan of nothing must not pass quietly)."""
    secrets = dict(tokens)
    secrets["vendor secret key"] = emulator.vendor.secret_access_key
    for n, value in enumerate(sorted(gate.secrets)):
        secrets[f"assumed-role secret #{n}"] = value
    assert gate.secrets, "the proxy saw no AssumeRole answer: the scan would prove nothing"
    hits = find_secrets(texts, secrets)
    assert not hits, f"secrets in the output: {hits}"
    return len(secrets)
