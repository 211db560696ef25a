"""API answers show times as RFC 3339 UTC strings; stored values stay epoch floats."""

from __future__ import annotations

from logferry.service.timestamps import rfc3339, shape_times


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1796007760.94) == "2026-11-30T03:02:40.940Z"


def test_shape_times_converts_time_keys_at_any_depth_and_nothing_else() -> None:
    status = {
        "last_success": 0.5,
        "last_error": {"time": 1, "code": "NoSuchBucket"},
        "errors": [{"time": 2.0, "message": "m"}],
        "sink": {"stats": {"last_success": None, "last_error_at": 3, "records": 7}},
        "lines": {"accepted": 10},
        "revoked": True,  # not a number of seconds: left alone
    }
    assert shape_times(status) == {
        "last_success": "1970-01-01T00:00:00.500Z",
        "last_error": {"time": "1970-01-01T00:00:01.000Z", "code": "NoSuchBucket"},
        "errors": [{"time": "1970-01-01T00:00:02.000Z", "message": "m"}],
        "sink": {
            "stats": {
                "last_success": None,
                "last_error_at": "1970-01-01T00:00:03.000Z",
                "records": 7,
            }
        },
        "lines": {"accepted": 10},
        "revoked": True,
    }
    assert status["last_success"] == 0.5  # the input is not modified
