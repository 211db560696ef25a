"""Endpoint bodies of the management API: `{"type": <a registered destination>, ...fields}`.

The destination's own pydantic model (its `SinkFactory.model`, found through `sinks.registry`)
is the single source of truth for fields and validation; this module only dispatches on `type`
and turns validation errors into per-field messages.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from logferry.aws.address_guard import SETTING as PRIVATE_DOMAIN_SETTING
from logferry.aws.address_guard import domain_host, literal_refusal
from logferry.errors import LogferryError
from logferry.sinks.endpoint_base import EndpointBase
from logferry.sinks.registry import FACTORIES, factory

_ID_RE = re.compile(r"^[A-Za-z0-9_+=,.@:-]{2,128}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_+=,.@:-]{1,100}$")

EndpointModel = EndpointBase
"""Any destination's endpoint model (they all derive from `EndpointBase`)."""


class FieldError(LogferryError):
    """Per-field validation problems, shaped like FastAPI's 422 `detail` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def check_customer_id(customer_id: str) -> str:
    if not _ID_RE.match(customer_id):
        raise FieldError(
            [
                {
                    "loc": ["path", "customer_id"],
                    "msg": "customer IDs are 2-128 characters of letters, digits and _+=,.@:- "
                    "(they become the external ID, whose alphabet this is)",
                    "type": "value_error",
                }
            ]
        )
    return customer_id


def check_endpoint_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise FieldError(
            [
                {
                    "loc": ["path", "name"],
                    "msg": "endpoint names are 1-100 characters of letters, digits and _+=,.@:-",
                    "type": "value_error",
                }
            ]
        )
    return name


def check_domain(domain: Any, *, allow_http: bool) -> None:
    """An S3 `domain` is an https:// host name (or a bare one); http:// only when allowed.

    Plain http would send the customer's data and SigV4-signed requests in clear text; the
    emulator on loopback is the one place it is needed (`aws.allow_http_domain = true`).
    """
    if not isinstance(domain, str) or "://" not in domain:
        return  # a bare host: the sink model validates it and adds https://
    scheme = domain.partition("://")[0]
    host = urlsplit(domain).hostname
    if scheme.lower() == "https" and host:
        return
    if scheme.lower() == "http" and host and allow_http:
        return
    msg = (
        "must be an https:// host name (e.g. https://storage.example.com); http:// is refused "
        "unless the operator sets aws.allow_http_domain = true (an emulator on loopback)"
    )
    raise FieldError([{"loc": ["body", "domain"], "msg": msg, "type": "value_error"}])


def check_domain_address(domain: str, *, allow_private: bool) -> None:
    """A `domain` written as an address inside (or `localhost`) is refused unless allowed.

    Names are checked after resolution, at every connection (aws/address_guard.py); this
    catches every literal spelling up front, without a DNS lookup on the event loop.
    """
    if allow_private:
        return
    host, _ = domain_host(domain)
    reason = literal_refusal(host)
    if reason is None:
        return
    msg = (
        f"domain {host!r} is a {reason} address; an S3 domain must be a public host. It is "
        f"refused unless the operator sets {PRIVATE_DOMAIN_SETTING} = true (an emulator)"
    )
    raise FieldError([{"loc": ["body", "domain"], "msg": msg, "type": "value_error"}])


def parse_endpoint(
    name: str,
    body: dict[str, Any],
    *,
    allow_http_domain: bool = False,
    allow_private_domain: bool = False,
) -> tuple[str, EndpointModel]:
    """Validate an endpoint body; the URL's name wins and must match a `name` in the body."""
    if not isinstance(body, dict):
        raise FieldError([{"loc": ["body"], "msg": "must be a JSON object", "type": "type_error"}])
    fields = dict(body)
    type_ = fields.pop("type", None)
    if type_ not in FACTORIES:
        raise FieldError(
            [
                {
                    "loc": ["body", "type"],
                    "msg": f"must be one of {sorted(FACTORIES)} (got {type_!r})",
                    "type": "value_error",
                }
            ]
        )
    if fields.get("name", name) != name:
        raise FieldError(
            [
                {
                    "loc": ["body", "name"],
                    "msg": f"is {fields['name']!r} but the URL names {name!r}; drop it or match",
                    "type": "value_error",
                }
            ]
        )
    fields["name"] = name
    model_cls = FACTORIES[type_].model
    if "domain" in model_cls.model_fields and fields.get("domain") is not None:
        check_domain(fields["domain"], allow_http=allow_http_domain)
    try:
        model = model_cls.model_validate(fields)
    except ValidationError as exc:
        raise FieldError(
            [
                {
                    "loc": ["body", *exc_loc],
                    "msg": err["msg"].removeprefix("Value error, "),
                    "type": err["type"],
                }
                for err in exc.errors()
                for exc_loc in [list(err["loc"])]
            ]
        ) from None
    domain = getattr(model, "domain", None)
    if domain is not None:
        check_domain_address(domain, allow_private=allow_private_domain)
    return type_, model


def endpoint_document(type_: str, model: BaseModel) -> dict[str, Any]:
    return {"type": type_, **model.model_dump(mode="json", exclude_none=True)}


def stored_model(type_: str, name: str, config: dict[str, Any]) -> EndpointModel:
    """A stored endpoint's model; raises when its type is gone or its settings no longer
    validate (the service then keeps its data and shows it as invalid)."""
    return factory(type_).model.model_validate({**config, "name": name})
