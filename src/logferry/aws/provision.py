"""`logferry role create`: bring the customer's role, policy, attachment, stream policy and bucket
lifecycle rule to the wanted state.

Plan / apply: `observe` reads the current state (read-only calls), `plan` turns the difference
into an ordered list of `Step`s, `apply` runs them. `--dry-run` stops after `plan`; a re-run plans
nothing when everything is already right, so the command is idempotent.

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
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.client import BaseClient
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from pydantic import BaseModel, Field

from logferry.aws.clients import AwsClients
from logferry.aws.errors import (
    ACCESS_DENIED_CODES,
    BAD_CREDENTIAL_CODES,
    client_error_info,
    error_code,
    is_transient,
)
from logferry.aws.names import (
    FASTLY_ACCOUNT_ID,
    IAM_REGION,
    Partition,
    arn_partition,
    policy_arn,
    role_arn,
)
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
from logferry.errors import AwsErrorInfo, InputError, LogferryError, SetupError, TransientError

LIFECYCLE_RULE_ID = "logferry-abort-incomplete-multipart"
MAX_POLICY_VERSIONS = 5
STS_ACTIVATE_REGIONS = ("us-east-2", "us-west-1", "us-west-2")

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


@dataclass
class Step:
    change: Change
    run: Callable[[], None]


# --- AWS error translation ----------------------------------------------------------------------

RERUN = "`logferry role create` is safe to re-run: it continues where it stopped."


def translate_error(
    exc: ClientError, *, service: str, operation: str, doing: str, region: str | None = None
) -> LogferryError:
    """One clear sentence with a fix for an AWS error code (the raw code travels in `info`)."""
    info = client_error_info(exc, service=service, operation=operation, region=region)
    code, message, status = info.code, info.message, info.http_status
    said = f" (AWS said: {message})" if message else ""
    action = f"{service}:{operation}"
    if code in ACCESS_DENIED_CODES:
        return SetupError(
            f"AWS denied {action} while {doing}{said}.",
            info,
            fix=f"Use credentials allowed to call {action} on this resource "
            "(e.g. --profile with an administrator), or ask your AWS administrator to grant it.",
        )
    if code in BAD_CREDENTIAL_CODES:
        return SetupError(
            f"AWS did not accept the credentials while {doing} ({code}){said}.",
            info,
            fix="Select valid credentials: --profile NAME, AWS_PROFILE, or `aws sso login`; "
            "with the local emulator pass --endpoint-url.",
        )
    if code == "NoSuchEntity":
        return SetupError(
            f"IAM found no such entity while {doing}{said}.",
            info,
            fix="Check the names and that the credentials belong to the intended account. " + RERUN,
        )
    if code == "MalformedPolicyDocument":
        return SetupError(
            f"AWS rejected the policy document while {doing}{said}.",
            info,
            fix="Check --vendor-account (it must be an existing account) and the bucket, prefix or "
            "stream; `logferry role policies` prints the exact documents.",
        )
    if code in ("LimitExceeded", "LimitExceededException"):
        return SetupError(
            f"An AWS quota was reached while {doing}{said}.",
            info,
            fix="Delete unused IAM roles, policies or policy versions, or request a quota "
            "increase in Service Quotas; then re-run.",
        )
    if code == "EntityAlreadyExists":
        return SetupError(
            f"It already exists: someone else created it while {doing}{said}.",
            info,
            fix="Run the command again: it brings the existing entity up to date.",
        )
    if code == "DeleteConflict":
        return SetupError(
            f"AWS refused a delete while {doing}{said}.",
            info,
            fix="Delete an old non-default policy version by hand "
            "(aws iam delete-policy-version), then re-run.",
        )
    if code == "NoSuchBucket":
        return SetupError(
            f"The bucket does not exist while {doing}{said}.",
            info,
            fix="Create the bucket first, or check --bucket and the account of your credentials.",
        )
    if code == "ResourceNotFoundException":
        return SetupError(
            f"The Kinesis stream was not found while {doing}{said}.",
            info,
            fix="Check --stream-arn (name, region and account) and that the stream is ACTIVE.",
        )
    if is_transient(code, status):
        return TransientError(
            f"AWS was temporarily unavailable while {doing} ({code}){said}.",
            info,
            fix="Wait a moment and re-run; " + RERUN,
        )
    return SetupError(
        f"{action} failed while {doing}: {code}{said}.",
        info,
        fix="Fix the cause named by AWS, then re-run; " + RERUN,
    )


def translate_botocore(exc: BotoCoreError, *, doing: str) -> LogferryError:
    """Errors raised before AWS answered (no credentials, unreachable endpoint, ...)."""
    if isinstance(exc, ProfileNotFound):
        return InputError(
            "--profile", f"{exc}.", fix="List profiles with `aws configure list-profiles`."
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return SetupError(
            f"No usable AWS credentials were found while {doing}.",
            AwsErrorInfo(code=type(exc).__name__, message=str(exc)),
            fix="Configure credentials (--profile, AWS_PROFILE, AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, or `aws configure`).",
        )
    if isinstance(exc, NoRegionError):
        return InputError("--region", "no AWS region is configured.", fix="Pass --region.")
    if isinstance(exc, EndpointConnectionError):
        return TransientError(
            f"Could not connect to AWS while {doing}: {exc}.",
            AwsErrorInfo(code="EndpointConnectionError", message=str(exc)),
            fix="Check the network and --endpoint-url, then re-run.",
        )
    return TransientError(
        f"The AWS call failed while {doing}: {exc}.",
        AwsErrorInfo(code=type(exc).__name__, message=str(exc)),
        fix="Re-run; " + RERUN,
    )


def _call(client: BaseClient, operation: str, doing: str, **kwargs: Any) -> dict[str, Any]:
    """Call `client.<operation>` and translate failures (`operation` in snake_case)."""
    service = client.meta.service_model.endpoint_prefix
    api_name = client.meta.method_to_api_mapping.get(operation, operation)
    try:
        return getattr(client, operation)(**kwargs)  # type: ignore[no-any-return]
    except ClientError as exc:
        raise translate_error(
            exc, service=service, operation=api_name, doing=doing, region=client.meta.region_name
        ) from exc
    except BotoCoreError as exc:
        raise translate_botocore(exc, doing=doing) from exc


def _code(exc: LogferryError) -> str:
    info = getattr(exc, "info", None)
    return info.code if info is not None else ""


# --- the provisioner ----------------------------------------------------------------------------


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
        ident = _call(self._sts(), "get_caller_identity", "finding out which account to use")
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
            versions = _call(
                iam, "list_policy_versions", f"reading versions of policy {parn}", PolicyArn=parn
            )["Versions"]
            obs.versions = list(versions)
            default_id = obs.policy["DefaultVersionId"]
            doc = _call(
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
            raw = _call(
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
            page = _call(iam, "list_attached_role_policies", doing, **kwargs)
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
            page = _call(iam, "list_role_policies", doing, **kwargs)
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
        iam = self._iam(obs.partition)
        steps: list[Step] = []
        warnings: list[str] = []
        trust = trust_policy(req.dest.kind, req.external_id, req.vendor_account)
        # Defence in depth: never write a trust policy without the ExternalId condition.
        if not has_external_id_condition(dict(trust), req.external_id):
            raise RuntimeError("refusing to write a trust policy without the ExternalId condition")
        perm = permission_policy(req.dest)
        parn = policy_arn(obs.partition, obs.account_id, req.policy_name)
        rarn = (
            str(obs.role["Arn"])
            if obs.role
            else role_arn(obs.partition, obs.account_id, req.role_name)
        )
        trust_json = json.dumps(trust)
        perm_json = json.dumps(perm)

        # 1. role / trust
        if obs.role is None:

            def create_role() -> None:
                _call(
                    iam,
                    "create_role",
                    f"creating role {req.role_name}",
                    RoleName=req.role_name,
                    AssumeRolePolicyDocument=trust_json,
                    Description=f"Log delivery by AWS account {req.vendor_account} "
                    f"to {req.dest.describe()} (created by logferry)"[:1000],
                )
                self._role_created_now = True

            steps.append(
                Step(
                    Change(
                        action="create-role",
                        target=rarn,
                        detail=f"trusts account {req.vendor_account} with ExternalId "
                        f"{req.external_id}",
                    ),
                    create_role,
                )
            )
        elif not equivalent(obs.role.get("AssumeRolePolicyDocument"), trust):
            steps.append(
                Step(
                    Change(
                        action="update-trust-policy",
                        target=rarn,
                        detail=f"replace the trust policy: only account {req.vendor_account} "
                        f"with ExternalId {req.external_id}",
                    ),
                    lambda: _call(
                        iam,
                        "update_assume_role_policy",
                        f"updating the trust policy of role {req.role_name}",
                        RoleName=req.role_name,
                        PolicyDocument=trust_json,
                    ),
                )
            )

        # 2. managed policy
        if obs.policy is None:
            steps.append(
                Step(
                    Change(
                        action="create-policy",
                        target=parn,
                        detail=f"{', '.join(_actions(perm))} on {req.dest.resource_arn}",
                    ),
                    lambda: _call(
                        iam,
                        "create_policy",
                        f"creating policy {req.policy_name}",
                        PolicyName=req.policy_name,
                        PolicyDocument=perm_json,
                        Description=f"Write-only log delivery to {req.dest.describe()}"[:1000],
                    ),
                )
            )
        elif not equivalent(obs.default_document, perm):
            if len(obs.versions) >= MAX_POLICY_VERSIONS:
                victim = _oldest_non_default(obs.versions)
                if victim is None:
                    raise SetupError(
                        f"Policy {parn} has {len(obs.versions)} versions and none can be deleted.",
                        AwsErrorInfo(code="LimitExceeded", service="iam"),
                        fix="Delete a policy version by hand (aws iam delete-policy-version).",
                    )
                steps.append(
                    Step(
                        Change(
                            action="delete-policy-version",
                            target=parn,
                            detail=f"delete oldest non-default version {victim} "
                            f"(IAM keeps at most {MAX_POLICY_VERSIONS})",
                        ),
                        lambda: _call(
                            iam,
                            "delete_policy_version",
                            f"deleting version {victim} of policy {req.policy_name}",
                            PolicyArn=parn,
                            VersionId=victim,
                        ),
                    )
                )
            steps.append(
                Step(
                    Change(
                        action="create-policy-version",
                        target=parn,
                        detail=f"new default version: {', '.join(_actions(perm))} "
                        f"on {req.dest.resource_arn}",
                    ),
                    lambda: _call(
                        iam,
                        "create_policy_version",
                        f"updating policy {req.policy_name}",
                        PolicyArn=parn,
                        PolicyDocument=perm_json,
                        SetAsDefault=True,
                    ),
                )
            )

        # 3. attachment
        if parn not in obs.attached_arns:
            steps.append(
                Step(
                    Change(action="attach-policy", target=rarn, detail=f"attach {parn}"),
                    lambda: _call(
                        iam,
                        "attach_role_policy",
                        f"attaching policy {req.policy_name} to role {req.role_name}",
                        RoleName=req.role_name,
                        PolicyArn=parn,
                    ),
                )
            )
        others = [a for a in obs.attached_arns if a != parn]
        if others or obs.inline_policies:
            names = others + [f"{n} (inline)" for n in obs.inline_policies]
            warnings.append(
                f"Role {req.role_name} also has {', '.join(names)}; they add to what the vendor "
                "can do with this role. logferry leaves them in place: detach them unless you "
                "need them."
            )

        # 4. stream resource policy
        if isinstance(req.dest, KinesisDestination):
            stream = req.dest.stream
            if stream.account_id != obs.account_id and not req.resource_policy:
                warnings.append(
                    f"The stream is in account {stream.account_id}, the role in "
                    f"{obs.account_id}: the stream's owner must also allow the role in the "
                    "stream's resource policy (`logferry role policies --for kinesis` prints it)."
                )
            if req.resource_policy:
                ours = kinesis_resource_policy(stream, rarn, req.vendor_account)
                merged = merge_resource_policy(obs.stream_policy, ours)
                if not equivalent(obs.stream_policy, merged):
                    kept = len(merged["Statement"]) - 1
                    steps.append(
                        Step(
                            Change(
                                action="put-stream-policy",
                                target=stream.arn,
                                detail="statement FastlyWrite for the vendor account and the role"
                                + (f"; keeps {kept} other statement(s)" if kept else ""),
                            ),
                            lambda: self._put_stream_policy(stream.arn, json.dumps(merged)),
                        )
                    )

        # 5. lifecycle rule
        if isinstance(req.dest, S3Destination) and req.abort_multipart_days is not None:
            current = obs.lifecycle or {"Rules": []}
            merged_rules = merge_lifecycle_rules(
                current.get("Rules", []), req.abort_multipart_days, req.dest.prefix
            )
            if merged_rules is not None:
                bucket = req.dest.bucket
                config: dict[str, Any] = {"Rules": merged_rules}
                extra: dict[str, Any] = {}
                if current.get("TransitionDefaultMinimumObjectSize"):
                    extra["TransitionDefaultMinimumObjectSize"] = current[
                        "TransitionDefaultMinimumObjectSize"
                    ]
                kept = len(merged_rules) - 1
                steps.append(
                    Step(
                        Change(
                            action="put-bucket-lifecycle",
                            target=bucket,
                            detail=f"rule {LIFECYCLE_RULE_ID}: abort incomplete multipart "
                            f"uploads under '{req.dest.prefix}' after "
                            f"{req.abort_multipart_days} day(s)"
                            + (f"; keeps {kept} other rule(s)" if kept else ""),
                        ),
                        lambda: _call(
                            self._s3(),
                            "put_bucket_lifecycle_configuration",
                            f"updating the lifecycle rules of bucket {bucket}",
                            Bucket=bucket,
                            LifecycleConfiguration=config,
                            **extra,
                        ),
                    )
                )
        return steps, warnings, rarn, parn

    def _put_stream_policy(self, arn: str, policy: str) -> None:
        """PutResourcePolicy; a role created seconds ago may not yet be a valid principal."""
        deadline = time.monotonic() + (self._principal_wait if self._role_created_now else 0)
        delay = 1.0
        while True:
            try:
                _call(
                    self._kinesis(),
                    "put_resource_policy",
                    f"setting the resource policy of {arn}",
                    ResourceARN=arn,
                    Policy=policy,
                )
                return
            except SetupError as exc:
                retriable = _code(exc) in ("InvalidArgumentException", "MalformedPolicyDocument")
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
