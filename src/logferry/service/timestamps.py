"""RFC 3339 UTC strings for the API's answers; the store and workers keep epoch floats.

Shaping happens only at the HTTP boundary so the delivery core never formats times, and every
answer (status, customers, tokens, errors) shows the same `2026-11-30T05:01:02.123Z` form.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Keys whose numeric values are epoch seconds wherever they appear in an API answer.
TIME_KEYS = frozenset({"created", "updated", "revoked", "time", "last_success", "last_error_at"})


def rfc3339(epoch: float) -> str:
    """Epoch seconds → `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shape_times(value: Any) -> Any:
    """A copy of `value` with every epoch number under a TIME_KEYS key as an RFC 3339 string."""
    if isinstance(value, dict):
        return {
            k: (
                rfc3339(v)
                if k in TIME_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
                else shape_times(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [shape_times(v) for v in value]
    return value
