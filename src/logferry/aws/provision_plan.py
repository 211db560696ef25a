"""`role create`'s plan: the difference between what is (`Observed`) and what is wanted, as an
ordered list of `Step`s, one named function per thing provisioned.

Each function reads the observed state and appends the steps (and warnings) its part needs; the
order of the calls in `plan_steps` is the safe write order described in aws/provision.py. A step
is data: the change shown to the user and a callable that makes it (a bound AWS call), so a
dry run builds the same list and runs none of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from botocore.client import BaseClient
from pydantic import BaseModel

from logferry.aws.names import Partition, policy_arn, role_arn
from logferry.aws.policies import (
    Destination,
    KinesisDestination,
    PolicyDocument,
    S3Destination,
    equivalent,
    has_external_id_condition,
    kinesis_resource_policy,
    merge_resource_policy,
    permission_policy,
    trust_policy,
)
from logferry.aws.provision_calls import call_aws
from logferry.errors import AwsErrorInfo, SetupError

LIFECYCLE_RULE_ID = "logferry-abort-incomplete-multipart"
MAX_POLICY_VERSIONS = 5

ChangeAction = Literal[
    "create-role",
    "update-trust-policy",
    "create-policy",
    "delete-policy-version",
    "create-policy-version",
    "attach-policy",
    "put-stream-policy",
    "put-bucket-lifecycle",
]


class Change(BaseModel):
    """One write, as shown to the user (plan) and reported afterwards (result)."""

    action: ChangeAction
    target: str
    detail: str


@dataclass
class Step:
    change: Change
    run: Callable[[], object]


@dataclass
class Observed:
    """The current state, read with read-only calls."""

    account_id: str
    partition: Partition
    caller_arn: str
    role: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    default_document: dict[str, Any] | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)
    attached_arns: list[str] = field(default_factory=list)
    inline_policies: list[str] = field(default_factory=list)
    stream_policy: dict[str, Any] | None = None
    lifecycle: dict[str, Any] | None = None  # the GetBucketLifecycleConfiguration response


@dataclass(frozen=True)
class Writer:
    """The writes that need more than one bound AWS call (the provisioner supplies them)."""

    create_role: Callable[..., None]
    """CreateRole (IAM client, then its keyword arguments), remembering the role is brand new."""
    put_stream_policy: Callable[[str, str], None]
    """PutResourcePolicy (ARN, policy JSON), waiting for a new role to become a principal."""
    put_lifecycle: Callable[..., None]
    """PutBucketLifecycleConfiguration with these keyword arguments."""


@dataclass
class Plan:
    """What the step functions share: the request, the observed state, and what they produce."""

    dest: Destination
    role_name: str
    policy_name: str
    external_id: str
    vendor_account: str
    resource_policy: bool
    abort_multipart_days: int | None
    obs: Observed
    iam: BaseClient
    writer: Writer
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    trust: PolicyDocument = field(init=False)
    perm: PolicyDocument = field(init=False)
    role_arn: str = field(init=False)
    policy_arn: str = field(init=False)

    def __post_init__(self) -> None:
        obs = self.obs
        self.trust = trust_policy(self.dest.kind, self.external_id, self.vendor_account)
        # Defence in depth: never write a trust policy without the ExternalId condition.
        if not has_external_id_condition(dict(self.trust), self.external_id):
            raise RuntimeError("refusing to write a trust policy without the ExternalId condition")
        self.perm = permission_policy(self.dest)
        self.policy_arn = policy_arn(obs.partition, obs.account_id, self.policy_name)
        self.role_arn = (
            str(obs.role["Arn"])
            if obs.role
            else role_arn(obs.partition, obs.account_id, self.role_name)
        )

    def add(
        self, action: ChangeAction, target: str, detail: str, run: Callable[[], object]
    ) -> None:
        self.steps.append(Step(Change(action=action, target=target, detail=detail), run))


def plan_steps(p: Plan) -> Plan:
    """Every part, in the safe write order (aws/provision.py's docstring says why)."""
    plan_role(p)
    plan_policy(p)
    plan_attachment(p)
    plan_stream_policy(p)
    plan_lifecycle(p)
    return p


def plan_role(p: Plan) -> None:
    """1. The role with its trust policy, or the trust policy of the existing role."""
    trust_json = json.dumps(p.trust)
    if p.obs.role is None:
        p.add(
            "create-role",
            p.role_arn,
            f"trusts account {p.vendor_account} with ExternalId {p.external_id}",
            partial(
                p.writer.create_role,
                p.iam,
                RoleName=p.role_name,
                AssumeRolePolicyDocument=trust_json,
                Description=f"Log delivery by AWS account {p.vendor_account} "
                f"to {p.dest.describe()} (created by logferry)"[:1000],
            ),
        )
    elif not equivalent(p.obs.role.get("AssumeRolePolicyDocument"), p.trust):
        p.add(
            "update-trust-policy",
            p.role_arn,
            f"replace the trust policy: only account {p.vendor_account} "
            f"with ExternalId {p.external_id}",
            partial(
                call_aws,
                p.iam,
                "update_assume_role_policy",
                f"updating the trust policy of role {p.role_name}",
                RoleName=p.role_name,
                PolicyDocument=trust_json,
            ),
        )


def plan_policy(p: Plan) -> None:
    """2. The managed permission policy: created, or a new default version when it changed."""
    obs, parn, perm_json = p.obs, p.policy_arn, json.dumps(p.perm)
    if obs.policy is None:
        p.add(
            "create-policy",
            parn,
            f"{', '.join(_actions(p.perm))} on {p.dest.resource_arn}",
            partial(
                call_aws,
                p.iam,
                "create_policy",
                f"creating policy {p.policy_name}",
                PolicyName=p.policy_name,
                PolicyDocument=perm_json,
                Description=f"Write-only log delivery to {p.dest.describe()}"[:1000],
            ),
        )
        return
    if equivalent(obs.default_document, p.perm):
        return
    if len(obs.versions) >= MAX_POLICY_VERSIONS:
        victim = _oldest_non_default(obs.versions)
        if victim is None:
            raise SetupError(
                f"Policy {parn} has {len(obs.versions)} versions and none can be deleted.",
                AwsErrorInfo(code="LimitExceeded", service="iam"),
                fix="Delete a policy version by hand (aws iam delete-policy-version).",
            )
        p.add(
            "delete-policy-version",
            parn,
            f"delete oldest non-default version {victim} (IAM keeps at most {MAX_POLICY_VERSIONS})",
            partial(
                call_aws,
                p.iam,
                "delete_policy_version",
                f"deleting version {victim} of policy {p.policy_name}",
                PolicyArn=parn,
                VersionId=victim,
            ),
        )
    p.add(
        "create-policy-version",
        parn,
        f"new default version: {', '.join(_actions(p.perm))} on {p.dest.resource_arn}",
        partial(
            call_aws,
            p.iam,
            "create_policy_version",
            f"updating policy {p.policy_name}",
            PolicyArn=parn,
            PolicyDocument=perm_json,
            SetAsDefault=True,
        ),
    )


def plan_attachment(p: Plan) -> None:
    """3. The policy attached to the role; other policies on the role are only warned about."""
    obs, parn = p.obs, p.policy_arn
    if parn not in obs.attached_arns:
        p.add(
            "attach-policy",
            p.role_arn,
            f"attach {parn}",
            partial(
                call_aws,
                p.iam,
                "attach_role_policy",
                f"attaching policy {p.policy_name} to role {p.role_name}",
                RoleName=p.role_name,
                PolicyArn=parn,
            ),
        )
    others = [a for a in obs.attached_arns if a != parn]
    if others or obs.inline_policies:
        names = others + [f"{n} (inline)" for n in obs.inline_policies]
        p.warnings.append(
            f"Role {p.role_name} also has {', '.join(names)}; they add to what the vendor "
            "can do with this role. logferry leaves them in place: detach them unless you "
            "need them."
        )


def plan_stream_policy(p: Plan) -> None:
    """4. Kinesis: our statement merged into the stream's resource policy (--resource-policy)."""
    if not isinstance(p.dest, KinesisDestination):
        return
    stream, obs = p.dest.stream, p.obs
    if stream.account_id != obs.account_id and not p.resource_policy:
        p.warnings.append(
            f"The stream is in account {stream.account_id}, the role in "
            f"{obs.account_id}: the stream's owner must also allow the role in the "
            "stream's resource policy (`logferry role policies --for kinesis` prints it)."
        )
    if not p.resource_policy:
        return
    ours = kinesis_resource_policy(stream, p.role_arn, p.vendor_account)
    merged = merge_resource_policy(obs.stream_policy, ours)
    if equivalent(obs.stream_policy, merged):
        return
    kept = len(merged["Statement"]) - 1
    p.add(
        "put-stream-policy",
        stream.arn,
        "statement FastlyWrite for the vendor account and the role"
        + (f"; keeps {kept} other statement(s)" if kept else ""),
        partial(p.writer.put_stream_policy, stream.arn, json.dumps(merged)),
    )


def plan_lifecycle(p: Plan) -> None:
    """5. S3: the rule aborting incomplete multipart uploads, merged with the bucket's rules."""
    if not isinstance(p.dest, S3Destination) or p.abort_multipart_days is None:
        return
    current = p.obs.lifecycle or {"Rules": []}
    merged_rules = merge_lifecycle_rules(
        current.get("Rules", []), p.abort_multipart_days, p.dest.prefix
    )
    if merged_rules is None:
        return
    extra: dict[str, Any] = {}
    if current.get("TransitionDefaultMinimumObjectSize"):
        extra["TransitionDefaultMinimumObjectSize"] = current["TransitionDefaultMinimumObjectSize"]
    kept = len(merged_rules) - 1
    p.add(
        "put-bucket-lifecycle",
        p.dest.bucket,
        f"rule {LIFECYCLE_RULE_ID}: abort incomplete multipart "
        f"uploads under '{p.dest.prefix}' after {p.abort_multipart_days} day(s)"
        + (f"; keeps {kept} other rule(s)" if kept else ""),
        partial(
            p.writer.put_lifecycle,
            Bucket=p.dest.bucket,
            LifecycleConfiguration={"Rules": merged_rules},
            **extra,
        ),
    )


# --- pure helpers -------------------------------------------------------------------------------


def merge_lifecycle_rules(
    rules: list[dict[str, Any]], days: int, prefix: str = ""
) -> list[dict[str, Any]] | None:
    """Existing rules plus ours (replaced in place if present); None when nothing changes.

    Never drops a rule: PutBucketLifecycleConfiguration replaces the whole configuration.
    """
    ours = {
        "ID": LIFECYCLE_RULE_ID,
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
    }
    merged: list[dict[str, Any]] = []
    found = False
    for rule in rules:
        if rule.get("ID") == LIFECYCLE_RULE_ID:
            if found:
                continue  # a duplicate of ours: S3 would reject two rules with one ID
            found = True
            if _same_rule(rule, ours):
                merged.append(rule)
                continue
            merged.append(ours)
        else:
            merged.append(rule)
    if not found:
        merged.append(ours)
    elif merged == rules:
        return None
    return merged


def _same_rule(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        flt = r.get("Filter", {})
        prefix = flt.get("Prefix", r.get("Prefix", "")) if isinstance(flt, dict) else ""
        other_filters = {k for k in (flt or {}) if k != "Prefix"}
        return (
            prefix,
            bool(other_filters),
            r.get("Status"),
            (r.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation"),
            tuple(sorted(k for k in r if k not in ("ID", "Filter", "Prefix", "Status"))),
        )

    return key(a) == key(b)


def _oldest_non_default(versions: list[dict[str, Any]]) -> str | None:
    candidates = [v for v in versions if not v.get("IsDefaultVersion")]
    if not candidates:
        return None

    def number(v: dict[str, Any]) -> int:
        # IAM numbers versions v1, v2, ... in creation order and never reuses a number.
        vid = str(v.get("VersionId", "v0"))
        return int(vid[1:]) if vid[1:].isdigit() else 0

    return str(min(candidates, key=number)["VersionId"])


def _actions(doc: PolicyDocument) -> list[str]:
    stmt = doc["Statement"]
    first = stmt if isinstance(stmt, dict) else stmt[0]
    action = first["Action"]
    return [action] if isinstance(action, str) else list(action)
