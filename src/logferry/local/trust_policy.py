"""IAM trust-policy evaluation for cross-account AssumeRole, as STS does it (DESIGN.md §5 gaps
1–3): principals, conditions (StringEquals/Like and their negations, IfExists), actions.

Pure functions over policy documents; `logferry.local.patches` installs them into moto's
AssumeRole check inside the emulator process. Hand-written because no library evaluates IAM
trust policies offline, and moto's own evaluator is the thing being corrected.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

_ACCOUNT_RE = re.compile(r"^\d{12}$")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def arn_account(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[0] == "arn" else None


def principal_matches(expected: Any, caller_arn: str, caller_account: str) -> bool:
    """Does a policy `Principal` element cover the caller, as IAM evaluates it?

    `"*"` matches anyone; an account ID or `arn:…:iam::ACCOUNT:root` matches every principal of
    that account; otherwise the ARN must match exactly, and a role ARN also matches the role's
    sessions (`arn:…:sts::ACCOUNT:assumed-role/ROLE/SESSION`).
    """
    if expected == "*":
        return True
    if not isinstance(expected, dict):
        return False
    aws = _as_list(expected.get("AWS"))
    caller_role_arn = None
    m = re.match(r"^arn:([\w-]+):sts::(\d{12}):assumed-role/([^/]+)/", caller_arn)
    if m:
        caller_role_arn = f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}"
    for candidate in aws:
        if not isinstance(candidate, str):
            continue
        if candidate == "*":
            return True
        if _ACCOUNT_RE.match(candidate):
            if candidate == caller_account:
                return True
            continue
        if re.match(r"^arn:[\w-]+:iam::\d{12}:root$", candidate):
            if arn_account(candidate) == caller_account:
                return True
            continue
        if candidate == caller_arn:
            return True
        if caller_role_arn and re.sub(r"role/.*/", "role/", candidate) == caller_role_arn:
            return True
        if caller_role_arn and candidate == caller_role_arn:
            return True
    return False


def _string_like(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


_STRING_OPS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda expected, actual: expected == actual,
    "StringEqualsIgnoreCase": lambda expected, actual: expected.lower() == actual.lower(),
    "StringLike": _string_like,
    "ArnEquals": lambda expected, actual: expected == actual,
    "ArnLike": _string_like,
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def conditions_match(conditions: dict[str, Any] | None, context: dict[str, str | None]) -> bool:
    """Evaluate a `Condition` block against request context keys (names case-insensitive).

    Follows IAM: a positive operator on an absent key fails; a negated one on an absent key
    passes; `...IfExists` passes on an absent key; `Null` tests presence. Operators we do not
    know fail closed (moto ignores them, which would let an unknown condition pass).
    """
    if not conditions:
        return True
    ctx = {k.lower(): v for k, v in context.items() if v is not None}
    for raw_op, keys in conditions.items():
        op = raw_op
        if_exists = op.endswith("IfExists")
        if if_exists:
            op = op[: -len("IfExists")]
        if not isinstance(keys, dict):
            return False
        for key, expected_values in keys.items():
            expected = [str(v) for v in _as_list(expected_values)]
            actual = ctx.get(key.lower())
            if op == "Null":
                wants_absent = expected[0].lower() == "true"
                if wants_absent != (actual is None):
                    return False
                continue
            if op == "Bool":
                if actual is None:
                    if not if_exists:
                        return False
                    continue
                if str(actual).lower() not in [e.lower() for e in expected]:
                    return False
                continue
            if op in _STRING_OPS:
                if actual is None:
                    if not if_exists:
                        return False
                    continue
                if not any(_STRING_OPS[op](e, actual) for e in expected):
                    return False
                continue
            if op in _NEGATED:
                if actual is None:
                    continue
                if any(_STRING_OPS[_NEGATED[op]](e, actual) for e in expected):
                    return False
                continue
            return False  # unknown operator: fail closed
    return True


def _action_matches(patterns: Iterable[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


def trust_policy_allows(
    document: str | dict[str, Any],
    *,
    action: str,
    caller_arn: str,
    caller_account: str,
    context: dict[str, str | None],
) -> bool:
    """Explicit Deny wins; otherwise an Allow must match action, principal and condition."""
    policy = json.loads(document) if isinstance(document, str) else document
    allowed = False
    for statement in _as_list(policy.get("Statement")):
        if "NotPrincipal" in statement or "NotAction" in statement:
            continue  # not used in trust policies we write; never grant through them
        if not _action_matches(_as_list(statement.get("Action")), action):
            continue
        if not principal_matches(statement.get("Principal"), caller_arn, caller_account):
            continue
        if not conditions_match(statement.get("Condition"), context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            allowed = True
    return allowed
