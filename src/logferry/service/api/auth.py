"""The API's bearer-token dependencies: who a request is, and whether it may act."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request

from logferry.service.ingest_route import Principal, authenticate, check_owner
from logferry.service.runtime import Service


@dataclass(frozen=True)
class Auth:
    """FastAPI dependencies bound to one service: any valid token, the admin, or the owner."""

    principal: Callable[..., Awaitable[Principal]]
    admin: Callable[..., Awaitable[Principal]]
    customer_or_admin: Callable[..., Awaitable[Principal]]


def auth_for(service: Service) -> Auth:
    """The three dependencies every router shares (one set per app)."""

    async def principal(request: Request) -> Principal:
        return await authenticate(service, request.headers.get("authorization", ""))

    async def admin(who: Principal = Depends(principal)) -> Principal:
        if not who.admin:
            raise HTTPException(403, "this API needs the admin token")
        return who

    async def customer_or_admin(customer_id: str, who: Principal = Depends(principal)) -> Principal:
        check_owner(who, customer_id)
        return who

    return Auth(principal=principal, admin=admin, customer_or_admin=customer_or_admin)
