"""A customer's bearer tokens: issue, list, revoke (admin only)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from logferry.service.api.auth import Auth
from logferry.service.ingest_route import Principal, problem
from logferry.service.records import ConfigToken
from logferry.service.runtime import Service
from logferry.service.timestamps import shape_times


class TokenOut(BaseModel):
    id: str
    token: str = Field(description="Shown once; only its hash is stored.")


def tokens_router(service: Service, auth: Auth) -> APIRouter:
    """Tokens are stored as hashes; a config token is the config's to revoke."""
    router = APIRouter()
    admin = auth.admin

    @router.post(
        "/v1/customers/{customer_id}/tokens",
        status_code=201,
        response_model=TokenOut,
        tags=["customers"],
    )
    async def issue_token(customer_id: str, _: Principal = Depends(admin)) -> Any:
        if await asyncio.to_thread(service.store.get_customer, customer_id) is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        token_id, token = await asyncio.to_thread(service.store.issue_token, customer_id)
        return TokenOut(id=token_id, token=token)

    @router.get("/v1/customers/{customer_id}/tokens", tags=["customers"])
    async def list_tokens(customer_id: str, _: Principal = Depends(admin)) -> list[dict[str, Any]]:
        return shape_times(await asyncio.to_thread(service.store.list_tokens, customer_id))

    @router.delete(
        "/v1/customers/{customer_id}/tokens/{token_id}", status_code=204, tags=["customers"]
    )
    async def revoke_token(
        customer_id: str, token_id: str, _: Principal = Depends(admin)
    ) -> Response:
        try:
            revoked = await asyncio.to_thread(service.store.revoke_token, customer_id, token_id)
        except ConfigToken:
            # The config is the truth for its tokens: a revocation here would come undone at
            # the next start (reconcile_static_tokens), so it is refused rather than faked.
            return problem(
                409,
                f"this token comes from the config ([[customers]] id={customer_id}): "
                "remove or rotate it there",
                "change the customer's token_env / token_file (or remove it) in the config "
                "file and restart or reload `logferry serve`; the old token stops working then",
            )
        if not revoked:
            raise HTTPException(404, f"no active token {token_id!r} for {customer_id!r}")
        return Response(status_code=204)

    return router
