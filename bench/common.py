"""Shared machinery of the end-to-end benchmarks: a real `logferry serve` process against the
patched local emulator, an HTTP loader, /proc sampling and result tables.

Why a separate process and real sockets: the figures must include everything a user pays for
(HTTP parsing, normalisation, the spool's fsyncs, compression, SigV4, the emulator's IAM checks),
and RSS/CPU must be those of the serve process alone. Nothing here imports from tests/.

Every script prints a table and writes `bench/results/<name>.json` with the machine, the exact
command line and the figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))
# The repository's src, unless PYTHONPATH names another copy (a version to compare): that wins.
sys.path.insert(0 if not os.environ.get("PYTHONPATH") else len(sys.path), str(REPO / "src"))

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from logferry.aws.names import parse_stream_arn  # noqa: E402
from logferry.aws.policies import KinesisDestination, S3Destination  # noqa: E402
from logferry.aws.provision import RoleRequest, provision_role  # noqa: E402
from logferry.local.emulator import Emulator, start_emulator  # noqa: E402
from logferry.local.serve_process import ServeProcess, free_port  # noqa: E402
from logferry.local.serve_process import serve_config as shared_serve_config  # noqa: E402
from loggen import generate_lines  # noqa: E402

__all__ = [
    "ADMIN_TOKEN",
    "Emulator",
    "LoadResult",
    "ProcSampler",
    "Serve",
    "add_spool_backend_option",
    "bodies_from_lines",
    "count_bucket_lines",
    "count_stream_records",
    "free_port",
    "loggen_bodies",
    "machine_info",
    "make_kinesis_role",
    "make_s3_role",
    "make_s3_tenants",
    "post_bodies",
    "print_table",
    "serve_config",
    "spool_backend",
    "start_emulator",
    "wait_until",
    "write_results",
]

MiB = 1024 * 1024
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
CACHE = Path(os.environ.get("LOGFERRY_BENCH_CACHE", "/tmp/logferry-bench-cache"))
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- machine, output


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (they mean little without it)."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / MiB, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "speed": box_speed(),
    }


def box_speed() -> dict[str, float]:
    """Two probes that say how fast this box is *now* (a shared VM varies by the hour): CPU
    seconds of a fixed pure-Python loop (≈0.2 s on a healthy current x86 core) and memcpy MB/s
    of 256 MiB (GB/s when healthy). Compare figures from different days through these."""
    t = time.process_time()
    total = 0
    for i in range(3_000_000):
        total += i * i
    loop = time.process_time() - t
    src = bytes(256 * MiB)
    dst = bytearray(len(src))
    t = time.perf_counter()
    dst[:] = src
    dst[:] = src
    copy = 2 * 256 / max(1e-9, time.perf_counter() - t)
    return {"python_loop_cpu_s": round(loop, 3), "memcpy_mb_s": round(copy)}


def code_version() -> dict[str, Any]:
    """The commit measured and whether src/ had uncommitted changes (read-only git calls)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip("\n")

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_src": dirty}


def _script_path() -> str:
    """The running script relative to the repository (bench/peers/… too)."""
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(REPO):
        return str(script.relative_to(REPO))
    return "bench/" + script.name


def write_results(name: str, doc: dict[str, Any], machine: dict[str, Any]) -> Path:
    """bench/results/<name>.json with the machine, the exact command and the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    machine = {**machine, "loadavg_at_end": os.getloadavg()}
    pythonpath = os.environ.get("PYTHONPATH")
    full = {
        "command": ("PYTHONPATH=" + shlex.quote(pythonpath) + " " if pythonpath else "")
        + ".venv/bin/python "
        + shlex.join([_script_path(), *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "code": code_version(),
        **doc,
    }
    path.write_text(json.dumps(full, indent=2, default=str) + "\n")
    return path


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """A two-column table: figure name, value (numbers formatted with thousands separators)."""

    def fmt(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return str(value)
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    width = max(len(name) for name, _ in rows)
    print(f"\n{title}\n" + "-" * max(len(title), width + 20))
    for name, value in rows:
        print(f"  {name:<{width}}  {fmt(value)}")
    sys.stdout.flush()


def report(
    title: str, rows: Sequence[tuple[str, Any]], name: str, doc: dict[str, Any], machine: Any
) -> int:
    """Print the table, write the results file and say where: the end of every small bench."""
    print_table(title, rows)
    print(f"\nresults: {write_results(name, doc, machine)}")
    return 0


def mib(n: float) -> float:
    return round(n / MiB, 1)


def note(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- /proc sampling


def read_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in bytes; (0, 0) once it has gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


def read_cpu(pid: int) -> float:
    """utime + stime of `pid` in seconds (all its threads)."""
    user, system = read_cpu_split(pid)
    return user + system


def read_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` in seconds: kernel time (fsync, page faults, sockets) apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


class ProcSampler:
    """Samples RSS and CPU of some pids every `interval` s on a daemon thread.

    Peak RSS is the max of the samples and the kernel's own high-water mark (VmHWM), so a spike
    between two samples is not missed. `window(t0, t1)` gives figures for one phase.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[tuple[float, int, float]]] = {k: [] for k in pids}
        self.hwm: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def start(self) -> ProcSampler:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            rss, hwm = read_rss(pid)
            if rss:
                self.samples[name].append((now, rss, read_cpu(pid)))
                self.hwm[name] = max(self.hwm[name], hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def window(self, name: str, t0: float | None = None, t1: float | None = None) -> dict[str, Any]:
        """Peak/last RSS and CPU seconds of `name` between monotonic times t0 and t1."""
        rows = [
            s
            for s in self.samples[name]
            if (t0 is None or s[0] >= t0 - self.interval)
            and (t1 is None or s[0] <= t1 + self.interval)
        ]
        if not rows:
            return {"peak_rss_mib": None, "cpu_seconds": None}
        return {
            "peak_rss_mib": mib(max(r[1] for r in rows)),
            "last_rss_mib": mib(rows[-1][1]),
            "cpu_seconds": round(rows[-1][2] - rows[0][2], 2),
            "seconds": round(rows[-1][0] - rows[0][0], 2),
        }

    def peak_rss(self, name: str) -> int:
        return max([self.hwm[name], *(s[1] for s in self.samples[name])])


# ----------------------------------------------------------------------------- customers


def make_s3_role(
    emulator: Emulator, bucket: str, external_id: str, role_name: str, *, prefix: str = ""
) -> str:
    """Bucket + role in the customer account, made by our own `role create` code (the guide's
    trust and permission policies, managed policy attached)."""
    emulator.client("s3").create_bucket(Bucket=bucket)
    result = provision_role(
        emulator.clients(),
        RoleRequest(
            dest=S3Destination(bucket=bucket, prefix=prefix),
            role_name=role_name,
            external_id=external_id,
            policy_name=f"{role_name}-policy",
            vendor_account=emulator.vendor.account_id,
        ),
    )
    return result.role_arn


def make_s3_tenants(
    emulator: Emulator, n: int, tag: str, *, threads: int = 8
) -> list[tuple[str, str, str]]:
    """`n` customers, each with its own bucket and S3 role (external ID = customer id), made by
    our own `role create` code on `threads` threads → [(customer, bucket, role ARN)]."""
    from concurrent.futures import ThreadPoolExecutor

    admin = emulator.clients()  # one set of cached clients for every call, on every thread

    def one(i: int) -> tuple[str, str, str]:
        customer = f"{tag}-c{i:05d}"
        bucket = f"{tag}-b{i:05d}"
        admin.client("s3", "us-east-1").create_bucket(Bucket=bucket)
        result = provision_role(
            admin,
            RoleRequest(
                dest=S3Destination(bucket=bucket),
                role_name=f"{tag}-r{i:05d}",
                external_id=customer,
                policy_name=f"{tag}-r{i:05d}-policy",
                vendor_account=emulator.vendor.account_id,
            ),
        )
        return customer, bucket, result.role_arn

    for attempt in range(3):  # the emulator answers an odd 500 under load; redo is idempotent
        try:
            with ThreadPoolExecutor(threads) as pool:
                return list(pool.map(one, range(n)))
        except Exception as exc:
            if attempt == 2:
                raise
            note(f"provisioning failed ({str(exc)[:80]}); again")
    raise AssertionError("unreachable")


def s3_tenant_customers(
    tenants: list[tuple[str, str, str]], path: str, period: int
) -> list[dict[str, Any]]:
    """The `[[customers]]` of `make_s3_tenants`' tenants: one S3 endpoint "s3" each, tokens
    from `TENANT_TOKEN_<i>`."""
    return [
        {
            "id": customer,
            "token_env": f"TENANT_TOKEN_{i}",
            "endpoints": [
                {
                    "type": "s3",
                    "name": "s3",
                    "bucket_name": bucket,
                    "iam_role": role,
                    "path": path,
                    "period": period,
                }
            ],
        }
        for i, (customer, bucket, role) in enumerate(tenants)
    ]


def make_kinesis_role(
    emulator: Emulator, stream: str, shards: int, external_id: str, role_name: str
) -> tuple[str, str]:
    """A stream of `shards` shards and the guide's Kinesis role for it → (stream ARN, role ARN)."""
    kinesis = emulator.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=shards)
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    result = provision_role(
        emulator.clients(),
        RoleRequest(
            dest=KinesisDestination(parse_stream_arn(arn)),
            role_name=role_name,
            external_id=external_id,
            policy_name=f"{role_name}-policy",
            vendor_account=emulator.vendor.account_id,
        ),
    )
    return arn, result.role_arn


def assumed_clients(emulator: Emulator, role_arn: str, external_id: str) -> Any:
    """AwsClients acting as the customer's role, assumed by the vendor with the external ID."""
    from botocore.credentials import Credentials

    from logferry.aws.clients import AwsClients

    got = emulator.client("sts", emulator.vendor).assume_role(
        RoleArn=role_arn, RoleSessionName="bench", ExternalId=external_id
    )["Credentials"]
    creds = Credentials(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"])
    return AwsClients(creds, emulator.target)


# ----------------------------------------------------------------------------- serve process


def serve_config(emulator: Emulator, workdir: Path, **extra: Any) -> dict[str, Any]:
    """A `logferry.toml` for the emulator (the shared one, with benchmark-sized defaults)."""
    config = shared_serve_config(
        emulator,
        workdir / "spool",
        vendor_name="bench-cdn",
        server={"listen": f"127.0.0.1:{free_port()}", "shutdown_flush_seconds": 20},
        spool={"dir": str(workdir / "spool"), "max_bytes": "4GiB"},
    )
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


class Serve(ServeProcess):
    """The shared serve runner, plus what the benchmarks read from it."""

    def __init__(
        self,
        emulator: Emulator,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        # serve must run the logferry this bench imported: without PYTHONPATH the child would
        # import the venv's editable install (/work/main/src, say) even when the bench runs
        # from another worktree, and the figures would belong to other code.
        env = dict(env or {})
        if "PYTHONPATH" not in env and not os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = str(Path(sys.modules["logferry"].__file__ or "").parents[1])
        super().__init__(emulator, config, workdir, admin_token=ADMIN_TOKEN, env=env)

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of /metrics as (name, labels, value)."""
        with self.admin() as client:  # /metrics needs the admin token
            text = client.get("/metrics", timeout=30).text
        return [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(
            value
            for n, lab, value in self.metrics()
            if n == name and all(lab.get(k) == v for k, v in labels.items())
        )

    def status(self, customer: str, endpoint: str) -> dict[str, Any]:
        with self.admin() as client:
            r = client.get(f"/v1/customers/{customer}/endpoints/{endpoint}/status", timeout=30)
        r.raise_for_status()
        return dict(r.json())


@contextlib.contextmanager
def proxy_process(upstream: str, **flags: Any) -> Iterator[str]:
    """`python -m logferry.local.latency_proxy` in its own process (its own GIL, so the proxy's
    work is not charged to the bench process) in front of `upstream` → its URL. `flags` are the
    proxy's options without dashes: `s3_delay_ms=50, s3_bandwidth=100e6, default_delay_ms=20`."""
    argv = [sys.executable, "-m", "logferry.local.latency_proxy", "--upstream", upstream]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(int(value) if "bandwidth" in key else value)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit(f"latency proxy did not start (first line {url!r})")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s (last: {last!r})")


# ----------------------------------------------------------------------------- load


def bodies_from_lines(lines: Iterable[bytes], body_bytes: int) -> list[tuple[bytes, int]]:
    """Newline-terminated lines packed into bodies of about `body_bytes` → [(body, lines)]."""
    out: list[tuple[bytes, int]] = []
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= body_bytes:
            out.append((b"".join(batch), len(batch)))
            batch, size = [], 0
    if batch:
        out.append((b"".join(batch), len(batch)))
    return out


def loggen_bodies(lines: int, body_bytes: int, seed: int = 0) -> list[tuple[bytes, int]]:
    """`lines` access-log lines from bench/loggen.py in ~body_bytes bodies, cached on disk under
    $LOGFERRY_BENCH_CACHE (generating 2,000,000 lines takes ~30 s; reading them back ~1 s)."""
    loggen_hash = hashlib.sha256((BENCH / "loggen.py").read_bytes()).hexdigest()[:12]
    path = CACHE / f"loggen-{lines}-{seed}-{loggen_hash}.log"
    if not path.exists():
        note(f"generating {lines:,} lines with bench/loggen.py (cached in {path})")
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            batch: list[bytes] = []
            for line in generate_lines(lines, seed):
                batch.append(line)
                if len(batch) >= 8192:
                    f.write(b"".join(batch))
                    batch.clear()
            f.write(b"".join(batch))
        tmp.rename(path)
    data = path.read_bytes()
    out: list[tuple[bytes, int]] = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", min(len(data) - 1, start + body_bytes - 1)) + 1 or len(data)
        body = data[start:end]
        out.append((body, body.count(b"\n")))
        start = end
    return out


@dataclass
class LoadResult:
    first_request: float = 0.0
    last_202: float = 0.0
    first_429: float | None = None
    requests: int = 0
    accepted_lines: int = 0
    accepted_bytes: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    retry_after: list[float] = field(default_factory=list)

    @property
    def ingest_seconds(self) -> float:
        return self.last_202 - self.first_request


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class RawHttpClient:
    """A minimal keep-alive HTTP/1.1 POST client on a blocking socket, for the loaders.

    The loader shares this 2-core box with serve and the emulator, so its CPU is taken from
    what it measures: httpx cost ~1.3-1.5 CPU s to post 463 MB (h11 and httpcore in Python, per
    request), this ~0.3 s (the kernel's copy; `sendall` releases the GIL). It speaks only what
    serve answers here: Content-Length bodies, no chunked responses, reconnect on close.
    """

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 300.0) -> None:
        parsed = httpx.URL(url)
        self._address = (parsed.host, parsed.port or 80)
        self._path = parsed.raw_path.decode()
        self._timeout = timeout
        fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"POST {self._path} HTTP/1.1\r\nHost: {parsed.host}\r\n{fixed}"
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> RawHttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def post(self, body: bytes) -> RawResponse:
        try:
            return self._post(body)
        except OSError as exc:
            self.close()
            raise httpx.TransportError(f"raw client: {exc!r}") from exc

    def _post(self, body: bytes) -> RawResponse:
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=self._timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = f"{self._head}Content-Length: {len(body)}\r\n\r\n".encode()
        self._sock.sendall(head)
        self._sock.sendall(body)
        while b"\r\n\r\n" not in self._buf:
            self._recv()
        raw_head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buf) < length:
            self._recv()
        content, self._buf = self._buf[:length], self._buf[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return RawResponse(int(status_line.split(" ", 2)[1]), headers, content)

    def _recv(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionResetError("server closed the connection")
        self._buf += data


def post_bodies(
    url: str,
    token: str,
    bodies: Iterable[tuple[bytes, int]],
    *,
    connections: int = 4,
    on_429: str = "retry",
    on_202: Callable[[LoadResult], None] | None = None,
    stop: threading.Event | None = None,
    client: str = "raw",
) -> LoadResult:
    """POST each body once (202) on `connections` keep-alive connections.

    on_429="retry": wait Retry-After and send the same body again (nothing is lost);
    on_429="stop": record the first 429 and stop every connection (the body is not counted).
    `on_202` runs after each accepted body (under a lock), e.g. to stop after a size.
    `client`: "raw" (RawHttpClient, the default since 2026-12-01) or "httpx" (the loader of
    every figure before that date).
    """
    result = LoadResult()
    lock = threading.Lock()
    source: Iterator[tuple[bytes, int]] = iter(bodies)
    stop = stop or threading.Event()
    started = threading.Event()

    def take() -> tuple[bytes, int] | None:
        with lock:
            if stop.is_set():
                return None
            return next(source, None)

    def work() -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
        with (
            RawHttpClient(url, headers)
            if client == "raw"
            else httpx.Client(headers=headers, timeout=300)
        ) as http:
            while (item := take()) is not None:
                body, _ = item
                while not stop.is_set():
                    with lock:
                        if not started.is_set():
                            result.first_request = time.monotonic()
                            started.set()
                    try:
                        r = http.post(body) if client == "raw" else http.post(url, content=body)
                    except httpx.HTTPError as exc:
                        with lock:
                            result.errors.append(repr(exc))
                        time.sleep(0.5)
                        continue
                    now = time.monotonic()
                    with lock:
                        result.requests += 1
                        result.statuses[r.status_code] = result.statuses.get(r.status_code, 0) + 1
                    if r.status_code == 202:
                        with lock:
                            result.accepted_lines += r.json()["accepted"]
                            result.accepted_bytes += len(body)
                            result.last_202 = max(result.last_202, now)
                            if on_202 is not None:
                                on_202(result)
                        break
                    if r.status_code == 429:
                        retry = float(r.headers.get("Retry-After", "1"))
                        with lock:
                            result.retry_after.append(retry)
                            if result.first_429 is None:
                                result.first_429 = now
                        if on_429 == "stop":
                            stop.set()
                            return
                        stop.wait(retry)
                        continue
                    with lock:
                        result.errors.append(f"HTTP {r.status_code}: {r.text[:300]}")
                    stop.set()
                    return

    threads = [threading.Thread(target=work, name=f"load-{i}") for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


# ----------------------------------------------------------------------------- what arrived


def _decompress(key: str, body: bytes) -> bytes:
    if key.endswith(".gz"):
        out = []
        while body:  # concatenated gzip members (one per ~2 MiB of lines)
            d = zlib.decompressobj(wbits=31)
            out.append(d.decompress(body))
            body = d.unused_data
        return b"".join(out)
    if key.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if key.endswith(".snappy"):
        from logferry.sinks.codecs import get_codec

        return get_codec("snappy").decompress(body)
    return body


def count_bucket_lines(emulator: Emulator, bucket: str, prefix: str = "") -> dict[str, int]:
    """Lines, objects and stored bytes in the bucket, read as the customer's admin (each object
    downloaded and decompressed; newline-terminated lines counted)."""
    s3 = emulator.client("s3")
    lines = objects = stored = 0
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            stored += len(body)
            objects += 1
            lines += _decompress(item["Key"], body).count(b"\n")
        token = page.get("NextContinuationToken")
        if not token:
            break
    return {"lines": lines, "objects": objects, "stored_bytes": stored}


def count_stream_records(emulator: Emulator, stream_arn: str) -> dict[str, int]:
    """Records and data bytes in every shard of the stream, read as the customer's admin."""
    kinesis = emulator.client("kinesis")
    records = data = 0
    per_shard: dict[str, int] = {}
    for shard in kinesis.list_shards(StreamARN=stream_arn)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamARN=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        n = 0
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000, StreamARN=stream_arn)
            n += len(page["Records"])
            data += sum(len(r["Data"]) for r in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        per_shard[shard["ShardId"]] = n
        records += n
    return {"records": records, "data_bytes": data, "shards": len(per_shard), **per_shard}


def add_server_option(parser: Any) -> None:
    """`--server KEY=VALUE` (repeatable): any [server] setting of serve, for A/B runs."""
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [server] setting for serve, VALUE as JSON or a bare string "
        "(e.g. --server event_loop=asyncio --server http_parser=h11), for A/B runs",
    )


def server_options(pairs: list[str]) -> dict[str, Any]:
    """`--server KEY=VALUE` pairs as a dict (VALUE parsed as JSON when it is JSON)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--server {pair!r}: expected KEY=VALUE, e.g. event_loop=asyncio")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


# ----------------------------------------------------------------------------- spool backend


def add_spool_backend_option(parser: Any) -> None:
    """`--spool-backend local|nats` and `--nats-shards N`: the same bench on either spool."""
    parser.add_argument(
        "--spool-backend",
        choices=("local", "nats"),
        default="local",
        help="serve's [spool] backend: local (segmented files, the default) or nats (a "
        "single loopback nats-server started by the bench, JetStream sync_interval always)",
    )
    parser.add_argument(
        "--nats-shards",
        type=int,
        default=4,
        help="--spool-backend nats: [spool] shards (streams); 4 GiB of stream per shard",
    )


@dataclass
class SpoolBackend:
    """What a bench merges into serve's `[spool]`, and the nats-server to sample (if any)."""

    name: str
    spool: dict[str, Any]
    nats_pid: int | None = None
    nats: Any = None
    runs: int = 0

    def spool_table(self, **fields: Any) -> dict[str, Any]:
        """The `[spool]` extras of one serve run: a fresh stream prefix per call on NATS, so
        runs against the same server never share streams (a serve restart on the same spool
        reuses the table it got)."""
        if self.name != "nats":
            return {**self.spool, **fields}
        self.runs += 1
        return {**self.spool, "stream_prefix": f"B{os.getpid() % 10000}R{self.runs}", **fields}

    def sampled(self) -> dict[str, int]:
        """`{"nats": pid}` for ProcSampler when a nats-server runs (its CPU and RSS are part of
        what the NATS backend costs), else {}."""
        return {"nats": self.nats_pid} if self.nats_pid else {}


@contextlib.contextmanager
def spool_backend(name: str, workdir: Path, shards: int = 4) -> Iterator[SpoolBackend]:
    """`local`: nothing to start. `nats`: one nats-server on loopback, JetStream with
    `sync_interval: always` (an acknowledged publish is fsynced, as the local spool's appends
    are), via logferry.local.nats_cluster; stopped on exit."""
    if name == "local":
        yield SpoolBackend("local", {})
        return
    from logferry.local.nats_cluster import NatsCluster

    cluster = NatsCluster(Path(workdir) / "nats", nodes=1).start()
    try:
        node = cluster.nodes[0]
        assert node.process is not None
        yield SpoolBackend(
            "nats",
            {
                "backend": "nats",
                "nats_url": cluster.urls,
                "shards": shards,
                "replicas": 1,
                # JetStream's limit is per stream (max_bytes / shards, discard new): one busy
                # endpoint lives on one shard, so give each shard the local spool's 4 GiB.
                "max_bytes": f"{4 * shards}GiB",
            },
            nats_pid=node.process.pid,
            nats=cluster,
        )
    finally:
        cluster.stop()


class CpuBudget:
    """A CPU budget for some processes, as if they ran on a machine of `cores` cores: one
    cgroup per process with a CFS quota (why by hand: no library wraps cgroup quotas for a
    foreign pid; it is three file writes). Needs root and the cgroup `cpu` controller."""

    PERIOD_US = 100_000

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self.made: list[Path] = []
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        self.v2 = v2.exists() and "cpu" in v2.read_text().split()
        self.root = Path("/sys/fs/cgroup") if self.v2 else Path("/sys/fs/cgroup/cpu")
        if not (self.root / "cgroup.procs").exists():
            raise SystemExit(f"a CPU budget needs the cgroup cpu controller at {self.root}")

    def apply(self, pid: int | list[int], name: str) -> None:
        """Put `pid` (or every pid of a list, sharing one budget) in a new group."""
        pids = [pid] if isinstance(pid, int) else pid
        group = self.root / f"logferry-bench-{name}-{pids[0]}"
        group.mkdir()
        self.made.append(group)
        quota = int(self.cores * self.PERIOD_US)
        if self.v2:
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        for one in pids:
            (group / "cgroup.procs").write_text(str(one))

    def remove(self) -> None:
        for group in self.made:
            try:
                group.rmdir()  # empty once its process has exited
            except OSError as exc:
                note(f"cgroup {group} not removed: {exc}")
        self.made.clear()
