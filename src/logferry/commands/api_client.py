"""Talking to a running `logferry serve` from the CLI: where it is, which token, what failed.

Shared by `logferry admin` (admin token) and `logferry send` (customer token) so both resolve
`--url` / `--token-env` / `--profile` the same way and turn HTTP failures into the CLI's usual
one sentence + fix (exit 1), while bad flags stay input errors (exit 2).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer

from logferry.errors import InputError, LogferryError

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "LOGFERRY_URL"
ADMIN_TOKEN_ENV = "LOGFERRY_ADMIN_TOKEN"
CUSTOMER_TOKEN_ENV = "LOGFERRY_TOKEN"
PROFILE_FILE_ENV = "LOGFERRY_PROFILE_FILE"
DEFAULT_PROFILE_FILE = "~/.config/logferry/admin.toml"

UrlOption = typer.Option(
    None,
    "--url",
    help=f"Base URL of `logferry serve` (default: ${URL_ENV}, else {DEFAULT_URL}). An https:// "
    "server whose certificate comes from a private CA: set SSL_CERT_FILE to that CA's PEM file.",
    show_default=False,
)
ApiProfileOption = typer.Option(
    None,
    "--profile",
    help=f"A \\[section] of the profile file ({DEFAULT_PROFILE_FILE}, or ${PROFILE_FILE_ENV}) "
    "giving url and token_env or token_file.",
)


class ApiError(LogferryError):
    """The server answered with an error (or could not be reached): exit 1 with its message."""

    def __init__(
        self, message: str, *, fix: str | None = None, status: int | None = None, body: Any = None
    ) -> None:
        super().__init__(message, fix=fix)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ApiTarget:
    """A server URL and the bearer token to present to it."""

    url: str
    token: str
    token_source: str  # "$NAME" or a file path: named in 401 messages, never the token itself


def _profile(name: str) -> dict[str, Any]:
    path = Path(os.environ.get(PROFILE_FILE_ENV) or DEFAULT_PROFILE_FILE).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            "--profile",
            f"profile file {path} does not exist.",
            fix=f'Create it with a [{name}] table: url = "...", token_env = "..." '
            f"(or set ${PROFILE_FILE_ENV}).",
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError("--profile", f"cannot read {path}: {exc}.") from None
    section = data.get(name)
    if not isinstance(section, dict):
        known = ", ".join(sorted(k for k, v in data.items() if isinstance(v, dict))) or "none"
        raise InputError(
            "--profile", f"no [{name}] in {path} (profiles: {known}).", fix="Pick one of them."
        )
    unknown = set(section) - {"url", "token_env", "token_file"}
    if unknown:
        raise InputError(
            "--profile",
            f"[{name}] in {path} has unknown keys {sorted(unknown)}.",
            fix="Use url, token_env or token_file (tokens are never stored inline).",
        )
    return section


def resolve_target(
    url: str | None,
    token_env: str | None,
    profile: str | None,
    *,
    default_token_env: str,
) -> ApiTarget:
    """Flags win over the profile, the profile over the environment, then the defaults."""
    section = _profile(profile) if profile else {}
    base = url or section.get("url") or os.environ.get(URL_ENV) or DEFAULT_URL
    flag = "--url" if url else ("--profile" if section.get("url") else "--url")
    if not base.startswith(("http://", "https://")):
        raise InputError(flag, f"{base!r} is not an http(s) URL.", fix=f"Use e.g. {DEFAULT_URL}.")
    if token_env is None and section.get("token_file"):
        path = Path(section["token_file"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InputError("--profile", f"cannot read token_file {path}: {exc}.") from None
        if not token:
            raise InputError("--profile", f"token_file {path} is empty.")
        return ApiTarget(base.rstrip("/"), token, str(path))
    env_name = token_env or section.get("token_env") or default_token_env
    token = os.environ.get(env_name, "").strip()
    if not token:
        raise InputError(
            "--token-env",
            f"${env_name} is not set (it must hold the bearer token).",
            fix=f"export {env_name}=<token>, or name another variable with --token-env.",
        )
    return ApiTarget(base.rstrip("/"), token, f"${env_name}")


def error_from_response(response: httpx.Response, target: ApiTarget) -> ApiError:
    """The server's own error text and fix, plus what to do for auth failures."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text.strip()
    message, fix = "", None
    if isinstance(body, dict):
        if "error" in body:
            message, fix = str(body["error"]), body.get("fix")
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
        elif isinstance(body.get("detail"), list):
            message = "; ".join(
                ".".join(str(p) for p in e.get("loc", []) if p not in ("body", "path"))
                + f": {e.get('msg')}"
                for e in body["detail"]
            )
    elif body:
        message = str(body)[:500]
    if not message:
        message = f"HTTP {response.status_code} {response.reason_phrase}"
    if response.status_code == 401 and not fix:
        fix = f"check the token in {target.token_source} (revoked, mistyped, or the wrong server)."
    elif response.status_code == 403 and not fix:
        fix = "use the admin token ([auth] admin_token_env of the server) for this command."
    method = response.request.method
    where = response.request.url.path
    return ApiError(
        f"{method} {where} → {response.status_code}: {message}",
        fix=fix,
        status=response.status_code,
        body=body,
    )


def unreachable(exc: httpx.HTTPError, target: ApiTarget) -> ApiError:
    return ApiError(
        f"cannot reach logferry at {target.url}: {exc.__class__.__name__}: {exc}",
        fix=tls_fix(exc, target.url)
        or f"start `logferry serve`, or point --url / ${URL_ENV} at it.",
    )


def tls_fix(exc: Exception, url: str) -> str | None:
    """What to do when `exc` is a TLS mismatch (httpx reads SSL_CERT_FILE / SSL_CERT_DIR when
    it verifies a server, so a private CA needs no flag of ours); None for anything else."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "the server's certificate is not signed by a CA this machine trusts: set "
            "SSL_CERT_FILE to the PEM file of the CA that signed it (server.tls.cert_file's "
            "issuer), e.g. SSL_CERT_FILE=ca.pem logferry …"
        )
    if url.startswith("https://") and "WRONG_VERSION_NUMBER" in text:
        return "the server speaks plain HTTP (no [server.tls]): use an http:// URL."
    if url.startswith("http://") and isinstance(exc, httpx.RemoteProtocolError):
        return "if the server has [server.tls], use an https:// URL."
    return None


class ApiClient:
    """A thin httpx client: JSON in and out, every failure an ApiError."""

    def __init__(self, target: ApiTarget, timeout: float = 120.0) -> None:
        self.target = target
        self.http = httpx.Client(
            base_url=target.url,
            headers={"Authorization": f"Bearer {target.token}"},
            timeout=timeout,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(exc, self.target) from None
        if response.is_success or response.status_code in ok:
            return response
        raise error_from_response(response, self.target)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()
