"""CI fails on a skip nobody allowed: a skipped test there is a test that did not run.

Why: several tests skip when a binary or package is missing (gpg, rsyslog, chromium, zstd,
cryptography); `.ci/run` installs all of them, so in CI such a skip means the install broke and the
suite went green without running what it claims. Active when `CI=true` (`.ci/run` sets it);
local runs keep skipping quietly. A skip is allowed when a line of `skip_allowlist.txt` matches it:

    <nodeid glob> | <regular expression searched in the skip reason>   # why it may skip in CI

Hooked in from tests/conftest.py. Works under pytest-xdist: the controller sees every skipped test
and collection report, and sets the session's exit status.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")


@dataclass(frozen=True)
class Allowed:
    nodeid_glob: str
    reason: re.Pattern[str]

    def matches(self, nodeid: str, reason: str) -> bool:
        return fnmatch.fnmatchcase(nodeid, self.nodeid_glob) and bool(self.reason.search(reason))


def parse(text: str) -> list[Allowed]:
    """The entries of an allow-list file; a malformed line raises (a typo must not allow all)."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        # A comment is '#' between blanks (or at the start): a regex may still hold "#12".
        line = re.split(r"(?:^|\s)#(?:\s|$)", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        glob, sep, pattern = (part.strip() for part in line.partition("|"))
        if not sep or not glob or not pattern:
            raise ValueError(f"{ALLOWLIST.name}:{number}: want '<nodeid glob> | <reason regex>'")
        entries.append(Allowed(glob, re.compile(pattern)))
    return entries


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipGate:
    """Collects the skips no entry allows; fails the session when there are any."""

    def __init__(self, entries: list[Allowed]) -> None:
        self.entries = entries
        self.refused: dict[str, str] = {}

    def see(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return  # an xfail is reported as skipped, but it ran
        reason = skip_reason(report)
        if not any(entry.matches(report.nodeid, reason) for entry in self.entries):
            self.refused.setdefault(report.nodeid, reason)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.see(report)

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.see(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.refused and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.refused:
            return
        terminalreporter.section("skips not on tests/skip_allowlist.txt (CI=true)", red=True)
        for nodeid, reason in sorted(self.refused.items()):
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line(
            f"{len(self.refused)} skipped test(s) did not run: install what they name "
            "(.ci/run), or allow them in tests/skip_allowlist.txt with the reason",
            red=True,
        )


def configure(config: pytest.Config) -> None:
    """Register the gate on the process that reports (not on xdist workers) when CI=true."""
    if os.environ.get("CI", "").lower() != "true" or hasattr(config, "workerinput"):
        return
    config.pluginmanager.register(SkipGate(parse(ALLOWLIST.read_text())), "skip-allowlist")
