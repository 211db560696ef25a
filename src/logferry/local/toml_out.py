"""Write a logferry.toml from a dict (tests, benchmarks, demos).

By hand because tomllib only reads; tomli-w would be a dependency for the few shapes the config
uses: tables of scalars and inline tables, and arrays of tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def to_toml(doc: dict[str, Any]) -> str:
    out: list[str] = []
    for table, body in doc.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{table}]]")
                out += [f"{k} = {_value(v)}" for k, v in item.items()]
        else:
            out.append(f"[{table}]")
            out += [f"{k} = {_value(v)}" for k, v in body.items()]
    return "\n".join(out) + "\n"
