"""One exception tree (issue 28): every exception class logferry defines is a LogferryError, so
callers can tell "ours, with a fix" from a bug by class alone."""

from __future__ import annotations

import importlib
import pkgutil

import logferry
from logferry.errors import LogferryError
from logferry.sinks.s3 import SinkNeedsRecovery


def test_every_exception_logferry_defines_is_a_logferry_error() -> None:
    defined: set[type[BaseException]] = set()
    for info in pkgutil.walk_packages(logferry.__path__, "logferry."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("logferry")
            ):
                defined.add(obj)
    outside = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in defined if not issubclass(c, LogferryError)
    )
    assert outside == []
    assert SinkNeedsRecovery in defined and len(defined) >= 20


def test_sink_needs_recovery_keeps_its_old_base() -> None:
    assert issubclass(SinkNeedsRecovery, RuntimeError)  # callers catching RuntimeError still do
