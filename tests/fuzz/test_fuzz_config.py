"""The config loader under fuzzing: whatever the file holds, `load_config` returns a config or
raises InputError (a message naming the key path); never any other exception."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.errors import InputError
from logferry.local.toml_out import to_toml
from logferry.service.config import ServiceConfig, load_config

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTIONS = ["vendor", "aws", "server", "spool", "auth", "state", "log"]
KEYS = [
    "name", "account_id", "sts_regions", "sts_endpoints", "session_duration_seconds",
    "external_id_mode", "source_identity", "endpoint_url", "listen", "max_body_bytes",
    "max_line_bytes", "shutdown_flush_seconds", "delivery_threads", "dir", "max_bytes",
    "segment_bytes", "group_sync", "admin_token_env", "level", "format", "db", "bogus",
]  # fmt: skip
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats().filter(math.isfinite),
    st.text(max_size=30),
    st.sampled_from(["1GiB", "0", "-1KiB", "10XB", "127.0.0.1:0", "[::1]:80", "us-east-1"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=10,
)


def outcome(text: str | bytes) -> ServiceConfig | InputError:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logferry.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            return load_config(path)
        except InputError as exc:
            assert str(exc), "an InputError without a message"
            return exc


@FUZZ
@given(
    doc=st.dictionaries(
        st.sampled_from(SECTIONS),
        st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
        max_size=4,
    ),
    customers=st.lists(
        st.dictionaries(
            st.sampled_from(["id", "token_env", "endpoints", "spool_max_bytes"]), values, max_size=3
        ),
        max_size=2,
    ),
)
def test_structured_configs_load_or_raise_input_error(
    doc: dict[str, Any], customers: list[dict[str, Any]]
) -> None:
    if customers:
        doc = {**doc, "customers": customers}
    outcome(to_toml(doc))


@FUZZ
@given(text=st.text(max_size=500))
def test_any_text_loads_or_raises_input_error(text: str) -> None:
    outcome(text)


def test_a_file_that_is_not_utf8_raises_input_error() -> None:
    result = outcome(b'[server]\nlisten = "127.0.0.1:8080"\n# \xff\xfe latin-1 comment: caf\xe9\n')
    assert isinstance(result, InputError) and "UTF-8" in str(result)


@pytest.mark.parametrize(
    "depth",
    [
        100,
        50_000,
    ],
)
def test_deeply_nested_toml_raises_input_error_or_loads(depth: int) -> None:
    result = outcome("x = " + "[" * depth + "]" * depth + "\n")
    assert isinstance(result, InputError)  # `x` is no config key
