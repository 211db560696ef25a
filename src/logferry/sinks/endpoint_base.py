"""What every endpoint model shares: its name, the customer's role, and no static keys.

Fastly's endpoints also accept an access key pair; logferry deliberately never does (the whole
point is the cross-account role), so those fields are refused with a pointer to `iam_role`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from logferry.aws.names import parse_role_arn
from logferry.errors import InputError

NAME_MAX: Final = 100
CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
CREDENTIAL_FIELDS: Final = (
    "access_key",
    "secret_key",
    "aws_access_key_id",
    "aws_secret_access_key",
)


def as_value_error(exc: InputError) -> ValueError:
    """pydantic shows the field path itself; keep only our message and fix."""
    return ValueError(f"{exc.message} {exc.fix}" if exc.fix else exc.message)


class EndpointBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    name: str
    """Endpoint name (Fastly's `name`); the syslog service name in framed lines."""
    iam_role: str
    """The customer's role ARN (trusts the vendor account with the customer's external ID)."""

    @classmethod
    def destination_of(cls, body: Mapping[str, Any]) -> str:
        """Where an endpoint body of this type delivers, in one short line for listings (the
        operator CLI's `endpoints list`); read from the body as the API returns it, unvalidated."""
        return "-"

    @model_validator(mode="before")
    @classmethod
    def _no_static_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [f for f in CREDENTIAL_FIELDS if f in data]
            if given:
                raise ValueError(
                    f"{', '.join(given)} given: logferry never takes the customer's access keys. "
                    "Remove them and set iam_role to the role the customer created (logferry "
                    "role policies / role create)."
                )
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not 1 <= len(value) <= NAME_MAX:
            raise ValueError(
                f"is {len(value)} characters long; endpoint names are 1-{NAME_MAX} characters."
            )
        if CONTROL_RE.search(value) or "/" in value:
            raise ValueError(
                f"{value!r} contains a control character or '/'. Use letters, digits, spaces "
                "and punctuation other than '/' (the name appears in URLs and partition keys)."
            )
        return value

    @field_validator("iam_role")
    @classmethod
    def _check_role(cls, value: str) -> str:
        try:
            return parse_role_arn(value).arn
        except InputError as exc:
            raise as_value_error(exc) from None
