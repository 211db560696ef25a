"""The web console in a real headless browser (Debian's chromium via Playwright) against a real
`logferry serve` and the emulator.

The customer does what the page says: the role is created in the emulator from the documents
*read off the page*, then Verify creates the endpoint, lines are ingested with the customer's
token and looked for in the bucket / stream. Screenshots of every page go to
`test-artifacts/console/` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from e2e_helpers import bucket_content, ingest, make_lines, put_customer, wait_pending_zero
from kinesis_helpers import lines_of, make_stream, read_stream
from logferry.cli import app
from logferry.local.emulator import Emulator
from s3_helpers import make_s3_role
from service_helpers import ServeProcess, base_config, reap_all, wait_for

CHROMIUM = os.environ.get("LOGFERRY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the Python package `playwright` (dev extra) is not installed"
)
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip(
        f"no chromium at {CHROMIUM}: install the Debian package `chromium` "
        "(apt-get install chromium; .ci/run does this)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def served(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("console")
    config = base_config(emulator, workdir / "spool", server={"idle_flush_seconds": 1})
    serve = ServeProcess(emulator, config, workdir).start()
    try:
        yield serve
    finally:
        serve.terminate()
        reap_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    try:
        yield tab
    finally:
        context.close()


def shot(page: Any, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000  # a real, non-blank image
    return path


def new_customer(serve: ServeProcess, customer: str) -> tuple[str, str]:
    """(token, external ID)."""
    with serve.admin() as admin:
        put_customer(admin, customer)
        token = admin.post(f"/v1/customers/{customer}/tokens").json()["token"]
        return token, admin.get(f"/v1/customers/{customer}").json()["external_id"]


def sign_in(page: Any, serve: ServeProcess, token: str) -> None:
    page.goto(f"{serve.url}/console/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def cli_policies(*args: str) -> Any:
    result = runner.invoke(app, ["role", "policies", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def page_json(page: Any, element_id: str) -> Any:
    return json.loads(page.locator(f"#{element_id}").inner_text())


def create_role_from_page(page: Any, emulator: Emulator, role_name: str) -> str:
    """Do what the page says, in the customer's account: role + managed policy + attachment."""
    iam = emulator.client("iam")
    arn = iam.create_role(
        RoleName=role_name,
        AssumeRolePolicyDocument=json.dumps(page_json(page, "trust-policy")),
    )["Role"]["Arn"]
    policy = iam.create_policy(
        PolicyName=f"{role_name}-policy",
        PolicyDocument=json.dumps(page_json(page, "permission-policy")),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role_name, PolicyArn=policy)
    return str(arn)


def verify_and_create(page: Any, role_arn: str) -> None:
    page.get_by_label("Role ARN").fill(role_arn)
    page.get_by_role("button", name="Verify and create").click()


def test_s3_endpoint_set_up_end_to_end(
    served: ServeProcess, emulator: Emulator, page: Any, unique: Callable[[str], str]
) -> None:
    customer = unique("shop")
    token, external_id = new_customer(served, customer)
    bucket = unique("logs")
    emulator.client("s3").create_bucket(Bucket=bucket)
    role_name = unique("vendor-logs")
    vendor = served.config["vendor"]["account_id"]

    sign_in(page, served, token)
    page.get_by_role("heading", name=f"Customer {customer}").wait_for()
    assert page.locator("#external-id").inner_text() == external_id
    assert page.locator("#vendor-account").inner_text() == vendor
    shot(page, "customer-home")
    page.get_by_role("link", name="Set up a new endpoint").click()
    page.get_by_label("Endpoint name").fill("cdn")
    page.get_by_label("Bucket", exact=True).fill(bucket)
    page.get_by_label("Key prefix (optional)").fill("cdn/")
    page.get_by_label("Role name (optional)").fill(role_name)
    page.get_by_role("button", name="Show the documents").click()
    page.locator("#trust-policy").wait_for()

    # The documents on the page are exactly `logferry role policies --json` for this input.
    expected = cli_policies(
        "--bucket", bucket, "--prefix", "cdn/", "--external-id", external_id,
        "--vendor-account", vendor, "--role-name", role_name,
    )  # fmt: skip
    assert page_json(page, "trust-policy") == expected["trust_policy"]
    assert page_json(page, "permission-policy") == expected["permission_policy"]
    assert page.locator("#resource-policy").count() == 0
    assert page.locator("#doc-external-id").inner_text() == external_id
    sts = page.locator("#sts-checklist li")
    assert sts.count() == 4
    assert "us-east-1: always active" in sts.nth(0).inner_text()
    for i, region in enumerate(["us-east-2", "us-west-1", "us-west-2"], start=1):
        assert region in sts.nth(i).inner_text()
        href = sts.nth(i).get_by_role("link").get_attribute("href")
        assert href.endswith("/iam/home#/account_settings")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download template").click()
    template = json.loads(Path(download.value.path()).read_text())
    assert template["Resources"]["LoggingRole"]["Properties"]["RoleName"] == role_name
    assert "aws iam create-role" in page.locator("#cli-script").inner_text()
    assert 'resource "aws_iam_role"' in page.locator("#terraform").inner_text()
    # Copy buttons put the document on the clipboard (falls back to execCommand headless).
    page.get_by_role("button", name="Copy trust policy").click()
    # A locator wait, not wait_for_function: the console's CSP forbids eval, which a string
    # predicate needs once it has to poll.
    page.locator("#live", has_text="trust policy copied").wait_for()
    shot(page, "wizard-s3-documents")

    role_arn = create_role_from_page(page, emulator, role_name)
    verify_and_create(page, role_arn)
    page.locator("#created").wait_for()
    assert page.locator("#checks .check-fail").count() == 0
    assert page.locator("#checks li").count() >= 2
    shot(page, "wizard-s3-created")

    sent = make_lines(f"console-s3-{customer}", 120)
    with served.as_token(token) as client:
        assert ingest(client, customer, "cdn", b"".join(x + b"\n" for x in sent)) == 120
    wait_pending_zero(served, customer, "cdn")
    found = bucket_content(emulator, bucket, "cdn/").lines
    delivered = b"\n".join(found.elements())
    assert all(line in delivered for line in sent), "not every line reached the bucket"

    page.get_by_role("link", name="Open its status page").click()
    page.get_by_role("heading", name="Endpoint cdn").wait_for()
    assert page.locator("#lines-delivered").inner_text() == "120"
    assert page.locator("#lines-pending").inner_text() == "0"
    assert "120 lines delivered" in (page.locator("#chart title").text_content() or "")
    assert page.locator("#chart rect").count() >= 1
    assert page.locator("#sts-health li").count() == 2
    shot(page, "endpoint-status-s3")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "endpoint-status-s3-phone")


def test_kinesis_endpoint_set_up_end_to_end(
    served: ServeProcess, emulator: Emulator, page: Any, unique: Callable[[str], str]
) -> None:
    customer = unique("media")
    token, external_id = new_customer(served, customer)
    stream = make_stream(emulator, unique("stream"))
    role_name = unique("vendor-kin")
    vendor = served.config["vendor"]["account_id"]

    sign_in(page, served, token)
    page.get_by_role("heading", name=f"Customer {customer}").wait_for()
    page.goto(f"{served.url}/console/#/c/{customer}/setup")
    page.get_by_label("Kinesis data stream").check()
    assert page.get_by_label("Bucket", exact=True).is_hidden()
    page.get_by_label("Endpoint name").fill("events")
    page.get_by_label("Stream ARN").fill(stream.arn)
    page.get_by_label("Role name (optional)").fill(role_name)
    page.get_by_role("button", name="Show the documents").click()
    page.locator("#resource-policy").wait_for()
    expected = cli_policies(
        "--stream-arn", stream.arn, "--external-id", external_id,
        "--vendor-account", vendor, "--role-name", role_name,
    )  # fmt: skip
    assert page_json(page, "trust-policy") == expected["trust_policy"]
    assert page_json(page, "permission-policy") == expected["permission_policy"]
    assert page_json(page, "resource-policy") == expected["resource_policy"]
    shot(page, "wizard-kinesis-documents")

    role_arn = create_role_from_page(page, emulator, role_name)
    verify_and_create(page, role_arn)
    page.locator("#created").wait_for()
    shot(page, "wizard-kinesis-created")

    sent = make_lines(f"console-kin-{customer}", 80)
    with served.as_token(token) as client:
        assert ingest(client, customer, "events", b"".join(x + b"\n" for x in sent)) == 80
    wait_pending_zero(served, customer, "events")
    records = b"\n".join(lines_of(read_stream(emulator, stream)))
    assert all(line in records for line in sent), "not every line reached the stream"

    page.get_by_role("link", name="Open its status page").click()
    page.get_by_role("heading", name="Endpoint events").wait_for()
    assert page.locator("#lines-delivered").inner_text() == "80"
    shot(page, "endpoint-status-kinesis")


def test_wrong_role_shows_the_failing_check_and_its_fix(
    served: ServeProcess, emulator: Emulator, page: Any, unique: Callable[[str], str]
) -> None:
    customer = unique("broken")
    token, external_id = new_customer(served, customer)
    # The guide's role, but its policy lacks s3:PutObject.
    role = make_s3_role(
        emulator, unique, external_id=external_id, actions=["s3:AbortMultipartUpload"]
    )
    sign_in(page, served, token)
    page.get_by_role("heading", name=f"Customer {customer}").wait_for()
    page.get_by_role("link", name="Set up a new endpoint").click()
    page.get_by_label("Endpoint name").fill("cdn")
    page.get_by_label("Bucket", exact=True).fill(role.bucket)
    page.get_by_role("button", name="Show the documents").click()
    page.locator("#trust-policy").wait_for()
    verify_and_create(page, role.role_arn)
    page.locator("#checks").wait_for()
    failed = page.locator("#checks .check-fail")
    assert failed.count() >= 1
    text = failed.first.inner_text()
    assert "FAIL" in text and "Fix:" in text
    assert "The role check failed" in page.get_by_role("alert").inner_text()
    shot(page, "wizard-wrong-role")
    with served.admin() as admin:
        assert admin.get(f"/v1/customers/{customer}/endpoints/cdn").status_code == 404


def test_a_customer_never_sees_another_customers_pages(
    served: ServeProcess, emulator: Emulator, page: Any, unique: Callable[[str], str]
) -> None:
    alice, bob = unique("alice"), unique("bob")
    _, alice_ext = new_customer(served, alice)
    bob_token, _ = new_customer(served, bob)
    role = make_s3_role(emulator, unique, external_id=alice_ext)
    with served.admin() as admin:
        r = admin.put(
            f"/v1/customers/{alice}/endpoints/private?verify=false",
            json={"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn},
        )
        assert r.status_code == 201, r.text
    sign_in(page, served, bob_token)
    page.get_by_role("heading", name=f"Customer {bob}").wait_for()
    for route in (f"#/c/{alice}/e/private", f"#/c/{alice}", f"#/c/{alice}/setup", "#/admin"):
        page.goto(f"{served.url}/console/{route}")
        page.get_by_role("heading", name="Not available").wait_for()
        alert = page.get_by_role("alert").inner_text()
        assert "does not belong" in alert or "admin token" in alert, alert
        # Nothing of Alice's data (her bucket, her role) is on Bob's page.
        assert role.bucket not in page.content() and role.role_arn not in page.content()
    shot(page, "other-customer-refused")


def test_a_slow_page_never_draws_over_the_page_that_replaced_it(
    served: ServeProcess, page: Any, unique: Callable[[str], str]
) -> None:
    """A read that answers after the user moved on (slow network, auto-refresh) is dropped."""
    alice, bob = unique("alice"), unique("bob")
    new_customer(served, alice)
    bob_token, _ = new_customer(served, bob)
    sign_in(page, served, bob_token)
    page.get_by_role("heading", name=f"Customer {bob}").wait_for()
    page.goto(f"{served.url}/console/#/c/{alice}")
    page.get_by_role("heading", name="Not available").wait_for()
    held: list[Any] = []
    page.route(f"**/v1/customers/{bob}", lambda r: held.append(r))
    page.goto(f"{served.url}/console/#/c/{bob}")
    while not held:  # the sync API runs route handlers only inside its own calls
        page.wait_for_timeout(50)
    page.goto(f"{served.url}/console/#/c/{alice}/setup")
    page.get_by_role("heading", name="Not available").wait_for()
    page.unroute(f"**/v1/customers/{bob}")
    try:
        with page.expect_event("requestfinished", timeout=5000):
            held[0].continue_()  # the old page's answer arrives late ...
    except Exception as late:  # ... unless the console already cancelled the read
        print("held read:", type(late).__name__, late)
    page.evaluate("() => new Promise((done) => setTimeout(done, 200))")
    assert page.get_by_role("heading", level=1).inner_text() == "Not available"
    assert bob not in page.title()


def test_admin_overview_sorts_and_drills_down(
    served: ServeProcess, emulator: Emulator, page: Any, unique: Callable[[str], str]
) -> None:
    customers = [unique("zeta"), unique("alpha")]
    with served.admin() as admin:
        for i, customer in enumerate(customers):
            _, ext = new_customer(served, customer)
            role = make_s3_role(emulator, unique, external_id=ext)
            body = {"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn}
            r = admin.put(f"/v1/customers/{customer}/endpoints/ep{i}?verify=false", json=body)
            assert r.status_code == 201, r.text
        with served.as_token(admin.headers["Authorization"].split()[1]) as as_admin:
            ingest(as_admin, customers[0], "ep0", b"a\nb\nc\n")
    empty = unique("empty")
    new_customer(served, empty)
    sign_in(page, served, served.admin_token)
    page.get_by_role("heading", name="All customers and endpoints").wait_for()
    setup_link = page.get_by_role("link", name=empty, exact=True)
    assert setup_link.get_attribute("href") == f"#/c/{empty}/setup"
    table = page.locator("#all-endpoints")
    for customer in customers:
        assert table.get_by_role("link", name=customer).count() == 1
    header = page.locator("th:has([data-sort=accepted])")
    assert header.get_attribute("aria-sort") == "none"
    page.locator("[data-sort=accepted]").click()
    page.locator("[data-sort=accepted]").click()  # descending: most accepted lines first
    assert header.get_attribute("aria-sort") == "descending"
    first = table.locator("tbody tr").first.locator("td").nth(4).inner_text()
    assert int(first.replace(",", "")) >= 3
    page.keyboard.press("Tab")  # the sort buttons and links are reachable by keyboard
    shot(page, "admin-overview")
    table.get_by_role("link", name="ep0").click()
    page.get_by_role("heading", name="Endpoint ep0").wait_for()
    wait_for(lambda: page.locator("#lines-accepted").inner_text() == "3", timeout=30)
    shot(page, "admin-drill-down")


def test_status_page_shows_delivery_errors_with_code_and_fix(
    served: ServeProcess, emulator: Emulator, page: Any, unique: Callable[[str], str]
) -> None:
    customer = unique("denied")
    token, external_id = new_customer(served, customer)
    role = make_s3_role(
        emulator, unique, external_id=external_id, actions=["s3:AbortMultipartUpload"]
    )
    with served.admin() as admin:  # the admin skips the check: delivery then fails
        r = admin.put(
            f"/v1/customers/{customer}/endpoints/cdn?verify=false",
            json={"type": "s3", "bucket_name": role.bucket, "iam_role": role.role_arn},
        )
        assert r.status_code == 201, r.text
    with served.as_token(token) as client:
        ingest(client, customer, "cdn", b"one\ntwo\n")
        wait_for(
            lambda: client.get(f"/v1/customers/{customer}/endpoints/cdn/status").json()["errors"],
            timeout=60,
        )
    sign_in(page, served, token)
    page.get_by_role("heading", name=f"Customer {customer}").wait_for()
    page.get_by_role("link", name="cdn", exact=True).click()
    page.get_by_role("heading", name="Endpoint cdn").wait_for()
    row = page.locator("#errors tbody tr").first
    cells = [row.locator("td").nth(i).inner_text() for i in range(4)]
    assert cells[0].endswith("Z") and "T" in cells[0]  # RFC 3339 time
    assert cells[1] == "AccessDenied"
    assert "s3:PutObject" in cells[3]  # the fix names the missing permission
    assert page.locator("#lines-pending").inner_text() == "2"
    title = page.locator("#chart title").text_content() or ""
    assert "0 delivery errors" not in title and "delivery errors" in title
    assert page.locator("#chart rect[fill='#b3261e']").count() >= 1
    shot(page, "endpoint-status-errors")
