"""Share what botocore rebuilds for every client although it depends only on the service.

Why: serve holds one client per active customer role. botocore builds, for *each* client, the
parsed endpoint ruleset of its service (thousands of rule objects for S3), a ServiceModel with
its operation models, and a new client class with one function object per operation. None of
them depends on the identity. `bench/identity_memory.py --identities 100` (an S3 and a Kinesis
client per identity, each used once): 769 KiB and 220 ms per identity before, 266 KiB and 170 ms
with sharing (docs/performance.md).

What stays per client (so isolation is unchanged): credentials and the request signer, the
event emitter (hooks registered on one client never fire for another), the endpoint resolver
with its builtins (region, endpoint URL), the config and the connection pool. Only the
`EndpointProvider` (rules + a cache of resolved endpoints keyed by the call's parameters, such
as the bucket), the `ServiceModel` (the API description and its operation models) and the
generated client class are shared.

botocore offers no hook for any of them, so this wraps three of its internals. Each wrapper checks
what it receives and falls back to botocore's own behaviour for anything it does not know, so
a botocore change can cost the saving, never correctness. `sharing_active()` tells tests.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import weakref
from typing import Any

import botocore.client
import botocore.regions
from botocore.endpoint_provider import EndpointProvider

log = logging.getLogger(__name__)

_lock = threading.Lock()
_installed = False
_providers: dict[tuple[int, int, frozenset[str]], tuple[EndpointProvider, Any, Any]] = {}
# Per session emitter, weakly: a short-lived session (a CLI profile chain) takes its classes along.
_classes: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], type]] = weakref.WeakKeyDictionary()


def _shared_provider(
    ruleset_data: Any = None, partition_data: Any = None, **kwargs: Any
) -> EndpointProvider:
    """Stands in for `EndpointProvider(...)` inside botocore.regions: one provider per
    (ruleset, partitions, excluded parameters). The data dicts come from the shared loader's
    cache; the entry keeps them alive, so their ids cannot be reused while cached."""
    unknown = set(kwargs) - {"excluded_params"}
    if ruleset_data is None or partition_data is None or unknown:
        return EndpointProvider(ruleset_data=ruleset_data, partition_data=partition_data, **kwargs)
    excluded = frozenset(kwargs.get("excluded_params") or ())
    key = (id(ruleset_data), id(partition_data), excluded)
    with _lock:
        hit = _providers.get(key)
        if hit is None:
            provider = EndpointProvider(
                ruleset_data=ruleset_data, partition_data=partition_data, **kwargs
            )
            _own_resolution_cache(provider)
            _providers[key] = hit = (provider, ruleset_data, partition_data)
    return hit[0]


RESOLVED_CACHE = 16384
"""Endpoints a shared provider remembers (one per bucket and client setting: a few per
customer; a few MiB at most)."""


def _own_resolution_cache(provider: EndpointProvider) -> None:
    """Give `provider` its own cache of resolved endpoints, large enough for every customer.

    Why: botocore caches `_resolve_endpoint` in one process-wide LRU of 100 entries keyed by
    the call's parameters, the bucket among them. With more than 100 customers' buckets used in
    turn every call missed and walked the whole S3 ruleset again (a third of a PutObject's
    client-side CPU under cProfile). The result depends only on the parameters (the provider's
    rules are fixed), so a larger cache returns exactly what botocore would compute."""
    raw = getattr(EndpointProvider._resolve_endpoint, "__wrapped__", None)
    if raw is None:  # not the botocore these lines were written for: keep its own cache
        return

    @functools.lru_cache(maxsize=RESOLVED_CACHE)
    def resolved(**params: Any) -> Any:
        return raw(provider, **params)

    def resolve(**params: Any) -> Any:
        for name, value in params.items():  # as botocore's cache does: lists are not hashable
            if isinstance(value, list):
                params[name] = tuple(value)
        return resolved(**params)

    provider._resolve_endpoint = resolve


_original_create_class = botocore.client.ClientCreator._create_client_class
_original_load_model = botocore.client.ClientCreator._load_service_model
_models: dict[tuple[str, int], tuple[Any, Any]] = {}


def _shared_service_model(self: Any, service_name: str, api_version: str | None = None) -> Any:
    """One ServiceModel per service document: it wraps the loader's cached JSON and caches the
    operation models built from it, which depend on nothing else."""
    loader = getattr(self, "_loader", None)
    if loader is None:
        return _original_load_model(self, service_name, api_version)
    json_model = loader.load_service_model(service_name, "service-2", api_version=api_version)
    key = (service_name, id(json_model))
    with _lock:
        hit = _models.get(key)
        if hit is None:
            model = botocore.client.ServiceModel(json_model, service_name=service_name)
            _models[key] = hit = (model, json_model)  # keeps the JSON (and its id) alive
    return hit[0]


def _shared_client_class(self: Any, service_name: str, service_model: Any) -> type:
    """One client class per (service, API version, session event emitter): the class only
    carries operation methods (and what 'creating-client-class' handlers of that emitter add)."""
    emitter = getattr(self, "_event_emitter", None)
    version = getattr(service_model, "api_version", None)
    if emitter is None or not isinstance(version, str):
        return _original_create_class(self, service_name, service_model)
    key = (service_name, version)
    with _lock:
        hit = _classes.get(emitter, {}).get(key)
    if hit is not None:
        return hit
    cls = _original_create_class(self, service_name, service_model)
    with _lock:
        return _classes.setdefault(emitter, {}).setdefault(key, cls)


def _signatures_match() -> bool:
    try:
        resolver = inspect.signature(botocore.regions.EndpointRulesetResolver.__init__)
        creator = inspect.signature(_original_create_class)
        provider = inspect.signature(EndpointProvider.__init__)
    except (TypeError, ValueError):
        return False
    return (
        "endpoint_ruleset_data" in resolver.parameters
        and list(creator.parameters) == ["self", "service_name", "service_model"]
        and list(inspect.signature(_original_load_model).parameters)
        == ["self", "service_name", "api_version"]
        and hasattr(botocore.client, "ServiceModel")
        and {"ruleset_data", "partition_data"} <= set(provider.parameters)
        and getattr(botocore.regions, "EndpointProvider", None) is EndpointProvider
    )


def install() -> bool:
    """Share rulesets and client classes from now on (idempotent). False when this botocore
    does not look like the one the wrappers were written for (nothing is changed then)."""
    global _installed
    with _lock:
        if _installed:
            return True
        if not _signatures_match():
            log.info("botocore internals differ; clients do not share rulesets and classes")
            return False
        botocore.regions.EndpointProvider = _shared_provider
        botocore.client.ClientCreator._create_client_class = _shared_client_class
        botocore.client.ClientCreator._load_service_model = _shared_service_model
        _installed = True
        return True


def sharing_active() -> bool:
    return _installed
