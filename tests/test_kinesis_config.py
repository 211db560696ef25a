"""KinesisEndpoint: Fastly's field names, the derived stream ARN, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from logferry.sinks.kinesis_config import KinesisEndpoint

ROLE = "arn:aws:iam::123456789012:role/logferry-kinesis"


def _endpoint(**overrides: Any) -> KinesisEndpoint:
    fields: dict[str, Any] = {
        "name": "cdn-logs",
        "topic": "my-logs",
        "region": "eu-west-2",
        "iam_role": ROLE,
    }
    fields.update(overrides)
    return KinesisEndpoint(**fields)


def _error(**overrides: Any) -> tuple[str, str]:
    """(field path, message) of the single validation error."""
    with pytest.raises(ValidationError) as info:
        _endpoint(**overrides)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return ".".join(str(p) for p in errors[0]["loc"]), errors[0]["msg"]


def test_defaults_and_stream_arn_from_role_account_and_region() -> None:
    endpoint = _endpoint()
    assert endpoint.format == "blank"
    assert endpoint.packing is False
    assert endpoint.oversize == "split"
    assert endpoint.max_in_flight_calls is None  # the sink's choice: 4 per open shard, 8 to 64
    assert endpoint.stream_arn() == "arn:aws:kinesis:eu-west-2:123456789012:stream/my-logs"
    stream = endpoint.stream()
    assert (stream.partition, stream.account_id, stream.name) == ("aws", "123456789012", "my-logs")


def test_partitions_follow_the_role() -> None:
    endpoint = _endpoint(iam_role="arn:aws-cn:iam::123456789012:role/r", region="cn-north-1")
    assert endpoint.stream_arn() == "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/my-logs"
    gov = _endpoint(iam_role="arn:aws-us-gov:iam::123456789012:role/p/r", region="us-gov-west-1")
    assert gov.stream_arn().startswith("arn:aws-us-gov:kinesis:us-gov-west-1:")


def test_partition_mismatch_is_explained() -> None:
    where, message = _error(region="cn-north-1")
    assert where == ""  # a model-level check: it involves two fields
    assert "iam_role is in partition aws" in message
    assert "cn-north-1 belongs to aws-cn" in message


def test_unknown_fields_are_rejected() -> None:
    where, message = _error(stream_arn="arn:aws:kinesis:eu-west-2:123456789012:stream/x")
    assert where == "stream_arn"
    assert "Extra inputs are not permitted" in message


def test_access_keys_are_refused_with_the_alternative() -> None:
    where, message = _error(access_key="AKIA...", secret_key="x")
    assert where == ""
    assert "access_key, secret_key given" in message and "iam_role" in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("topic", "my logs", "not a valid Kinesis stream name"),
        ("topic", "arn:aws:kinesis:eu-west-2:123456789012:stream/x", "topic is the stream's name"),
        ("region", "EU-WEST-2", "Did you mean 'eu-west-2'?"),
        ("region", "mars-1", "not an AWS region name"),
        ("iam_role", "arn:aws:iam::123456789012:user/u", "does not name a role"),
        ("iam_role", "logferry-kinesis", "not an IAM role ARN"),
        ("name", "", "endpoint names are 1-100 characters"),
        ("name", "a/b", "contains a control character or '/'"),
        ("format", "json", "'classic', 'loggly', 'logplex' or 'blank'"),
        ("oversize", "drop", "'split' or 'truncate'"),
        ("max_in_flight_calls", 0, "greater than or equal to 1"),
        ("max_in_flight_calls", 65, "less than or equal to 64"),
    ],
)
def test_field_errors_name_the_field_and_the_fix(field: str, value: str, expected: str) -> None:
    where, message = _error(**{field: value})
    assert where == field
    assert expected in message


def test_values_are_normalised() -> None:
    endpoint = _endpoint(topic=" my-logs ", iam_role=f" {ROLE} ", format="classic", packing=True)
    assert endpoint.topic == "my-logs"
    assert endpoint.iam_role == ROLE
    assert endpoint.format == "classic"
    with pytest.raises(ValidationError):
        endpoint.topic = "other"  # frozen: a running sink's config never changes under it
