"""The latency proxy forwards signed calls intact and injects what it is told, per service."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from logferry.aws.clients import AwsClients, AwsTarget
from logferry.local.emulator import Emulator
from logferry.local.latency_proxy import (
    LinkProfile,
    ProxyConfig,
    ProxyRequest,
    ProxyResponse,
    _parse,
    latency_proxy,
)

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


def _client(emulator: Emulator, url: str, service: str) -> object:
    clients = AwsClients(emulator.customer.credentials(), AwsTarget(endpoint_url=url))
    return clients.client(service, "us-east-1", config=NO_RETRIES)


def test_signed_calls_pass_through_and_are_counted_per_service(
    emulator: Emulator, unique: Callable[[str], str]
) -> None:
    bucket, stream = unique("bkt"), unique("st")
    config = ProxyConfig(
        services={
            "s3": LinkProfile(delay_ms=5, bandwidth_bytes_per_s=50e6),
            "kinesis": LinkProfile(),
        }
    )
    with latency_proxy(emulator.url, config) as proxy:
        s3 = _client(emulator, proxy.url, "s3")
        s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        body = b"x" * 3_000_000
        s3.put_object(Bucket=bucket, Key="k", Body=body)  # type: ignore[attr-defined]
        got = s3.get_object(Bucket=bucket, Key="k")["Body"].read()  # type: ignore[attr-defined]
        kinesis = _client(emulator, proxy.url, "kinesis")
        kinesis.create_stream(StreamName=stream, ShardCount=1)  # type: ignore[attr-defined]
        stats = proxy.stats()
    assert got == body
    assert stats["s3"]["calls"] == 3
    assert stats["s3"]["bytes_in"] >= 3_000_000
    assert stats["s3"]["bytes_out"] >= 3_000_000
    assert stats["s3"]["delay_seconds"] == pytest.approx(3 * 0.005)
    assert stats["kinesis"]["calls"] == 1
    assert stats["kinesis"]["delay_seconds"] == 0


@pytest.mark.parametrize(
    ("service", "field", "code"),
    [
        ("s3", "throttle_rate", "SlowDown"),
        ("s3", "error_rate", "InternalError"),
        ("kinesis", "throttle_rate", "ProvisionedThroughputExceededException"),
        ("kinesis", "error_rate", "InternalFailure"),
    ],
)
def test_injected_errors_are_the_services_own(
    emulator: Emulator, service: str, field: str, code: str
) -> None:
    config = ProxyConfig(services={service: LinkProfile(**{field: 1.0})})
    with latency_proxy(emulator.url, config) as proxy:
        client = _client(emulator, proxy.url, service)
        with pytest.raises(ClientError) as info:
            if service == "s3":
                client.put_object(Bucket="any", Key="k", Body=b"x")  # type: ignore[attr-defined]
            else:
                client.put_records(  # type: ignore[attr-defined]
                    StreamName="any", Records=[{"Data": b"x", "PartitionKey": "k"}]
                )
        stats = proxy.stats()[service]
    assert info.value.response["Error"]["Code"] == code
    injected = stats["throttles_injected"] if field == "throttle_rate" else stats["errors_injected"]
    assert injected >= 1 and injected == stats["calls"]  # every call (retries too) was hit


def test_a_middleware_sees_and_rewrites_the_call(
    emulator: Emulator, unique: Callable[[str], str]
) -> None:
    stream = unique("st")
    seen: list[str] = []

    async def only_first_record(request: ProxyRequest, forward) -> ProxyResponse:  # type: ignore[no-untyped-def]
        if request.target.endswith(".PutRecords"):
            seen.append(request.service)
            call = json.loads(request.body)
            call["Records"] = call["Records"][:1]
            return await forward(json.dumps(call).encode())
        return await forward()

    with latency_proxy(
        emulator.url, middlewares=[only_first_record], rewrite_token=emulator.rewrite_token
    ) as proxy:
        kinesis = _client(emulator, proxy.url, "kinesis")
        kinesis.create_stream(StreamName=stream, ShardCount=1)  # type: ignore[attr-defined]
        answer = kinesis.put_records(  # type: ignore[attr-defined]
            StreamName=stream,
            Records=[{"Data": b"a", "PartitionKey": "1"}, {"Data": b"b", "PartitionKey": "2"}],
        )
    assert seen == ["kinesis"]
    assert len(answer["Records"]) == 1


def test_cli_flags_build_per_service_profiles() -> None:
    upstream, port, config = _parse(
        ["--upstream", "http://127.0.0.1:1", "--s3-delay-ms", "50", "--s3-bandwidth", "100MB"]
    )
    assert upstream == "http://127.0.0.1:1" and port == 0
    assert config.profile("s3") == LinkProfile(delay_ms=50, bandwidth_bytes_per_s=100e6)
    assert config.profile("sts") == LinkProfile()


def test_a_rewritten_body_without_the_emulators_token_fails_its_signature(
    emulator: Emulator, unique: Callable[[str], str]
) -> None:
    stream = unique("st")
    emulator.client("kinesis").create_stream(StreamName=stream, ShardCount=1)

    async def rewrite(request: ProxyRequest, forward) -> ProxyResponse:  # type: ignore[no-untyped-def]
        call = json.loads(request.body)
        call["Records"][0]["PartitionKey"] = "2"
        return await forward(json.dumps(call).encode())

    with latency_proxy(emulator.url, middlewares=[rewrite], rewrite_token="not-the-token") as proxy:
        kinesis = _client(emulator, proxy.url, "kinesis")
        with pytest.raises(ClientError) as info:
            kinesis.put_records(  # type: ignore[attr-defined]
                StreamName=stream, Records=[{"Data": b"a", "PartitionKey": "1"}]
            )
    assert info.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "403")
    assert emulator.client("kinesis").describe_stream_summary(StreamName=stream)  # still there
