"""Seeded generator of realistic Apache combined access-log lines.

Benchmarks of codecs and framing are only meaningful on data that compresses like real CDN logs:
repeated clients and user agents, a skewed mix of paths and statuses, log-normal body sizes and
monotonically increasing timestamps. Uniform random bytes (or one line repeated) would make every
codec look either hopeless or magical. Same `seed` → same lines, so results are comparable.

CLI: `python bench/loggen.py N [--seed S] > access.log`
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

_METHODS = (("GET", 88), ("POST", 7), ("HEAD", 3), ("PUT", 1), ("DELETE", 1))
_STATUSES = (
    (200, 78),
    (304, 8),
    (301, 2),
    (302, 3),
    (206, 1),
    (403, 1),
    (404, 5),
    (429, 1),
    (500, 0.6),
    (502, 0.2),
    (503, 0.2),
)
_SECTIONS = ("products", "blog", "docs", "api/v1/items", "api/v2/users", "search", "cart", "help")
_STATIC_EXT = ("css", "js", "png", "jpg", "webp", "svg", "woff2", "ico")
_WORDS = (
    "alpha", "bravo", "cloud", "delta", "edge", "fast", "green", "harbor", "index", "jolly",
    "kite", "lumen", "metro", "nova", "orbit", "pixel", "quartz", "river", "solar", "tango",
)  # fmt: skip
_REFERRERS = (
    "-",
    "https://www.google.com/",
    "https://www.bing.com/search?q=edge+logs",
    "https://duckduckgo.com/",
    "https://t.co/abc123",
    "https://news.ycombinator.com/",
    "https://www.example.com/",
    "https://www.example.com/products",
    "https://www.example.com/blog/fast-orbit",
)
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "Wget/1.21.4",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
)
_UA_WEIGHTS = (30, 14, 6, 16, 12, 6, 3, 2, 2, 2, 1, 3, 1, 2)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _weighted(pairs: tuple[tuple[object, float], ...]) -> tuple[list[object], list[float]]:
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _client_pool(rng: random.Random, size: int) -> list[str]:
    """IPv4 and some IPv6 clients; a pool so that clients repeat, as they do in real traffic."""
    pool: list[str] = []
    for _ in range(size):
        if rng.random() < 0.12:
            pool.append(
                f"2001:db8:{rng.randrange(0x10000):x}:{rng.randrange(0x10000):x}::"
                f"{rng.randrange(1, 0x10000):x}"
            )
        else:
            pool.append(
                f"{rng.randrange(1, 224)}.{rng.randrange(256)}."
                f"{rng.randrange(256)}.{rng.randrange(1, 255)}"
            )
    return pool


def _path(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return (
            f"/static/{rng.choice(_WORDS)}/{rng.choice(_WORDS)}-{rng.randrange(1000):03d}"
            f".{rng.choice(_STATIC_EXT)}"
        )
    section = rng.choice(_SECTIONS)
    if r < 0.65:
        return f"/{section}/{rng.randrange(1, 200_000)}"
    if r < 0.85:
        return f"/{section}/{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"
    query = f"q={rng.choice(_WORDS)}+{rng.choice(_WORDS)}&page={rng.randrange(1, 20)}"
    if rng.random() < 0.3:
        query += f"&utm_source={rng.choice(('newsletter', 'twitter', 'partner'))}"
    return f"/{section}?{query}"


def _size(rng: random.Random, status: int, path: str) -> str:
    if status in (304, 204) or (status >= 500 and rng.random() < 0.5):
        return "0" if status != 304 else "-"
    mu = 9.5 if "/static/" in path else 8.5
    return str(max(1, int(math.exp(rng.gauss(mu, 1.3)))))


def generate_lines(n: int, seed: int = 0) -> Iterator[bytes]:
    """Yield `n` Apache combined-format lines, each ending with b"\\n"; deterministic per seed."""
    rng = random.Random(seed)
    clients = _client_pool(rng, 5000)
    users = ["-"] * 40 + ["alice", "bob", "carol", "svc-deploy"]
    methods, method_w = _weighted(_METHODS)
    statuses, status_w = _weighted(_STATUSES)
    t = datetime(2024, 5, 1, 0, 0, 0, tzinfo=UTC)
    tz = "+0000"
    for _ in range(n):
        t += timedelta(microseconds=rng.randrange(0, 4000))
        # Zipf-like client choice: a few heavy hitters, a long tail.
        client = clients[min(len(clients) - 1, int(rng.paretovariate(1.1)) - 1)]
        if rng.random() < 0.5:
            client = rng.choice(clients)
        method = rng.choices(methods, method_w)[0]
        status = int(rng.choices(statuses, status_w)[0])  # type: ignore[call-overload]
        path = _path(rng)
        proto = "HTTP/2.0" if rng.random() < 0.6 else "HTTP/1.1"
        ua = rng.choices(_USER_AGENTS, _UA_WEIGHTS)[0]
        ts = f"{t.day:02d}/{_MONTHS[t.month - 1]}/{t.year}:{t:%H:%M:%S} {tz}"
        line = (
            f'{client} - {rng.choice(users)} [{ts}] "{method} {path} {proto}" {status} '
            f'{_size(rng, status, path)} "{rng.choice(_REFERRERS)}" "{ua}"\n'
        )
        yield line.encode()


def generate_bytes(approx_bytes: int, seed: int = 0) -> bytes:
    """About `approx_bytes` of whole lines (stops at the first line that reaches the target)."""
    out: list[bytes] = []
    total = 0
    for line in generate_lines(sys.maxsize, seed):
        out.append(line)
        total += len(line)
        if total >= approx_bytes:
            break
    return b"".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of lines to write to stdout")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write = sys.stdout.buffer.write
    batch: list[bytes] = []
    for line in generate_lines(args.n, args.seed):
        batch.append(line)
        if len(batch) >= 4096:
            write(b"".join(batch))
            batch.clear()
    write(b"".join(batch))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
