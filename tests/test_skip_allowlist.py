"""The CI skip gate (tests/skip_allowlist.py): which skips it lets through and which it refuses."""

from __future__ import annotations

import pytest

from skip_allowlist import ALLOWLIST, SkipGate, parse


def report(nodeid: str, outcome: str, reason: str = "", **extra: object) -> pytest.TestReport:
    longrepr = ("tests/x.py", 3, f"Skipped: {reason}") if outcome == "skipped" else None
    made = pytest.TestReport(nodeid, ("tests/x.py", 3, "t"), {}, outcome, longrepr, "setup")
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_the_committed_list_parses() -> None:
    parse(ALLOWLIST.read_text())


def test_an_entry_needs_both_parts_and_a_hash_inside_a_regex_is_kept() -> None:
    with pytest.raises(ValueError, match=":2: want"):
        parse("# comment\nno separator here\n")
    (entry,) = parse("tests/a.py::* | issue #12 open   # why\n")
    assert entry.reason.pattern == "issue #12 open"


def test_only_matching_skips_pass_and_xfail_or_passes_are_ignored() -> None:
    gate = SkipGate(parse("tests/test_syslog.py::* | ::1 is not available\n"))
    gate.see(report("tests/test_syslog.py::test_v6", "skipped", "::1 is not available here"))
    gate.see(report("tests/test_pgp.py::test_gpg", "skipped", "gpg binary not installed"))
    gate.see(report("tests/test_pgp.py::test_other", "skipped", "known", wasxfail="known"))
    gate.see(report("tests/test_syslog.py::test_ok", "passed"))
    # The same reason elsewhere is not allowed: entries name the tests they cover.
    gate.see(report("tests/test_other.py::test_v6", "skipped", "::1 is not available here"))
    assert gate.refused == {
        "tests/test_pgp.py::test_gpg": "gpg binary not installed",
        "tests/test_other.py::test_v6": "::1 is not available here",
    }
