"""The spool seam: the local backend satisfies the `Spool` / `SpoolProvider` protocols, with
the same signatures, and every spool exception is a `LogferryError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import logferry.spool
from logferry.errors import LogferryError
from logferry.spool import base
from logferry.spool.log import LocalSpool, Spool
from logferry.spool.manager import SpoolManager


def _typed(spool: LocalSpool, manager: SpoolManager) -> tuple[base.Spool, base.SpoolProvider]:
    """Never called: mypy checks here that the local backend implements both protocols."""
    return spool, manager


def _members(proto: type) -> list[str]:
    return sorted(n for n in vars(proto) if not n.startswith("_"))


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize(
    ("proto", "impl"), [(base.Spool, LocalSpool), (base.SpoolProvider, SpoolManager)]
)
def test_local_backend_has_every_member_with_the_same_signature(proto: type, impl: type) -> None:
    for name in _members(proto):
        want = vars(proto)[name]
        assert hasattr(impl, name) or name == "name", name
        if isinstance(want, property) or name == "name":
            continue
        have = getattr(impl, name)
        assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), name
        got = _params(have)
        # An implementation may accept more (keyword-only options), never less.
        assert got[: len(_params(want))] == _params(want), name
        assert all(p[1] == inspect.Parameter.KEYWORD_ONLY for p in got[len(_params(want)) :])


def test_instances_satisfy_the_protocols(tmp_path: Path) -> None:
    with SpoolManager(tmp_path / "spool") as manager:
        spool = manager.open("c/e")
        assert isinstance(manager, base.SpoolProvider)
        assert isinstance(spool, base.Spool)
        assert spool.name == "c/e"
    assert Spool is LocalSpool  # the old name keeps working for every importer


def test_every_spool_exception_is_a_logferry_error() -> None:
    found = []
    for info in pkgutil.iter_modules(logferry.spool.__path__, "logferry.spool."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("logferry.spool")
            ):
                found.append(obj)
                assert issubclass(obj, LogferryError), obj
    assert len(set(found)) >= 5
