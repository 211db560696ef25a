"""What one STS call returns or reports: role keys, per-region attempts and results, and the fix
each AWS error code calls for (the customer's own words in `role check` and delivery errors).

Kept apart from the broker (aws/sts_broker.py), which owns the failover and the credential cache.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from logferry.aws.errors import THROTTLING_CODES

_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]")


def role_session_name(vendor: str, customer_id: str | None, role_arn: str) -> str:
    """`<vendor>-<customer>` within STS limits (2–64 chars of [\\w+=,.@-]).

    It shows in the customer's CloudTrail, so it names who is writing and for which customer.
    """
    who = customer_id or role_arn.rsplit("/", 1)[-1]
    name = _SESSION_NAME_BAD.sub("-", f"{vendor}-{who}")[:64]
    return name if len(name) >= 2 else f"{name}--"[:2]


def account_of(role_arn: str) -> str:
    """The account ID in a role ARN ("?" when it is not one)."""
    parts = role_arn.split(":")
    return parts[4] if len(parts) > 5 else "?"


@dataclass(frozen=True)
class RoleKey:
    role_arn: str
    external_id: str | None
    session_name: str
    duration: int
    source_identity: str | None = None


@dataclass
class RegionHealth:
    failures: int = 0
    cooldown_until: float = 0.0
    last_error: str | None = None


@dataclass
class AssumeAttempt:
    """One STS call (AssumeRole or GetCallerIdentity) in one region, for reports and logs."""

    region: str
    outcome: str  # "ok" | "denied" | "region_disabled" | "unreachable" | "throttled" | "error"
    code: str | None = None
    message: str | None = None
    fix: str | None = None


@dataclass
class CallerIdentity:
    """The vendor's own account, the region that answered, and what every region tried said."""

    account: str
    region: str
    attempts: list[AssumeAttempt]


@dataclass
class AssumeResult:
    region: str
    access_key: str
    secret_key: str
    token: str = field(repr=False)
    expiration: dt.datetime | str  # botocore parses it; str if its timestamp parser is off
    assumed_role_arn: str
    attempts: list[AssumeAttempt]


def assume_fix(
    code: str, *, role_arn: str, vendor_account: str | None, external_id: str | None, region: str
) -> str:
    """The customer's (or vendor's) fix for a failed AssumeRole, by AWS error code."""
    if code == "RegionDisabledException":
        return (
            f"activate STS in {region} for account {account_of(role_arn)}: "
            "IAM console → Account settings → Security Token Service (STS) → Activate"
        )
    if code == "AccessDenied":
        ext = f" with external ID {external_id!r}" if external_id else ""
        who = f"account {vendor_account}" if vendor_account else "the vendor account"
        return (
            f"the trust policy of {role_arn} must let {who} call sts:AssumeRole{ext} "
            "(and the role must exist): re-run `logferry role create` or fix the trust policy"
        )
    if code in {"MalformedPolicyDocument", "PackedPolicyTooLarge"}:
        return "the session policy sent to STS is invalid; report this to the vendor"
    if code in {"ValidationError", "InvalidParameterValue"}:
        return (
            "check the role ARN and that DurationSeconds does not exceed the role's "
            "MaximumSessionDuration"
        )
    if code == "ExpiredTokenException":
        return "the vendor's own AWS credentials have expired; renew them"
    if code in {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"}:
        return (
            "the vendor's own AWS credentials are invalid; check the service's AWS credential chain"
        )
    return "see the AWS error message"


VENDOR_CREDENTIALS_FIX = (
    "Give `logferry serve` valid vendor AWS credentials (AWS_ACCESS_KEY_ID, a profile or an "
    "instance role)."
)


def vendor_fix(code: str, region: str) -> str:
    """The fix for a failed sts:GetCallerIdentity (it runs as the vendor, in its own account)."""
    if code == "RegionDisabledException":
        return (
            f"activate STS in {region} for the vendor's own account (IAM console → Account "
            "settings → Security Token Service (STS) → Activate), or remove "
            f"{region} from vendor.sts_regions"
        )
    if code == "ExpiredTokenException":
        return "the vendor's own AWS credentials have expired; renew them"
    return VENDOR_CREDENTIALS_FIX


def unreachable_fix(region: str, endpoint: str | None) -> str:
    """The fix when an STS region did not answer at all."""
    where = f" at {endpoint}" if endpoint else ""
    return (
        f"STS {region} is down or unreachable from the vendor{where}: check the network path "
        "and vendor.sts_endpoints; other regions are used meanwhile"
    )


def outcome_for(code: str | None) -> str:
    """The `outcomes` counter label for a failed call (None: nothing answered)."""
    if code == "RegionDisabledException":
        return "region_disabled"
    if code in THROTTLING_CODES:
        return "throttled"
    if code is None:
        return "unreachable"
    return "error"
