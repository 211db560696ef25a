"""botocore clients for many identities, with endpoint URLs as pure configuration.

The same code talks to real AWS and to the local emulator: the only difference is `endpoint_url`.

Why one shared model session: a botocore Session parses the service models (JSON) on first use
and keeps them; a session per identity therefore cost ~13 MiB per customer role with an S3 and
a Kinesis client (bench/identity_memory.py). Every identity now creates its clients from one
process-wide session that owns the loader, the endpoint data and the exception classes, and
passes its own (static or refreshable) credentials: what remains per identity is the clients
themselves (their event hooks, signer, config and connection pool); `client_sharing` lets them
share the parsed endpoint ruleset and the generated class of their service as well.
"""

from __future__ import annotations

import copy
import functools
import threading
import urllib.request
import weakref
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.hooks import EVENT_ALIASES, EventAliaser, HierarchicalEmitter
from botocore.useragent import UserAgentString

from logferry.aws import address_guard, client_sharing

# Retries are ours (sinks retry only what failed, with jitter); botocore's own standard mode
# still absorbs a few connection blips per call without duplicating anything.
DEFAULT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=5,
    read_timeout=60,
    max_pool_connections=16,
)

DELIVERY_CONFIG = DEFAULT_CONFIG.merge(Config(parameter_validation=False))
"""For the clients that deliver as a customer's role (the broker's). The sinks build every
request themselves and enforce its limits (≤ 500 records and 5 MiB per PutRecords, key and
part sizes), so botocore's client-side validation only walked each record of each call again:
17 % of serve's CPU at 2,000 Kinesis records/s (py-spy, docs/performance.md, sixth pass). AWS
still validates every request; a request we built wrong comes back as its error."""

DOMAIN_CONFIG = Config(
    s3={"addressing_style": "path"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)
"""Merged into every client of a customer's S3-compatible `domain` (path-style, checksums only
where required): delivery, the worker's write probe and the role check all get exactly this."""

# Components whose content depends only on botocore's data files, never on an identity.
_SHARED_COMPONENTS = ("data_loader",)
_SHARED_INTERNAL = ("endpoint_resolver", "exceptions_factory")


_ACCEPTS_KWARGS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
"""Handler function -> whether it takes **kwargs (weakly: a dropped handler leaves no entry)."""


class _CheckedOnce(HierarchicalEmitter):
    """botocore's emitter, checking each handler function's signature once per process.

    Why: every `register` runs `inspect.getfullargspec` on the handler to check that it takes
    **kwargs, and a new client registers dozens of bound methods of its own new objects (the
    S3 region redirector, the checksum handlers …): 5 % of the background threads' GIL time
    while 1,000 customers activated (py-spy, docs/performance.md, eleventh pass). The answer
    depends only on the function (a bound method's: its `__func__`), so it is kept per function.
    """

    def _verify_accept_kwargs(self, func: Any) -> Any:
        key = getattr(func, "__func__", func)
        try:
            known = _ACCEPTS_KWARGS.get(key)
        except TypeError:  # not weakly referenceable (a callable object): botocore's check
            return super()._verify_accept_kwargs(func)
        if known is None:
            super()._verify_accept_kwargs(func)  # raises ValueError when it takes no **kwargs
            _ACCEPTS_KWARGS[key] = True
        return None


_ALIASES: dict[str, str] = {}
"""Event name -> its aliased name, for every client of the model session (see below)."""


class _SharedAliases(EventAliaser):
    """botocore's event-name aliaser with one name cache for every client it is copied into.

    Why: botocore copies the session's aliaser into each new client with an empty cache, and the
    client's hundreds of `register` calls and its first `emit` of each event then walk the ~200
    alias rules again: 15 % of an activation's GIL time at 200 new customers (py-spy,
    docs/performance.md, eleventh pass). The alias of a name depends only on the name and the
    rules, which are botocore's constant `EVENT_ALIASES` here, so one cache is exact.
    """

    def __init__(self, event_emitter: Any) -> None:
        super().__init__(event_emitter, EVENT_ALIASES)
        self._alias_name_cache = _ALIASES

    def __copy__(self) -> _SharedAliases:
        return _SharedAliases(copy.copy(self._emitter))


_UA_PARTS: dict[Any, Any] = {}
"""(the inputs botocore keys them by, the process's platform) -> a User-Agent's static parts."""


class _SharedUserAgent(UserAgentString):
    """botocore's User-Agent builder, its request-independent parts built once per process.

    Why: botocore caches those parts per client, so each new client renders and sanitises the
    same platform, language and config components again: 12 % of an activation's GIL time at
    200 new customers (py-spy, docs/performance.md, eleventh pass). They depend only on the
    inputs botocore itself checks its cache against plus the platform fields, all in the key.
    """

    def _build_static_parts(self, inputs: Any) -> Any:
        platform = (
            self._platform_name,
            self._platform_version,
            self._platform_machine,
            self._python_version,
            self._python_implementation,
            self._execution_env,
            self._crt_version,
        )
        try:
            key = (inputs, platform)
            parts = _UA_PARTS.get(key)
        except TypeError:  # an unhashable input: botocore's own way
            return super()._build_static_parts(inputs)
        if parts is None:
            parts = super()._build_static_parts(inputs)
            if len(_UA_PARTS) < 64:  # serve uses a few configs; never grow without bound
                _UA_PARTS[key] = parts
        return parts


class _ModelSession(botocore.session.Session):
    """The process-wide session: models, endpoint data and exception classes, parsed once.

    `create_client` takes the credentials of the identity being served (botocore itself only
    takes static keys there), so no identity ever needs a Session of its own.
    """

    def __init__(self) -> None:
        super().__init__(event_hooks=_CheckedOnce())
        # The same hooks (builtin handlers included), behind an aliaser with a shared cache.
        self._events = _SharedAliases(self._original_handler)
        self._components.register_component("event_emitter", self._events)
        if callable(getattr(UserAgentString, "_build_static_parts", None)):
            self._components.register_component(
                "user_agent_creator", _SharedUserAgent.from_environment()
            )
        self._creating_for = threading.local()
        self.creation_lock = threading.Lock()  # botocore sessions are not thread-safe

    def get_credentials(self) -> Any:
        return getattr(self._creating_for, "credentials", None)

    def client_for(
        self,
        credentials: Any,
        service: str,
        region: str | None,
        endpoint_url: str | None,
        config: Config | None,
    ) -> BaseClient:
        if config is None or config.proxies is None:
            config = _without_proxy_lookup(config)
        with self.creation_lock:
            self._creating_for.credentials = credentials
            try:
                return self.create_client(
                    service, region_name=region, endpoint_url=endpoint_url, config=config
                )
            finally:
                self._creating_for.credentials = None

    def share_with(self, other: botocore.session.Session) -> botocore.session.Session:
        """Give `other` (e.g. a profile's session) this session's parsed models."""
        for name in _SHARED_COMPONENTS:
            other.register_component(name, self.get_component(name))
        for name in _SHARED_INTERNAL:
            other._internal_components.register_component(name, self._get_internal_component(name))
        return other


@functools.cache
def _environment_has_proxies() -> bool:
    """Whether the process environment names any proxy (read once: serve never changes it)."""
    return bool(urllib.request.getproxies_environment())


_NO_PROXIES = Config(proxies={})


def _without_proxy_lookup(config: Config | None) -> Config | None:
    """`config` with `proxies={}` when the environment names no proxy: botocore would find
    exactly that, after decoding the whole environment for every client (8 % of serve's GIL
    time while 1,000 new customers activated). With a proxy configured, botocore decides per
    endpoint URL (NO_PROXY), as before."""
    if _environment_has_proxies():
        return config
    return _NO_PROXIES if config is None else _merged_without_proxies(config)


@functools.lru_cache(maxsize=64)
def _merged_without_proxies(config: Config) -> Config:
    return config.merge(_NO_PROXIES)  # cached by identity: serve uses a few module-level configs


_model_session: _ModelSession | None = None
_model_lock = threading.Lock()


def model_session() -> _ModelSession:
    """The one session whose loader every client of this process shares (and, through
    `client_sharing`, its parsed endpoint rulesets and client classes)."""
    global _model_session
    with _model_lock:
        if _model_session is None:
            client_sharing.install()
            _model_session = _ModelSession()
        return _model_session


@dataclass
class AwsTarget:
    """Where AWS calls go: `endpoint_url` (the vendor's: one URL for every service, e.g. the
    emulator) and per-service overrides a *customer* chose (`service_endpoints["s3"]` for an
    S3-compatible `domain`). Clients for a customer's URL get `DOMAIN_CONFIG` and, unless
    `allow_private_domain`, the address guard on every connection (aws/address_guard.py)."""

    endpoint_url: str | None = None
    service_endpoints: dict[str, str] = field(default_factory=dict)
    allow_private_domain: bool = False
    """`aws.allow_private_domain`: a customer URL may reach loopback/private addresses."""

    def url_for(self, service: str) -> str | None:
        return self.service_endpoints.get(service, self.endpoint_url)

    def customer_url(self, service: str) -> str | None:
        """The customer-chosen URL of `service`, if any (None: AWS or the vendor's URL)."""
        return self.service_endpoints.get(service)

    def guarded(self, service: str) -> bool:
        """Whether connections for `service` must pass the address guard."""
        return service in self.service_endpoints and not self.allow_private_domain


class IdentitySession:
    """What callers used from a boto3 Session: `client()`, `get_credentials()`, `region_name`,
    without a Session per identity."""

    def __init__(self, owner: AwsClients) -> None:
        self._owner = owner

    @property
    def region_name(self) -> str | None:
        return self._owner.default_region

    def get_credentials(self) -> Any:
        return self._owner.credentials

    def client(
        self,
        service: str,
        region_name: str | None = None,
        *,
        endpoint_url: str | None = None,
        config: Config | None = None,
    ) -> BaseClient:
        return self._owner.make_client(
            service, region_name, endpoint_url=endpoint_url, config=config
        )


class AwsClients:
    """Clients for one identity (static, or refreshable credentials from the STS broker).

    With credentials, clients come from the shared model session; without (the CLI), the
    standard chain of `profile` resolves them in a session of its own that borrows the models.
    """

    def __init__(
        self,
        credentials: Credentials | None = None,
        target: AwsTarget | None = None,
        *,
        profile: str | None = None,
        config: Config | None = None,
    ) -> None:
        self._target = target or AwsTarget()
        self._config = config or DEFAULT_CONFIG
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], BaseClient] = {}
        # Refreshable credentials are shared by reference: every client sees each refresh.
        self._credentials: Any = credentials
        self._chain: botocore.session.Session | None = None
        if credentials is None or profile is not None:
            self._chain = model_session().share_with(botocore.session.Session(profile=profile))
            if profile is not None:
                self._chain.get_scoped_config()  # a missing profile fails here (ProfileNotFound)
            if credentials is not None:
                self._chain._credentials = credentials

    @property
    def session(self) -> IdentitySession:
        return IdentitySession(self)

    @property
    def credentials(self) -> Any:
        if self._chain is not None:
            return self._chain.get_credentials()
        return self._credentials

    @property
    def default_region(self) -> str | None:
        core = self._chain or model_session()
        region = core.get_config_variable("region")
        return str(region) if region else None

    def client(self, service: str, region: str, *, config: Config | None = None) -> BaseClient:
        """A cached client; pass `config` for a one-off client with other timeouts/retries."""
        if config is not None:
            return self.make_client(service, region, config=config)
        key = (service, region)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                self._cache[key] = cached = self.make_client(service, region)
            return cached

    def cached_clients(self) -> int:
        with self._lock:
            return len(self._cache)

    def close(self) -> None:
        """Drop the cached clients and their connection pools (the identity went idle)."""
        with self._lock:
            clients, self._cache = list(self._cache.values()), {}
        for client in clients:
            client.close()

    @property
    def target(self) -> AwsTarget:
        return self._target

    def check_customer_url(self, service: str) -> None:
        """Resolve the customer's URL for `service` and check every address (no connection);
        DomainRefused when one is inside, OSError when the name does not resolve. No-op for
        AWS, the vendor's URLs and with `allow_private_domain`."""
        url = self._target.customer_url(service)
        if url is not None and self._target.guarded(service):
            address_guard.DEFAULT_GUARD.check_domain(url)

    def make_client(
        self,
        service: str,
        region: str | None,
        *,
        endpoint_url: str | None = None,
        config: Config | None = None,
    ) -> BaseClient:
        """A new, uncached client; `endpoint_url` defaults to the target's URL for `service`.

        A customer's URL (the target's, not an explicit `endpoint_url`) gets `DOMAIN_CONFIG` and
        the address guard: one place, so delivery and every probe connect the same way.
        """
        customer = endpoint_url is None and self._target.customer_url(service) is not None
        url = endpoint_url or self._target.url_for(service)
        config = config or self._config
        if customer:
            config = _with_domain_config(config)
        if self._chain is not None:
            client = self._chain.create_client(
                service,
                region_name=region,
                endpoint_url=url,
                config=config,
            )
        else:
            client = model_session().client_for(self._credentials, service, region, url, config)
        if customer and self._target.guarded(service):
            address_guard.install(client)
        return client


@functools.lru_cache(maxsize=16)
def _with_domain_config(config: Config) -> Config:
    return config.merge(DOMAIN_CONFIG)  # cached by identity, as _merged_without_proxies
