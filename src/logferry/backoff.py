"""Capped exponential backoff: the one delay policy of every retry loop in logferry.

The sinks' AWS calls (`sinks/backoff.py`'s `retry_call`), the worker, the STS region cooldown
(`aws/sts_failover.py`), the sender (`commands/sender.py`) and the syslog TCP retry
(`ingest/syslog/tcp.py`) all wait `base * 2**attempt` seconds, capped at `cap`. What differs is
only the jitter, named per use: "full" (a uniform time in [0, ceiling], AWS Architecture Blog
"Exponential Backoff And Jitter": many endpoints hitting one throttled service do not retry in
step), "equal" (in [ceiling/2, ceiling]: never much sooner than the schedule, for a client that
must not hammer a server it shares with others) and "none" (a schedule, e.g. when a region may be
tried again). Kept outside `sinks/` because callers in every layer use it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["full", "equal", "none"]


@dataclass
class Backoff:
    """Delay policy: `base` seconds doubled per attempt, capped at `cap`, with `jitter`."""

    base: float = 0.25
    cap: float = 20.0
    max_attempts: int = 8
    """Calls made in total before the last TransientError is raised to the caller (`retry_call`)."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    jitter: Jitter = "full"

    def ceiling(self, attempt: int) -> float:
        """The capped exponential itself for retry number `attempt` (0 = first retry)."""
        return min(self.cap, self.base * (2 ** min(max(attempt, 0), 30)))

    def delay(self, attempt: int) -> float:
        """Wait before retry number `attempt` (0 = first retry), jittered as configured."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "none":
            return ceiling
        if self.jitter == "equal":
            return self.rng.uniform(ceiling / 2, ceiling)
        return self.rng.uniform(0.0, ceiling)


def wait(
    seconds: float,
    *,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait `seconds`; return False if `stop` is (or becomes) set.

    With the real `time.sleep` and a stop event, waits on the event (interrupted at once);
    with an injected `sleep` (tests), calls it and then checks the event.
    """
    if stop is not None and stop.is_set():
        return False
    if stop is not None and sleep is time.sleep:
        return not stop.wait(seconds)
    sleep(seconds)
    return not (stop is not None and stop.is_set())
