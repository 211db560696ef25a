"""The write probe (CreateMultipartUpload + Abort in the customer's bucket) runs once per
endpoint setting and after a setup error — not again at every start of `logferry serve`.

Observed from outside: serve talks to S3 through a recording loopback proxy, and the probe's
calls are counted by their key (`.logferry-healthcheck-`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import ProxyConfig, ProxyRequest, ProxyResponse, latency_proxy
from s3_helpers import make_s3_role, pending_uploads, read_objects
from service_helpers import ServeProcess, base_config, reap_all, wait_for

TOKEN = "token-of-the-probed-customer-0000"


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    reap_all()


class ProbeLog:
    """S3 calls that serve made, as (method, path) — recorded by a proxy middleware."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    async def __call__(self, request: ProxyRequest, forward: Any) -> ProxyResponse:
        if request.service == "s3":
            with self._lock:
                self.calls.append((request.method, request.path))
        return await forward()  # type: ignore[no-any-return]

    def probes(self) -> int:
        """Probe uploads created (POST ...?uploads on a healthcheck key)."""
        with self._lock:
            return sum(
                1
                for method, path in self.calls
                if method == "POST" and ".logferry-healthcheck-" in path and "uploads" in path
            )


def _config(
    emulator: Emulator,
    tmp_path: Path,
    proxy_url: str,
    customer: str,
    role,
    path: str,
    spool: dict[str, Any] | None = None,
):
    return base_config(
        emulator,
        tmp_path / "spool",
        aws={"endpoint_url": proxy_url},
        spool=spool or {},
        customers=[
            {
                "id": customer,
                "token_env": "PROBED_TOKEN",
                "endpoints": [
                    {
                        "type": "s3",
                        "name": "s3",
                        "bucket_name": role.bucket,
                        "iam_role": role.role_arn,
                        "path": path,
                        "period": 1,
                    }
                ],
            }
        ],
    )


def _send_and_wait(serve: ServeProcess, customer: str, lines: list[bytes], delivered: int) -> None:
    status_url = f"/v1/customers/{customer}/endpoints/s3/status"
    with serve.as_token(TOKEN) as client:
        answer = client.post(f"/v1/ingest/{customer}/s3", content=b"\n".join(lines) + b"\n")
        assert answer.status_code == 202, answer.text
        wait_for(lambda: client.get(status_url).json()["lines"]["delivered"] >= delivered, 90)


def test_the_probe_runs_once_per_setting_and_again_after_a_setup_error(
    emulator: Emulator, unique, tmp_path: Path, spool_backend: dict[str, Any]
) -> None:
    """On both backends: with NATS the proof is also in the endpoint's record, and a setup
    error must still make this node probe again (the record's proof is stale too)."""
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    log = ProbeLog()
    with latency_proxy(emulator.url, ProxyConfig(), middlewares=[log]) as proxy:
        config = _config(emulator, tmp_path, proxy.url, customer, role, "first/", spool_backend)
        env = {"PROBED_TOKEN": TOKEN}
        serve = ServeProcess(emulator, config, tmp_path, env=env).start()
        _send_and_wait(serve, customer, [b"one-%d" % i for i in range(10)], 10)
        assert log.probes() == 1
        assert serve.terminate() == 0

        # A restart with the same settings: the pass is remembered, no probe.
        serve = ServeProcess(emulator, config, tmp_path, env=env).start()
        _send_and_wait(serve, customer, [b"two-%d" % i for i in range(10)], 20)
        assert log.probes() == 1
        puts_before = sum(1 for m, _ in log.calls if m == "PUT")

        # A setup error (the customer detached the permission policy) forgets the pass...
        iam = emulator.client("iam")
        role_name = role.role_arn.rsplit("/", 1)[1]
        (attached,) = iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
        iam.detach_role_policy(RoleName=role_name, PolicyArn=attached["PolicyArn"])
        with serve.as_token(TOKEN) as client:
            status_url = f"/v1/customers/{customer}/endpoints/s3/status"
            assert client.post(f"/v1/ingest/{customer}/s3", content=b"three\n").status_code == 202
            status = wait_for(lambda: (s := client.get(status_url).json())["errors"] and s)
            assert status["errors"][0]["code"] == "AccessDenied"
            assert sum(1 for m, _ in log.calls if m == "PUT") > puts_before
            # ...so once it is fixed, the destination is proven again before the next write.
            iam.attach_role_policy(RoleName=role_name, PolicyArn=attached["PolicyArn"])
            wait_for(lambda: client.get(status_url).json()["lines"]["delivered"] == 21, 120)
        assert log.probes() == 2
        assert serve.terminate() == 0

        # Changed settings (another path): a new probe, under the new path.
        config = _config(emulator, tmp_path, proxy.url, customer, role, "second/", spool_backend)
        serve = ServeProcess(emulator, config, tmp_path, env=env).start()
        _send_and_wait(serve, customer, [b"four-%d" % i for i in range(10)], 31)
        assert log.probes() == 3
        last_probe = [p for m, p in log.calls if ".logferry-healthcheck-" in p][-1]
        assert "/second/" in last_probe
        assert serve.terminate() == 0

    assert not pending_uploads(emulator, role.bucket)  # every probe was aborted
    landed = b"".join(obj.body for obj in read_objects(emulator, role.bucket).values())
    assert sorted(landed.split(b"\n")[:-1]) == sorted(
        [b"one-%d" % i for i in range(10)]
        + [b"two-%d" % i for i in range(10)]
        + [b"three"]
        + [b"four-%d" % i for i in range(10)]
    )


def test_a_passing_role_check_stands_in_for_the_probe_and_sends_the_endpoints_headers(
    emulator: Emulator, unique, tmp_path: Path
) -> None:
    """Creating an endpoint through the API runs the role check; its write probe uses the
    endpoint's own headers (here a storage class) and spares the worker a second probe."""
    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)
    log = HeaderLog()
    with latency_proxy(emulator.url, ProxyConfig(), middlewares=[log]) as proxy:
        config = base_config(emulator, tmp_path / "spool", aws={"endpoint_url": proxy.url})
        serve = ServeProcess(emulator, config, tmp_path).start()
        with serve.admin() as admin:
            assert admin.put(f"/v1/customers/{customer}", json={}).status_code == 201
            body = {
                "type": "s3",
                "bucket_name": role.bucket,
                "iam_role": role.role_arn,
                "path": "logs/",
                "period": 1,
                "redundancy": "standard_ia",
            }
            created = admin.put(f"/v1/customers/{customer}/endpoints/s3", json=body)
            assert created.status_code == 201, created.text
            (check,) = log.creates("logs/logferry-role-check-")
            assert check["x-amz-storage-class"] == "STANDARD_IA"
            lines = b"".join(b"line-%d\n" % i for i in range(5))
            assert admin.post(f"/v1/ingest/{customer}/s3", content=lines).status_code == 202
            status_url = f"/v1/customers/{customer}/endpoints/s3/status"
            wait_for(lambda: admin.get(status_url).json()["lines"]["delivered"] == 5, 90)
            assert log.creates(".logferry-healthcheck-") == []

            # An explicit verify proves it again; a changed endpoint created without the check
            # (admin, verify=false) is probed by the worker before its first write.
            assert admin.post(f"/v1/customers/{customer}/endpoints/s3/verify").json()["ok"]
            body["path"] = "other/"
            changed = admin.put(f"/v1/customers/{customer}/endpoints/s3?verify=false", json=body)
            assert changed.status_code == 200
            assert admin.post(f"/v1/ingest/{customer}/s3", content=lines).status_code == 202
            wait_for(lambda: admin.get(status_url).json()["lines"]["delivered"] == 10, 90)
            (probe,) = log.creates(".logferry-healthcheck-")
            assert probe["x-amz-storage-class"] == "STANDARD_IA"
        assert serve.terminate() == 0
    assert not pending_uploads(emulator, role.bucket)


class HeaderLog:
    """CreateMultipartUpload requests serve made, with their headers (lower-case names)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()

    async def __call__(self, request: ProxyRequest, forward: Any) -> ProxyResponse:
        if request.service == "s3" and request.method == "POST" and "uploads" in request.path:
            with self._lock:
                headers = {k.lower(): v for k, v in request.headers}
                self.requests.append((request.path, headers))
        return await forward()  # type: ignore[no-any-return]

    def creates(self, key_part: str) -> list[dict[str, str]]:
        with self._lock:
            return [headers for path, headers in self.requests if key_part in path]
