"""A loopback HTTP proxy in front of the emulator that throttles chosen Kinesis streams.

moto never throttles (DESIGN.md §5 item 6); a `logferry serve` child process cannot take
botocore hooks, so tests and benchmarks that need a stream throttled on *every* call put this
proxy at `aws.endpoint_url`. Everything else is forwarded byte for byte, Host header included,
so SigV4 signatures still verify at the emulator.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

THROTTLE_BODY = json.dumps(
    {"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded for stream"}
).encode()
_KINESIS_WRITES = ("Kinesis_20131202.PutRecords", "Kinesis_20131202.PutRecord")


class ThrottlingProxy:
    """Forward to `upstream`; answer 400 ProvisionedThroughputExceeded to writes of `streams`."""

    def __init__(self, upstream: str, streams: set[str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.streams = set(streams)
        self.throttled = 0
        self._client = httpx.Client(timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._throttles(self.headers.get("x-amz-target", ""), body):
                    proxy.throttled += 1
                    self._reply(400, {"content-type": "application/x-amz-json-1.1"}, THROTTLE_BODY)
                    return
                headers = [(k, v) for k, v in self.headers.items() if k.lower() != "connection"]
                response = proxy._client.request(
                    self.command, proxy.upstream + self.path, headers=headers, content=body
                )
                drop = {"transfer-encoding", "connection", "content-length", "content-encoding"}
                out = {k: v for k, v in response.headers.items() if k.lower() not in drop}
                self._reply(response.status_code, out, response.content)

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _throttles(self, target: str, body: bytes) -> bool:
        if target not in _KINESIS_WRITES:
            return False
        try:
            request = json.loads(body)
        except ValueError:
            return False
        name = request.get("StreamName") or str(request.get("StreamARN", "")).rsplit("/", 1)[-1]
        return name in self.streams

    def start(self) -> ThrottlingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


@contextlib.contextmanager
def throttling_proxy(upstream: str, streams: set[str]) -> Iterator[ThrottlingProxy]:
    proxy = ThrottlingProxy(upstream, streams).start()
    try:
        yield proxy
    finally:
        proxy.stop()
