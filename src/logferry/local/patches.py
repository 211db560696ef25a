"""Small, scoped patches that make moto 5.2.5 behave like AWS where logferry depends on it.

Applied only inside the emulator process (`logferry.local.server`), never in logferry itself.
Each patch names the DESIGN.md §5 gap it closes; tests/test_emulator.py proves each one by the
AWS behaviour it restores. Written by hand because no library evaluates IAM trust policies
offline the way STS does, and moto's own evaluator is the thing being corrected.
Two more are about the emulator itself, not an AWS behaviour: its backend lookup (cost) and a
lock around its IAM backend (moto's threaded server races there); their comments say why.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterable
from typing import Any

import moto

from logferry.local.trust_policy import arn_account, trust_policy_allows

PINNED_MOTO = "5.2.5"

_applied = False


def apply_all() -> None:
    """Apply every patch once; refuses other moto versions (the patches target 5.2.5 code)."""
    global _applied
    if _applied:
        return
    if moto.__version__ != PINNED_MOTO:
        raise RuntimeError(
            f"logferry's emulator patches target moto {PINNED_MOTO}, found {moto.__version__}; "
            f"install it with: pip install 'moto[server]=={PINNED_MOTO}'"
        )
    _patch_assume_role_trust()
    _patch_kinesis_authorization()
    _patch_kinesis_routing()
    _patch_kinesis_shard_performance()
    _patch_s3_unknown_upload()
    _patch_s3_conditional_write_atomicity()
    _patch_backend_lookup()
    _patch_iam_thread_safety()
    _applied = True


def _replace(owner: Any, name: str, value: Any, *, new: bool = False) -> None:
    """Install one patch on a moto class or module.

    Replacing moto's methods is what this module is for, and mypy cannot type a function put in a
    method's place: one checked `setattr` here instead of one mypy suppression per patch. The target
    must exist (unless `new`: an attribute moto looks up with hasattr), so a moto change fails
    loudly instead of leaving a gap open."""
    if not new and not hasattr(owner, name):
        raise RuntimeError(
            f"moto {moto.__version__} has no {owner.__name__}.{name}: logferry's patch is stale"
        )
    setattr(owner, name, value)


REWRITE_HEADER = "x-logferry-rewritten"


def trust_rewritten_bodies(token: str) -> None:
    """Skip the signature check (never the authorization) of calls carrying `token`.

    A fault-injecting test proxy (`logferry.local.latency_proxy`) may forward part of a call,
    e.g. only the records of a PutRecords that a shard's quota admits; the signature covers the
    original body. Identity still comes from the access key, and the policies are evaluated as
    usual. Real AWS has no such header: this exists only in the local emulator."""
    from moto.iam.access_control import IAMRequestBase

    original = IAMRequestBase.check_signature

    def check_signature(self: IAMRequestBase) -> None:
        headers = {k.lower(): v for k, v in self._headers.items()}
        if token and headers.get(REWRITE_HEADER) == token:
            return
        original(self)

    _replace(IAMRequestBase, "check_signature", check_signature)


# --------------------------------------------------------------------------------------------
# Gaps 1–3: cross-account AssumeRole must evaluate the role's trust policy like STS does.
# --------------------------------------------------------------------------------------------


def _patch_assume_role_trust() -> None:
    from moto.iam import access_control
    from moto.iam.access_control import IAMPolicy, IAMRequestBase, PermissionResult
    from moto.iam.exceptions import NotFoundException
    from moto.iam.models import iam_backends
    from moto.utilities.utils import get_partition

    original = IAMRequestBase.check_action_permitted

    def check_action_permitted(self: IAMRequestBase, resource: str) -> None:
        if self._action != "sts:AssumeRole" or ":role/" not in (resource or ""):
            original(self, resource)
            return
        # Identity side: the caller's own policies must allow sts:AssumeRole on the role.
        identity_allowed = False
        for policy in self._access_key.collect_policies():
            result = IAMPolicy(policy).is_action_permitted(self._action, resource)
            if result == PermissionResult.DENIED:
                self._raise_access_denied()
            if result == PermissionResult.PERMITTED:
                identity_allowed = True
        # Resource side (gap 1): the role lives in the account named by its ARN, not the caller's.
        role_account = arn_account(resource)
        try:
            if role_account is None:  # not a role ARN: no such role
                raise KeyError(resource)
            backend = iam_backends[role_account][get_partition(self._region)]
            role = backend.get_role_by_arn(resource)
        except (KeyError, NotFoundException):
            self._raise_access_denied()  # STS answers AccessDenied for a missing role
        context = {
            "sts:ExternalId": _first(self._data.get("ExternalId")),
            "sts:RoleSessionName": _first(self._data.get("RoleSessionName")),
            "sts:SourceIdentity": _first(self._data.get("SourceIdentity")),
            "aws:PrincipalAccount": self.account_id,
            "aws:PrincipalArn": self._access_key.arn,
        }
        trusted = trust_policy_allows(
            role.assume_role_policy_document,
            action=self._action,
            caller_arn=self._access_key.arn,
            caller_account=self.account_id,
            context=context,
        )
        if not (identity_allowed and trusted):
            self._raise_access_denied()

    _replace(IAMRequestBase, "check_action_permitted", check_action_permitted)
    vars(access_control)["trust_policy_allows"] = trust_policy_allows  # for introspection in tests


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


# --------------------------------------------------------------------------------------------
# Gap 4: Kinesis authorizes against the stream ARN and answers JSON AccessDeniedException.
# --------------------------------------------------------------------------------------------


def _patch_kinesis_authorization() -> None:
    from moto.core.exceptions import AccessDeniedError, JsonRESTError
    from moto.kinesis.responses import KinesisResponse

    def _determine_resource(self: KinesisResponse) -> str:
        arn = self._get_param("StreamARN")
        if arn:
            return str(arn)
        name = self._get_param("StreamName")
        if name:
            return (
                f"arn:{self.partition}:kinesis:{self.region}:{self.current_account}:stream/{name}"
            )
        consumer = self._get_param("ConsumerARN") or self._get_param("ResourceARN")
        if consumer:
            return str(consumer)
        return "*"

    original = KinesisResponse._authenticate_and_authorize_normal_action

    def authorize(self: KinesisResponse, resource: str = "*") -> None:
        try:
            original(self, resource)
        except AccessDeniedError as exc:
            raise JsonRESTError(
                "AccessDeniedException",
                f"{exc.message} on resource: {resource} because no identity-based policy "
                f"allows the {self._get_action()} action",
            ) from None

    # moto calls it when a response class has it (core/responses.py: hasattr).
    _replace(KinesisResponse, "_determine_resource", _determine_resource, new=True)
    _replace(KinesisResponse, "_authenticate_and_authorize_normal_action", authorize)


# --------------------------------------------------------------------------------------------
# Gap 5: route records to the open shard whose range contains the key (end key inclusive).
# --------------------------------------------------------------------------------------------


def _patch_kinesis_routing() -> None:
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.models import Stream
    from moto.utilities.utils import md5_hash

    def get_shard_for_key(self: Stream, partition_key: Any, explicit_hash_key: str) -> Any:
        # partition_key is whatever the request's JSON held: checked here as AWS does
        if not isinstance(partition_key, str) or not 1 <= len(partition_key) <= 256:
            raise InvalidArgumentError("partition_key")
        if explicit_hash_key:
            int_key = int(explicit_hash_key)
            if not 0 <= int_key < 2**128:
                raise InvalidArgumentError("explicit_hash_key")
        else:
            int_key = int(md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)
        for shard in self.shards.values():
            if shard.is_open and shard.starting_hash <= int_key <= shard.ending_hash:
                return shard
        return None

    _replace(Stream, "get_shard_for_key", get_shard_for_key)


# --------------------------------------------------------------------------------------------
# Gap 7: O(1) sequence lookup, bounded get_records scans, and one lock around shard state.
# --------------------------------------------------------------------------------------------

KINESIS_LOCK = threading.RLock()


def _patch_kinesis_shard_performance() -> None:
    from moto.kinesis.models import KinesisBackend, Shard

    def get_max_sequence_number(self: Shard) -> int:
        return next(reversed(self.records)) if self.records else 0

    def get_min_sequence_number(self: Shard) -> int:
        return next(iter(self.records)) if self.records else 0

    def get_records(self: Shard, last_sequence_id: str, limit: int | None) -> Any:
        # Sequence numbers within a moto shard are consecutive integers, so index directly.
        last = int(last_sequence_id)
        if not self.records:
            return [], last, 0
        first, newest = get_min_sequence_number(self), get_max_sequence_number(self)
        start = max(last + 1, first)
        stop = newest if not limit else min(newest, start + int(limit) - 1)
        results = [self.records[n] for n in range(start, stop + 1) if n in self.records]
        if results:
            last = results[-1].sequence_number
            behind = self.records[newest].created_at - results[-1].created_at
        else:
            behind = 0.0
        return results, last, int(behind * 1000)

    _replace(Shard, "get_max_sequence_number", get_max_sequence_number)
    _replace(Shard, "get_min_sequence_number", get_min_sequence_number)
    _replace(Shard, "get_records", get_records)

    for name in (
        "put_record",
        "put_records",
        "get_records",
        "list_shards",
        "split_shard",
        "merge_shards",
        "update_shard_count",
        "describe_stream",
        "describe_stream_summary",
        "create_stream",
        "delete_stream",
    ):
        method = getattr(KinesisBackend, name, None)
        if method is not None:
            setattr(KinesisBackend, name, _locked(method))


def _locked(method: Callable[..., Any], lock: Any = None) -> Callable[..., Any]:
    held = KINESIS_LOCK if lock is None else lock

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with held:
            return method(*args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    vars(wrapper)["__wrapped__"] = method  # what inspect.unwrap follows
    return wrapper


# --------------------------------------------------------------------------------------------
# Unknown multipart upload IDs: S3 answers 404 NoSuchUpload; moto 5.2.5 crashes with HTTP 500
# (KeyError on `bucket.multiparts[id]` in upload_part / complete_multipart_upload).
# --------------------------------------------------------------------------------------------


def _patch_s3_unknown_upload() -> None:
    from moto.s3.exceptions import NoSuchUpload
    from moto.s3.models import S3Backend

    def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: S3Backend, bucket_name: str, multipart_id: str, *a: Any, **k: Any) -> Any:
            if multipart_id not in self.get_bucket(bucket_name).multiparts:
                raise NoSuchUpload(upload_id=multipart_id)
            return method(self, bucket_name, multipart_id, *a, **k)

        wrapper.__name__ = method.__name__
        vars(wrapper)["__wrapped__"] = method  # what inspect.unwrap follows
        return wrapper

    _replace(S3Backend, "upload_part", guarded(S3Backend.upload_part))
    _replace(S3Backend, "complete_multipart_upload", guarded(S3Backend.complete_multipart_upload))


# Conditional writes (`If-None-Match: *` on PutObject and CompleteMultipartUpload): S3 checks
# that the key is absent atomically with the write, so of two racing writes one gets 200 and the
# other 412 (or 409 ConditionalRequestConflict). moto 5.2.5 checks the header (S3Response
# `put_object`, `_key_response_post`) but looks the key up and writes it in two steps on its
# threaded server, so both racing writes may succeed. One lock around those two request
# handlers while the header is present (logferry's write fencing; tests/test_s3_fencing.py).
# --------------------------------------------------------------------------------------------

CONDITIONAL_WRITE_LOCK = threading.Lock()


def _patch_s3_conditional_write_atomicity() -> None:
    from moto.s3.responses import S3Response

    def serialised(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: S3Response, *a: Any, **k: Any) -> Any:
            if self.headers.get("If-None-Match") is None:
                return method(self, *a, **k)
            with CONDITIONAL_WRITE_LOCK:
                return method(self, *a, **k)

        wrapper.__name__ = method.__name__
        vars(wrapper)["__wrapped__"] = method
        return wrapper

    _replace(S3Response, "put_object", serialised(S3Response.put_object))
    _replace(S3Response, "_key_response_post", serialised(S3Response._key_response_post))


# --------------------------------------------------------------------------------------------
# The emulator's own cost, not an AWS behaviour: moto's server finds the backend of every request
# by listing its package directory (`list_of_moto_modules`: a listdir plus an isdir per entry).
# py-spy on the emulator under PutObject load put that at 34 % of its CPU
# (docs/performance.md, eighth pass), enough to make the emulator, not serve, the limit of the
# many-tenant benchmarks on a 2-core box. The installed package does not change while it runs.
# --------------------------------------------------------------------------------------------


def _patch_backend_lookup() -> None:
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())

    def list_of_moto_modules() -> Iterable[str]:
        return modules

    _replace(backends, "list_of_moto_modules", list_of_moto_modules)


# --------------------------------------------------------------------------------------------
# Concurrent IAM calls: IAM is consistent under concurrent calls; moto 5.2.5's threaded server
# is not — `attach_role_policy` iterates every managed policy while another request's
# `create_policy` adds one, and answers HTTP 500 "dictionary changed size during iteration"
# (seen provisioning 400–1,000 customers on 8 threads). One lock around the IAM backend's
# methods. Every request's authorization reads policies through them too, each for a few dict
# lookups, which the GIL serialises anyway.
# --------------------------------------------------------------------------------------------

IAM_LOCK = threading.RLock()


def _patch_iam_thread_safety() -> None:
    from moto.iam.models import IAMBackend

    for name, method in list(vars(IAMBackend).items()):
        if not name.startswith("_") and inspect.isfunction(method):  # plain methods only
            setattr(IAMBackend, name, _locked(method, IAM_LOCK))
