"""Human byte sizes ("10GiB", "512 MB", "64k") for spool limits and segment sizes.

Config files and flags take sizes as text; parsing them in one place keeps the units the same
everywhere (binary suffixes are 1024-based, decimal ones 1000-based, a bare "k/m/g" is binary
because that is what operators mean when they type "64k").
"""

from __future__ import annotations

import re

from logferry.errors import InputError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, *, where: str = "size") -> int:
    """Return `value` in bytes; ints pass through, strings like "10GiB" / "1.5 GB" / "64k" parse.

    Raises InputError naming `where` (the flag or config key) when the text is not a size.
    """
    if isinstance(value, bool):
        raise InputError(where, f"expected a size, got {value!r}.", fix='Use e.g. "10GiB".')
    if isinstance(value, int):
        if value < 0:
            raise InputError(where, f"size {value} is negative.", fix="Use a size >= 0.")
        return value
    if not isinstance(value, str):
        raise InputError(where, f"expected a size, got {value!r}.", fix='Use e.g. "10GiB".')
    match = _SIZE_RE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InputError(
            where,
            f"{value!r} is not a size.",
            fix="Write a number with an optional unit: B, k/KiB, KB, M/MiB, MB, G/GiB, GB, "
            'T/TiB, TB (e.g. "10GiB", "512MB").',
        )
    number = float(match.group(1)) if "." in match.group(1) else int(match.group(1))
    return int(number * _UNITS[unit])


def format_size(n: int) -> str:
    """Short binary rendering for messages ("1.5 GiB")."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - unreachable
