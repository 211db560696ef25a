"""Which `SinkFactory` serves which endpoint `type`: the one place a destination is registered.

The service asks the registry for a factory and never branches on the endpoint's type; a third
destination is a module with a `Sink` and a `SinkFactory` (see `sinks.base`) plus one line in
`FACTORIES` below.

Tests and extensions can add destinations without editing this file: `LOGFERRY_SINK_PLUGINS`
names comma-separated `module:attribute` pairs, each a `SinkFactory`, imported when this module is
first imported (so they cross a process boundary with the environment, e.g. to `logferry serve`).
A plugin may add a type, never replace a built-in one.
"""

from __future__ import annotations

import importlib
import os
from typing import Final

from logferry.errors import InputError
from logferry.sinks.base import SinkContext, SinkFactory
from logferry.sinks.kinesis_factory import KINESIS
from logferry.sinks.s3_factory import S3

__all__ = ["FACTORIES", "PLUGINS_ENV", "SinkContext", "SinkFactory", "factory", "load_plugins"]

PLUGINS_ENV: Final = "LOGFERRY_SINK_PLUGINS"

FACTORIES: dict[str, SinkFactory] = {
    S3.type: S3,
    KINESIS.type: KINESIS,
}


def factory(kind: str) -> SinkFactory:
    try:
        return FACTORIES[kind]
    except KeyError:
        raise ValueError(f"no sink for endpoint type {kind!r}") from None


def load_plugins(spec: str) -> list[SinkFactory]:
    """Register each `module:attribute` factory in `spec` (comma-separated)."""
    loaded = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        module_name, _, attr = item.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise InputError(
                PLUGINS_ENV,
                f"cannot load sink plugin {item!r}: {exc}",
                fix="Name an importable module and its SinkFactory attribute as module:attr.",
            ) from exc
        if not isinstance(found, SinkFactory):
            raise InputError(
                PLUGINS_ENV,
                f"sink plugin {item!r} is a {type(found).__name__}, not a SinkFactory",
                fix="Point it at an object with the attributes of sinks.base.SinkFactory.",
            )
        existing = FACTORIES.get(found.type)
        if existing is not None and existing is not found:
            raise InputError(
                PLUGINS_ENV,
                f"sink plugin {item!r} would replace the endpoint type {found.type!r}",
                fix="Give the plugin's factory a type of its own.",
            )
        FACTORIES[found.type] = found
        loaded.append(found)
    return loaded


load_plugins(os.environ.get(PLUGINS_ENV, ""))
