"""A loopback HTTP proxy that gives the emulator real AWS round trips: delay, jitter, bandwidth
and injected errors, per AWS service.

On loopback the emulator answers in about a millisecond, so benchmarks against it say nothing
about what limits delivery at real latency (tens of ms per PutRecords, hundreds per 8 MiB part).
Put this proxy's URL at `aws.endpoint_url` (serve) or `endpoint_url` (boto3) and every call pays
the configured price. Requests are forwarded byte for byte, Host header included, so SigV4 still
verifies at the emulator. The service is read from the SigV4 credential scope
(`Credential=…/<date>/<region>/<service>/aws4_request`), so one URL serves S3, Kinesis, STS, IAM.

Hand-written on aiohttp because toxiproxy (the usual tool) is neither on PyPI nor in Debian, and it
works on TCP streams: it cannot tell an S3 part from a Kinesis call, nor answer with an AWS error.
Middlewares (`Middleware`) add request-aware faults, e.g. per-shard Kinesis quotas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field
from yarl import URL

from logferry.spool.size import parse_size

REWRITE_HEADER = "x-logferry-rewritten"
"""Must equal `logferry.local.patches.REWRITE_HEADER` (not imported: patches imports moto)."""
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "upgrade",
    "proxy-connection",
}
_REQUEST_DROP = _HOP_BY_HOP - {"content-encoding"}


class LinkProfile(BaseModel):
    """What one AWS service's link costs. All zeros/None = a transparent proxy."""

    delay_ms: float = Field(0.0, ge=0, description="Added once per call, before forwarding.")
    jitter_ms: float = Field(0.0, ge=0, description="Uniform extra delay in [0, jitter_ms].")
    bandwidth_bytes_per_s: float | None = Field(
        None, gt=0, description="One link per service, shared by every connection, both ways."
    )
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of calls answered 500.")
    throttle_rate: float = Field(
        0.0, ge=0, le=1, description="Share of calls answered with the service's throttle error."
    )


class ProxyConfig(BaseModel):
    services: dict[str, LinkProfile] = Field(default_factory=dict)
    """Per service name as in the SigV4 scope ("s3", "kinesis", "sts", "iam"); "default" for
    any other."""
    seed: int | None = None

    def profile(self, service: str) -> LinkProfile:
        return self.services.get(service) or self.services.get("default") or LinkProfile()


@dataclass
class ProxyRequest:
    service: str
    method: str
    path: str
    """Path and query string, as received."""
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def target(self) -> str:
        """The X-Amz-Target of JSON protocols (Kinesis: "Kinesis_20131202.PutRecords")."""
        for key, value in self.headers:
            if key.lower() == "x-amz-target":
                return value
        return ""


@dataclass
class ProxyResponse:
    status: int
    headers: dict[str, str]
    body: bytes


Forward = Callable[..., Awaitable[ProxyResponse]]
Middleware = Callable[[ProxyRequest, Forward], Awaitable[ProxyResponse]]
"""`async def mw(request, forward) -> response`; `await forward(body=None)` sends the request
upstream (with `body` instead of the original when given) and returns the emulator's answer."""


@dataclass
class ServiceStats:
    calls: int = 0
    bytes_in: int = 0
    """Request body bytes, client → AWS."""
    bytes_out: int = 0
    errors_injected: int = 0
    throttles_injected: int = 0
    delay_seconds: float = 0.0


class _Link:
    """A token bucket per service: the proxy's model of the network path's bandwidth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at = time.monotonic()
        self._lock = asyncio.Lock()

    async def transfer(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + nbytes / self.rate
            wait = self._free_at - now
        await asyncio.sleep(wait)


def _throttle_answer(service: str) -> ProxyResponse:
    if service == "s3":
        body = (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        return ProxyResponse(503, {"content-type": "application/xml"}, body)
    if service == "kinesis":
        body = json.dumps(
            {"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded"}
        ).encode()
        return ProxyResponse(400, {"content-type": "application/x-amz-json-1.1"}, body)
    body = (
        b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
        b"<Message>Rate exceeded</Message></Error></ErrorResponse>"
    )
    return ProxyResponse(400, {"content-type": "text/xml"}, body)


def _error_answer(service: str) -> ProxyResponse:
    if service == "kinesis":
        body = json.dumps({"__type": "InternalFailure", "message": "injected"}).encode()
        return ProxyResponse(500, {"content-type": "application/x-amz-json-1.1"}, body)
    body = b"<Error><Code>InternalError</Code><Message>injected by the proxy</Message></Error>"
    return ProxyResponse(500, {"content-type": "application/xml"}, body)


def service_of(headers: Any) -> str:
    match = _SCOPE.search(headers.get("authorization", ""))
    return match.group(1) if match else "default"


class LatencyProxy:
    """The proxy on its own event loop thread; `url` is where clients point."""

    def __init__(
        self,
        upstream: str,
        config: ProxyConfig | None = None,
        middlewares: Sequence[Middleware] = (),
        *,
        port: int = 0,
        rewrite_token: str = "",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rewrite_token = rewrite_token
        """The emulator's `rewrite_token`: needed by middlewares that forward a changed body."""
        self.config = config or ProxyConfig()
        self.middlewares = list(middlewares)
        self._rng = random.Random(self.config.seed)
        self._stats: dict[str, ServiceStats] = {}
        self._links: dict[str, _Link] = {}
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LatencyProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=600),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
        )
        app = web.Application(client_max_size=1 << 31)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False: a signed body with Content-Encoding (S3 PutObject of a .gz
        # file) must reach the emulator byte for byte, not decoded by aiohttp.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, auto_decompress=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, backlog=1024)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per service: calls, bytes each way, injected faults, delay added (a snapshot)."""
        return {name: dict(vars(s)) for name, s in sorted(self._stats.items())}

    # ------------------------------------------------------------------ one call

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        service = service_of(request.headers)
        profile = self.config.profile(service)
        stats = self._stats.setdefault(service, ServiceStats())
        stats.calls += 1
        stats.bytes_in += len(body)
        delay = profile.delay_ms / 1000 + self._rng.uniform(0, profile.jitter_ms / 1000)
        if delay > 0:
            stats.delay_seconds += delay
            await asyncio.sleep(delay)
        link = self._link(service, profile)
        if link is not None:
            await link.transfer(len(body))
        roll = self._rng.random()
        if roll < profile.throttle_rate:
            stats.throttles_injected += 1
            return self._reply(_throttle_answer(service))
        if roll < profile.throttle_rate + profile.error_rate:
            stats.errors_injected += 1
            return self._reply(_error_answer(service))
        proxy_request = ProxyRequest(
            service=service,
            method=request.method,
            path=request.raw_path,  # as signed: path_qs would decode %3A in S3 keys
            # Content-Encoding is end to end and signed (S3 PutObject of a .gz file): kept.
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP],
            body=body,
        )
        answer = await self._chain(proxy_request, 0)
        if link is not None:
            await link.transfer(len(answer.body))
        stats.bytes_out += len(answer.body)
        return self._reply(answer)

    def _link(self, service: str, profile: LinkProfile) -> _Link | None:
        if profile.bandwidth_bytes_per_s is None:
            return None
        link = self._links.get(service)
        if link is None or link.rate != profile.bandwidth_bytes_per_s:
            link = self._links[service] = _Link(profile.bandwidth_bytes_per_s)
        return link

    async def _chain(self, request: ProxyRequest, index: int) -> ProxyResponse:
        if index == len(self.middlewares):
            return await self._forward(request)

        async def forward(body: bytes | None = None) -> ProxyResponse:
            nxt = request if body is None else self._rewritten(request, body)
            return await self._chain(nxt, index + 1)

        return await self.middlewares[index](request, forward)

    async def _forward(self, request: ProxyRequest) -> ProxyResponse:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers if k.lower() != "content-length"]
        async with self._session.request(
            request.method,
            URL(self.upstream + request.path, encoded=True),
            headers=headers,
            data=request.body if request.body or request.method in ("POST", "PUT") else None,
            allow_redirects=False,
        ) as response:
            body = await response.read()
            out = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
            return ProxyResponse(response.status, out, body)

    def _rewritten(self, request: ProxyRequest, body: bytes) -> ProxyRequest:
        if body == request.body:
            return request
        if not self.rewrite_token:
            raise RuntimeError(
                "a middleware changed a signed body but the proxy has no rewrite_token: pass "
                "the emulator's (latency_proxy(..., rewrite_token=emulator.rewrite_token))"
            )
        headers = [h for h in request.headers if h[0].lower() != REWRITE_HEADER]
        headers.append((REWRITE_HEADER, self.rewrite_token))
        return ProxyRequest(request.service, request.method, request.path, headers, body)

    @staticmethod
    def _reply(answer: ProxyResponse) -> web.Response:
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)


@contextlib.contextmanager
def latency_proxy(
    upstream: str,
    config: ProxyConfig | None = None,
    middlewares: Sequence[Middleware] = (),
    *,
    rewrite_token: str = "",
) -> Iterator[LatencyProxy]:
    proxy = LatencyProxy(upstream, config, middlewares, rewrite_token=rewrite_token).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _parse(argv: Sequence[str]) -> tuple[str, int, ProxyConfig]:
    parser = argparse.ArgumentParser(
        prog="python -m logferry.local.latency_proxy",
        description="Loopback proxy adding AWS-like latency, bandwidth and errors per service. "
        "Prints its URL on the first line of stdout.",
    )
    parser.add_argument("--upstream", required=True, help="the emulator's URL")
    parser.add_argument("--port", type=int, default=0, help="listen port on 127.0.0.1 (0 = any)")
    parser.add_argument("--seed", type=int, default=None)
    for service in ("s3", "kinesis", "sts", "iam", "default"):
        parser.add_argument(f"--{service}-delay-ms", type=float, default=0.0)
        parser.add_argument(f"--{service}-jitter-ms", type=float, default=0.0)
        parser.add_argument(f"--{service}-bandwidth", default=None, help="bytes/s, e.g. 100MB")
        parser.add_argument(f"--{service}-error-rate", type=float, default=0.0)
        parser.add_argument(f"--{service}-throttle-rate", type=float, default=0.0)
    args = vars(parser.parse_args(argv))
    services: dict[str, LinkProfile] = {}
    for service in ("s3", "kinesis", "sts", "iam", "default"):
        bandwidth = args[f"{service}_bandwidth"]
        profile = LinkProfile(
            delay_ms=args[f"{service}_delay_ms"],
            jitter_ms=args[f"{service}_jitter_ms"],
            bandwidth_bytes_per_s=float(parse_size(bandwidth)) if bandwidth else None,
            error_rate=args[f"{service}_error_rate"],
            throttle_rate=args[f"{service}_throttle_rate"],
        )
        if profile != LinkProfile():
            services[service] = profile
    return args["upstream"], args["port"], ProxyConfig(services=services, seed=args["seed"])


def main(argv: Sequence[str] | None = None) -> None:
    upstream, port, config = _parse(sys.argv[1:] if argv is None else argv)
    proxy = LatencyProxy(upstream, config, port=port).start()
    print(proxy.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
