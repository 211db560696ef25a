"""One HTTP request driven through an ASGI app in process (no socket, every ASGI message kept):
the ingest route's parity test and `bench/ingest_request_cpu.py` both call serve's app this way."""

from __future__ import annotations

import asyncio
from typing import Any


async def asgi_request(
    app: Any,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    piece_bytes: int = 16384,
) -> list[dict[str, Any]]:
    """Send one request (body in `piece_bytes` pieces) and return every message the app sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8080"), *headers],
        "state": {},
    }
    pieces = [body[i : i + piece_bytes] for i in range(0, len(body), piece_bytes)] or [b""]

    async def receive() -> dict[str, Any]:
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        await asyncio.sleep(3600)  # a client that stays connected after its body
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent
