"""`logferry role create`: bring the customer's role, policy, attachment, stream policy and bucket
lifecycle rule to the wanted state.

Plan / apply: `observe` reads the current state (read-only calls), `plan` turns the difference
into an ordered list of `Step`s (aws/provision_plan.py, one function per part), `run` applies
them; AWS failures are told in `role create`'s words (aws/provision_calls.py). `--dry-run` stops
after `plan`; a re-run plans nothing when everything is already right, so the command is
idempotent.

Write order is chosen so a crash at any point leaves nothing unsafe and a re-run completes it:

1. the role's trust policy (CreateRole carries it atomically; an existing role's trust is fixed
   with UpdateAssumeRolePolicy *before* any permission is granted or changed), so there is never
   a role with permissions whose trust lacks the ExternalId condition;
2. the managed policy (a new policy is harmless until attached; a changed one becomes the new
   default version, pruning the oldest non-default version when IAM's limit of 5 is reached);
3. the attachment;
4. the stream's resource policy (needs the role to exist: AWS validates principals), merged
   with the statements already on the stream;
5. the bucket lifecycle rule, merged with the existing rules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field

from logferry.aws.clients import AwsClients
from logferry.aws.errors import error_code
from logferry.aws.names import FASTLY_ACCOUNT_ID, IAM_REGION, Partition, arn_partition, policy_arn
from logferry.aws.policies import Destination, KinesisDestination, S3Destination
from logferry.aws.provision_calls import (
    RERUN,
    call_aws,
    error_code_of,
    translate_botocore,
    translate_error,
)
from logferry.aws.provision_plan import (
    LIFECYCLE_RULE_ID,
    MAX_POLICY_VERSIONS,
    Change,
    ChangeAction,
    Observed,
    Plan,
    Step,
    Writer,
    merge_lifecycle_rules,
    plan_steps,
)
from logferry.errors import InputError, SetupError

__all__ = [
    "LIFECYCLE_RULE_ID",
    "MAX_POLICY_VERSIONS",
    "RERUN",
    "STS_ACTIVATE_REGIONS",
    "Change",
    "ChangeAction",
    "Observed",
    "ProvisionResult",
    "RoleProvisioner",
    "RoleRequest",
    "Step",
    "merge_lifecycle_rules",
    "next_step_text",
    "provision_role",
    "translate_botocore",
    "translate_error",
]

STS_ACTIVATE_REGIONS = ("us-east-2", "us-west-1", "us-west-2")


class ProvisionResult(BaseModel):
    role_arn: str
    policy_arn: str
    account_id: str
    partition: str
    dry_run: bool = False
    changes: list[Change] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    next_step: str = ""


@dataclass(frozen=True)
class RoleRequest:
    """What the user asked for (already validated)."""

    dest: Destination
    role_name: str
    external_id: str
    policy_name: str
    vendor_account: str = FASTLY_ACCOUNT_ID
    resource_policy: bool = False
    abort_multipart_days: int | None = None

    def __post_init__(self) -> None:
        if self.resource_policy and not isinstance(self.dest, KinesisDestination):
            raise InputError("--resource-policy", "applies to Kinesis streams only.")
        if self.abort_multipart_days is not None and not isinstance(self.dest, S3Destination):
            raise InputError("--abort-incomplete-multipart-days", "applies to S3 buckets only.")
        if self.abort_multipart_days is not None and self.abort_multipart_days < 1:
            raise InputError(
                "--abort-incomplete-multipart-days",
                f"is {self.abort_multipart_days}; S3 needs at least 1 day.",
                fix="Use a whole number of days such as 1 or 7.",
            )


class RoleProvisioner:
    """Observe, plan and apply one `RoleRequest` with one set of AWS clients."""

    def __init__(
        self,
        clients: AwsClients,
        request: RoleRequest,
        *,
        region: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        principal_wait_seconds: float = 30.0,
    ) -> None:
        self.clients = clients
        self.req = request
        self._region = region
        self._sleep = sleep
        self._principal_wait = principal_wait_seconds
        self._role_created_now = False

    # regions -----------------------------------------------------------------------------------

    def _default_region(self) -> str:
        if self._region:
            return self._region
        if isinstance(self.req.dest, KinesisDestination):
            return self.req.dest.stream.region
        return self.clients.session.region_name or "us-east-1"

    def _sts(self) -> BaseClient:
        return self.clients.client("sts", self._default_region())

    def _iam(self, partition: Partition) -> BaseClient:
        return self.clients.client("iam", IAM_REGION[partition])

    def _kinesis(self) -> BaseClient:
        assert isinstance(self.req.dest, KinesisDestination)
        return self.clients.client("kinesis", self.req.dest.stream.region)

    def _s3(self) -> BaseClient:
        return self.clients.client("s3", self._default_region())

    # observe -----------------------------------------------------------------------------------

    def observe(self) -> Observed:
        ident = call_aws(self._sts(), "get_caller_identity", "finding out which account to use")
        account = str(ident["Account"])
        partition = arn_partition(str(ident["Arn"]))
        req = self.req
        if isinstance(req.dest, S3Destination) and req.dest.partition != partition:
            req = RoleRequest(
                dest=S3Destination(req.dest.bucket, req.dest.prefix, partition),
                role_name=req.role_name,
                external_id=req.external_id,
                policy_name=req.policy_name,
                vendor_account=req.vendor_account,
                resource_policy=req.resource_policy,
                abort_multipart_days=req.abort_multipart_days,
            )
            self.req = req
        if isinstance(req.dest, KinesisDestination) and req.dest.partition != partition:
            raise InputError(
                "--stream-arn",
                f"the stream is in partition {req.dest.partition} but your credentials are for "
                f"{partition}.",
                fix="Use credentials of the stream's partition (--profile).",
            )
        if (
            isinstance(req.dest, KinesisDestination)
            and req.resource_policy
            and req.dest.stream.account_id != account
        ):
            raise InputError(
                "--stream-arn",
                f"the stream belongs to account {req.dest.stream.account_id} but your "
                f"credentials are for {account}; only the stream's owner can set its "
                "resource policy.",
                fix="Run without --resource-policy here and add the printed statement from the "
                "stream's account, or use that account's credentials.",
            )

        obs = Observed(account_id=account, partition=partition, caller_arn=str(ident["Arn"]))
        iam = self._iam(partition)
        obs.role = self._get_role(iam)
        parn = policy_arn(partition, account, req.policy_name)
        obs.policy = self._get_policy(iam, parn)
        if obs.policy is not None:
            versions = call_aws(
                iam, "list_policy_versions", f"reading versions of policy {parn}", PolicyArn=parn
            )["Versions"]
            obs.versions = list(versions)
            default_id = obs.policy["DefaultVersionId"]
            doc = call_aws(
                iam,
                "get_policy_version",
                f"reading policy {parn}",
                PolicyArn=parn,
                VersionId=default_id,
            )["PolicyVersion"]["Document"]
            obs.default_document = _as_dict(doc)
        if obs.role is not None:
            obs.attached_arns = self._attached(iam)
            obs.inline_policies = self._inline(iam)
        if isinstance(req.dest, KinesisDestination) and req.resource_policy:
            raw = call_aws(
                self._kinesis(),
                "get_resource_policy",
                f"reading the resource policy of {req.dest.stream.arn}",
                ResourceARN=req.dest.stream.arn,
            ).get("Policy", "")
            parsed = _as_dict(raw) if raw else {}
            obs.stream_policy = parsed or None
        if isinstance(req.dest, S3Destination) and req.abort_multipart_days is not None:
            obs.lifecycle = self._get_lifecycle(req.dest.bucket)
        return obs

    def _get_role(self, iam: BaseClient) -> dict[str, Any] | None:
        try:
            role = iam.get_role(RoleName=self.req.role_name)["Role"]
        except ClientError as exc:
            if error_code(exc) == "NoSuchEntity":
                return None
            raise translate_error(
                exc, service="iam", operation="GetRole", doing=f"reading role {self.req.role_name}"
            ) from exc
        except BotoCoreError as exc:
            raise translate_botocore(exc, doing=f"reading role {self.req.role_name}") from exc
        role = dict(role)
        role["AssumeRolePolicyDocument"] = _as_dict(role.get("AssumeRolePolicyDocument"))
        return role

    def _get_policy(self, iam: BaseClient, arn: str) -> dict[str, Any] | None:
        try:
            return dict(iam.get_policy(PolicyArn=arn)["Policy"])
        except ClientError as exc:
            if error_code(exc) == "NoSuchEntity":
                return None
            raise translate_error(
                exc, service="iam", operation="GetPolicy", doing=f"reading policy {arn}"
            ) from exc
        except BotoCoreError as exc:
            raise translate_botocore(exc, doing=f"reading policy {arn}") from exc

    def _attached(self, iam: BaseClient) -> list[str]:
        doing = f"listing policies attached to role {self.req.role_name}"
        arns: list[str] = []
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"RoleName": self.req.role_name}
            if marker:
                kwargs["Marker"] = marker
            page = call_aws(iam, "list_attached_role_policies", doing, **kwargs)
            arns += [p["PolicyArn"] for p in page.get("AttachedPolicies", [])]
            if not page.get("IsTruncated"):
                return arns
            marker = page.get("Marker")

    def _inline(self, iam: BaseClient) -> list[str]:
        doing = f"listing inline policies of role {self.req.role_name}"
        names: list[str] = []
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"RoleName": self.req.role_name}
            if marker:
                kwargs["Marker"] = marker
            page = call_aws(iam, "list_role_policies", doing, **kwargs)
            names += list(page.get("PolicyNames", []))
            if not page.get("IsTruncated"):
                return names
            marker = page.get("Marker")

    def _get_lifecycle(self, bucket: str) -> dict[str, Any]:
        try:
            resp = self._s3().get_bucket_lifecycle_configuration(Bucket=bucket)
        except ClientError as exc:
            if error_code(exc) == "NoSuchLifecycleConfiguration":
                return {"Rules": []}
            raise translate_error(
                exc,
                service="s3",
                operation="GetBucketLifecycleConfiguration",
                doing=f"reading the lifecycle rules of bucket {bucket}",
            ) from exc
        except BotoCoreError as exc:
            raise translate_botocore(exc, doing=f"reading lifecycle of {bucket}") from exc
        resp.pop("ResponseMetadata", None)
        return dict(resp)

    # plan --------------------------------------------------------------------------------------

    def plan(self, obs: Observed) -> tuple[list[Step], list[str], str, str]:
        """Steps (in safe order), warnings, role ARN and policy ARN."""
        req = self.req
        p = plan_steps(
            Plan(
                dest=req.dest,
                role_name=req.role_name,
                policy_name=req.policy_name,
                external_id=req.external_id,
                vendor_account=req.vendor_account,
                resource_policy=req.resource_policy,
                abort_multipart_days=req.abort_multipart_days,
                obs=obs,
                iam=self._iam(obs.partition),
                writer=Writer(
                    create_role=self._create_role,
                    put_stream_policy=self._put_stream_policy,
                    put_lifecycle=self._put_lifecycle,
                ),
            )
        )
        return p.steps, p.warnings, p.role_arn, p.policy_arn

    def _create_role(self, iam: BaseClient, **kwargs: Any) -> None:
        """CreateRole; remembered, because AWS needs a moment before a new role is a principal."""
        call_aws(
            iam,
            "create_role",
            f"creating role {self.req.role_name}",
            **kwargs,
        )
        self._role_created_now = True

    def _put_lifecycle(self, **kwargs: Any) -> None:
        """PutBucketLifecycleConfiguration (the S3 client is made only when a step runs)."""
        call_aws(
            self._s3(),
            "put_bucket_lifecycle_configuration",
            f"updating the lifecycle rules of bucket {kwargs['Bucket']}",
            **kwargs,
        )

    def _put_stream_policy(self, arn: str, policy: str) -> None:
        """PutResourcePolicy; a role created seconds ago may not yet be a valid principal."""
        deadline = time.monotonic() + (self._principal_wait if self._role_created_now else 0)
        delay = 1.0
        while True:
            try:
                call_aws(
                    self._kinesis(),
                    "put_resource_policy",
                    f"setting the resource policy of {arn}",
                    ResourceARN=arn,
                    Policy=policy,
                )
                return
            except SetupError as exc:
                retriable = error_code_of(exc) in (
                    "InvalidArgumentException",
                    "MalformedPolicyDocument",
                )
                if not retriable or time.monotonic() + delay > deadline:
                    raise
                self._sleep(delay)
                delay = min(delay * 2, 8.0)

    # run ---------------------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False) -> ProvisionResult:
        obs = self.observe()
        steps, warnings, rarn, parn = self.plan(obs)
        if not dry_run:
            for step in steps:
                step.run()
        return ProvisionResult(
            role_arn=rarn,
            policy_arn=parn,
            account_id=obs.account_id,
            partition=obs.partition,
            dry_run=dry_run,
            changes=[s.change for s in steps],
            warnings=warnings,
            next_step=next_step_text(obs.account_id),
        )


def provision_role(
    clients: AwsClients,
    request: RoleRequest,
    *,
    region: str | None = None,
    dry_run: bool = False,
) -> ProvisionResult:
    """Create or update everything `request` needs; see the module docstring for the order."""
    return RoleProvisioner(clients, request, region=region).run(dry_run=dry_run)


def next_step_text(account_id: str) -> str:
    regions = ", ".join(STS_ACTIVATE_REGIONS)
    return (
        f"Activate the regional STS endpoints {regions} for account {account_id} "
        "(IAM console → Account settings → Security Token Service (STS) → Endpoints; "
        "us-east-1 is always active): the vendor may request credentials from any of them."
    )


def _as_dict(doc: Any) -> dict[str, Any]:
    """IAM documents arrive as dicts (boto3 decodes them) or URL-encoded / plain JSON strings."""
    if isinstance(doc, dict):
        return doc
    if not doc:
        return {}
    from urllib.parse import unquote

    text = str(doc)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = json.loads(unquote(text))
    return parsed if isinstance(parsed, dict) else {}
