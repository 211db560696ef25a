"""Fail when the installed environment does not satisfy pyproject.toml's requirements.

Why: `make install` installs requirements/dev.lock and then logferry with `--no-deps`, and `pip
check` only knows logferry's base dependencies, not the `local` and `dev` extras. A dependency
added to an extra without `make lock` would otherwise surface as an ImportError (or a skip) deep
in the suite; this names it at install time.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

EXTRAS = ("local", "dev")


def problems(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in EXTRAS:
        wanted += project["optional-dependencies"][extra]
    found = []
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            found.append(f"{req} is not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            found.append(f"{req} but {req.name} {have} is installed")
    return found


def main() -> int:
    found = problems(Path(__file__).resolve().parent.parent / "pyproject.toml")
    for problem in found:
        print(f"requirements/dev.lock is stale: {problem}", file=sys.stderr)
    if found:
        print("refresh it: make lock (requirements/README.md)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
