"""Security headers on every answer of a real `logferry serve`: the ingest fast path (which
answers without FastAPI), OTLP, the API, errors, /metrics, probes and the console."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from logferry.local.emulator import Emulator
from logferry.service.security_headers import CONTENT_SECURITY_POLICY, SecurityHeaders
from s3_helpers import make_s3_role
from service_helpers import ServeProcess, base_config, reap_all, s3_customer

TOKEN = "customer-token-for-security-headers"
ALWAYS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "referrer-policy": "no-referrer",
}


@pytest.fixture(scope="module")
def served(
    emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServeProcess, str]]:
    workdir = tmp_path_factory.mktemp("headers")
    customer = "hdr-cust"
    role = make_s3_role(emulator, lambda p: f"{p}-{uuid.uuid4().hex[:8]}", external_id=customer)
    customers = [
        {**s3_customer(customer, "HDR_TOKEN", role.bucket, role.role_arn), "external_id": customer}
    ]
    config = base_config(emulator, workdir / "spool", customers=customers)
    serve = ServeProcess(emulator, config, workdir, env={"HDR_TOKEN": TOKEN}).start()
    try:
        yield serve, customer
    finally:
        serve.terminate()
        reap_all()


ROUTES: list[tuple[str, str, str, dict[str, Any], int]] = [
    # (name, method, path, request kwargs, expected status); {c} is the customer
    ("ingest 202", "POST", "/v1/ingest/{c}/s3", {"content": b"1\n2\n", "auth": "customer"}, 202),
    ("ingest 401", "POST", "/v1/ingest/{c}/s3", {"content": b"one\n"}, 401),
    ("ingest 404", "POST", "/v1/ingest/{c}/nope", {"content": b"one\n", "auth": "customer"}, 404),
    (
        "ingest 415",
        "POST",
        "/v1/ingest/{c}/s3",
        {"content": b"x", "auth": "customer", "headers": {"content-encoding": "br"}},
        415,
    ),
    ("otlp 200", "POST", "/v1/otlp/{c}/s3/v1/logs", {"json": {}, "auth": "customer"}, 200),
    ("otlp 401", "POST", "/v1/otlp/{c}/s3/v1/logs", {"json": {}}, 401),
    ("api customer", "GET", "/v1/customers/{c}", {"auth": "admin"}, 200),
    ("api token issue", "POST", "/v1/customers/{c}/tokens", {"auth": "admin"}, 201),
    ("api whoami", "GET", "/v1/whoami", {"auth": "customer"}, 200),
    ("api 403", "GET", "/v1/customers", {"auth": "customer"}, 403),
    ("api 422", "PUT", "/v1/customers/{c}/endpoints/s3", {"json": {}, "auth": "customer"}, 422),
    ("metrics", "GET", "/metrics", {"auth": "admin"}, 200),
    ("metrics 401", "GET", "/metrics", {}, 401),
    ("healthz", "GET", "/healthz", {}, 200),
    ("readyz", "GET", "/readyz", {}, 200),
    ("openapi", "GET", "/openapi.json", {}, 200),
    ("console", "GET", "/console/", {}, 200),
    ("console js", "GET", "/console/console.js", {}, 200),
    ("console redirect", "GET", "/console", {}, 308),
    ("404", "GET", "/no/such/path", {}, 404),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "expected"),
    [r[1:] for r in ROUTES],
    ids=[r[0] for r in ROUTES],
)
def test_every_answer_carries_the_security_headers(
    served: tuple[ServeProcess, str], method: str, path: str, kwargs: dict[str, Any], expected: int
) -> None:
    serve, customer = served
    kwargs = dict(kwargs)
    auth = kwargs.pop("auth", None)
    headers = dict(kwargs.pop("headers", {}))
    if auth:
        headers["Authorization"] = "Bearer " + (TOKEN if auth == "customer" else serve.admin_token)
    with httpx.Client(base_url=serve.url, timeout=60, follow_redirects=False) as http:
        answer = http.request(method, path.format(c=customer), headers=headers, **kwargs)
    assert answer.status_code == expected, answer.text[:300]
    for name, value in ALWAYS.items():
        assert answer.headers.get_list(name) == [value], (name, dict(answer.headers))
    if path.startswith("/console/"):
        assert "cache-control" not in answer.headers  # static files may be cached
    else:  # API answers (a new token, a whoami) never belong in a cache
        assert answer.headers.get_list("cache-control") == ["no-store"]


def test_the_console_needs_nothing_the_policy_forbids(served: tuple[ServeProcess, str]) -> None:
    """No inline script or style, no external asset: what `script-src 'self'; style-src 'self'`
    allows (the browser test, tests/test_console_browser.py, runs it for real)."""
    serve, _ = served
    with httpx.Client(base_url=serve.url, timeout=30) as http:
        page = http.get("/console/").text
        script = http.get("/console/console.js").text
    assert "<script>" not in page and "style=" not in page and "<style" not in page
    assert "style:" not in script and '"style"' not in script and "http://" not in page


def test_a_header_the_app_sets_itself_wins_and_nothing_is_doubled() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-security-policy", b"default-src 'self'")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": "/docs", "method": "GET", "headers": []}
    asyncio.run(SecurityHeaders(app)(scope, receive, send))
    headers = sent[0]["headers"]
    names = [k for k, _ in headers]
    assert len(names) == len(set(names))
    assert dict(headers)[b"content-security-policy"] == b"default-src 'self'"
    assert dict(headers)[b"x-frame-options"] == b"DENY"
    assert dict(headers)[b"cache-control"] == b"no-store"
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}


def test_the_console_runs_under_its_policy_in_a_browser(served: tuple[ServeProcess, str]) -> None:
    """Every console page a customer and the admin reach, the copy fallback included, with no
    CSP violation in the browser's console; and the policy is really in force there."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = os.environ.get("LOGFERRY_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(chromium):
        pytest.skip(f"no chromium at {chromium} (apt-get install chromium)")
    serve, customer = served
    messages: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--headless=new", "--no-sandbox", "--disable-gpu"]
        )
        try:
            tab = browser.new_context().new_page()
            # A browser that refuses the clipboard API: the copy button's fallback must run.
            tab.add_init_script(
                "Object.defineProperty(navigator, 'clipboard', {value: {writeText: () =>"
                " Promise.reject(new Error('clipboard refused'))}});"
            )
            tab.set_default_timeout(60_000)
            tab.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            tab.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))

            def sign_in(token: str) -> None:
                tab.goto(f"{serve.url}/console/")
                tab.get_by_label("API token").fill(token)
                tab.get_by_role("button", name="Sign in").click()

            sign_in("not-a-token")
            tab.get_by_text("logferry admin tokens create CUSTOMER").wait_for()
            sign_in(TOKEN)
            tab.get_by_role("heading", name=f"Customer {customer}").wait_for()
            tab.goto(f"{serve.url}/console/#/c/{customer}/e/s3")
            tab.get_by_role("heading", name="Endpoint s3").wait_for()
            tab.locator("#chart").wait_for()
            tab.goto(f"{serve.url}/console/#/c/{customer}/setup")
            tab.get_by_label("Endpoint name").fill("cdn")
            tab.get_by_label("Bucket", exact=True).fill("some-bucket")
            tab.get_by_role("button", name="Show the documents").click()
            tab.get_by_role("button", name="Copy trust policy").click()
            tab.get_by_text("trust policy copied to the clipboard").wait_for(state="attached")
            tab.get_by_role("button", name="Sign out").click()
            sign_in(serve.admin_token)
            tab.wait_for_url("**/console/#/admin")
            tab.get_by_role("link", name=customer).first.wait_for()
            refused = [
                m for m in messages if "Content Security Policy" in m or m.startswith("pageerror")
            ]
            assert not refused, refused
            # And the policy is in force: an inline style attribute is refused.
            colour = tab.evaluate(
                "() => { const d = document.createElement('div');"
                " d.setAttribute('style', 'color: rgb(1, 2, 3)'); document.body.append(d);"
                " return getComputedStyle(d).color; }"
            )
            assert colour != "rgb(1, 2, 3)"
        finally:
            browser.close()
