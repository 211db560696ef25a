"""One exception tree for the whole product.

Modelled on httpx's tree: a single root (`LogferryError`) and a hard split between errors the
*customer or operator must fix* (`SetupError`: never retried, always shown with the fix) and
*transient* ones (`TransientError`: retried with backoff and counted). Callers decide what to do
from the class alone; the AWS code, region and fix travel with the exception so status pages,
metrics and CLI output never have to re-parse messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class LogferryError(Exception):
    """Root of every error logferry raises on purpose."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}" if self.fix else self.message


class InputError(LogferryError, ValueError):
    """A value given by a user (flag, config key, API field) is invalid.

    `where` names the flag / key path / field so the message points at the exact input.
    """

    def __init__(self, where: str, message: str, *, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.where = where

    def __str__(self) -> str:
        base = f"{self.where}: {self.message}"
        return f"{base} {self.fix}" if self.fix else base


@dataclass
class AwsErrorInfo:
    """What we know about one failed AWS call."""

    code: str
    message: str = ""
    service: str = ""
    operation: str = ""
    region: str | None = None
    http_status: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


class AwsError(LogferryError):
    """An AWS call failed; carries the AWS error code, region and a one-sentence fix."""

    def __init__(self, message: str, info: AwsErrorInfo, *, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.info = info

    @property
    def code(self) -> str:
        return self.info.code

    @property
    def region(self) -> str | None:
        return self.info.region


class SetupError(AwsError):
    """The customer's (or operator's) AWS setup is wrong: never retried, shown with its fix."""


class TransientError(AwsError):
    """A failure that may go away by itself (network, 5xx, throttling): retried and counted."""


class RegionUnavailableError(TransientError):
    """One STS region could not issue credentials (down, throttled or not activated)."""
