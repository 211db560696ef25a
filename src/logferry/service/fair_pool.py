"""The delivery thread pool, oldest-undelivered first.

Why: with many active endpoints the delivery threads are the bottleneck, and a FIFO pool serves
whoever asked last just as well as whoever has waited longest; lines of some customers then wait
far past their period (issue 15: p99 30.8 s for a 5 s period). Here each step carries a priority
(the acceptance time of the endpoint's oldest undelivered line, see `EndpointWorker`) and a free
thread always takes the smallest, so the endpoint whose lines are oldest goes first and the
worst lag stays bounded as long as the machine can keep up at all. When it cannot, the queue
says so: `oldest_wait()` (how long the first queued step has waited for a thread) is a metric.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class FairPool:
    """A fixed set of threads running submitted calls in priority order (smallest first;
    equal priorities in submission order). `submit`/`shutdown` mirror ThreadPoolExecutor."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "fair") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, float, Future[Any], Any, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}_{i}", daemon=True)
            for i in range(max_workers)
        ]
        for t in self._threads:
            t.start()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, priority: float | None = None
    ) -> Future[Any]:
        """Queue `fn(*args)`; `priority` defaults to now (first come, first served)."""
        future: Future[Any] = Future()
        now = time.monotonic()
        key = time.time() if priority is None else priority
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            heapq.heappush(self._heap, (key, next(self._seq), now, future, fn, args))
            self._cond.notify()
        return future

    def queued(self) -> int:
        return len(self._heap)

    def oldest_wait(self) -> float:
        """Seconds the longest-queued call has waited for a thread (0: none waits)."""
        with self._cond:
            if not self._heap:
                return 0.0
            first = min(item[2] for item in self._heap)
        return max(0.0, time.monotonic() - first)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for item in self._heap:
                    item[3].cancel()
                self._heap.clear()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._shutdown:
                    self._cond.wait()
                if not self._heap:
                    return
                _, _, _, future, fn, args = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args  # hold nothing while idle
