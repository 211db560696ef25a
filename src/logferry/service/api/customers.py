"""Customers: PUT/GET/DELETE /v1/customers/{customer_id}, GET /v1/customers (admin)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from logferry.aws.policies import trust_policy
from logferry.service.api.auth import Auth
from logferry.service.config import CustomerLimits
from logferry.service.endpoints import check_customer_id
from logferry.service.ingest_route import Principal, problem
from logferry.service.records import ExternalIdTaken
from logferry.service.runtime import Service
from logferry.service.timestamps import rfc3339


class CustomerBody(CustomerLimits):
    model_config = ConfigDict(extra="forbid")
    external_id: str | None = Field(
        None,
        description="Override the external ID (default: per vendor.external_id_mode). "
        "2-1224 characters of letters, digits and _+=,.@:/-",
        min_length=2,
        max_length=1224,
        pattern=r"^[\w+=,.@:/-]+$",
    )


class CustomerOut(BaseModel):
    id: str
    external_id: str
    created: str = Field(description="RFC 3339 UTC, e.g. 2026-11-30T05:01:02.123Z")
    spool_max_bytes: int | None = Field(None, description="This customer's spool quota.")
    ingest_rate_bytes: float | None = None
    ingest_rate_lines: float | None = None
    endpoints: list[str] = []
    trust_policies: dict[str, Any] = Field(
        default_factory=dict,
        description="The trust policy the customer's role needs, per destination type.",
    )
    trust_policy_hint: str = ""
    vendor_account: str = Field("", description="The AWS account the role must trust.")


def customers_router(service: Service, auth: Auth) -> APIRouter:
    """A customer's record, its external ID and the trust policy its role needs."""
    router = APIRouter()
    admin, customer_or_admin = auth.admin, auth.customer_or_admin

    def _customer_out(customer_id: str) -> CustomerOut:
        """Reads SQLite: call it through asyncio.to_thread."""
        record = service.store.get_customer(customer_id)
        if record is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        names = sorted(n for (c, n) in service.endpoints if c == customer_id)
        hint = (
            f"logferry role create --external-id {record.external_id} --vendor-account "
            f"{service.config.vendor.account_id} (--bucket B | --stream-arn ARN)"
        )
        vendor = service.config.vendor.account_id
        assert vendor is not None  # serve sets it from GetCallerIdentity before the API serves
        policies = {
            kind: trust_policy(kind, record.external_id, vendor) for kind in ("s3", "kinesis")
        }
        return CustomerOut(
            spool_max_bytes=record.spool_max_bytes,
            ingest_rate_bytes=record.ingest_rate_bytes,
            ingest_rate_lines=record.ingest_rate_lines,
            trust_policies=policies,
            id=record.id,
            external_id=record.external_id,
            created=rfc3339(record.created),
            endpoints=names,
            trust_policy_hint=hint,
            vendor_account=vendor,
        )

    @router.put("/v1/customers/{customer_id}", response_model=CustomerOut, tags=["customers"])
    async def put_customer(
        customer_id: str, body: CustomerBody | None = Body(None), _: Principal = Depends(admin)
    ) -> Any:
        check_customer_id(customer_id)
        limits = body.limits() if body else {}
        try:
            record, new = await service.save_customer(
                customer_id, body.external_id if body else None, limits
            )
        except ExternalIdTaken as exc:
            return problem(
                409,
                str(exc),
                "choose another external_id (or leave it out to get a fresh one)",
            )
        out = await asyncio.to_thread(_customer_out, record.id)
        return JSONResponse(out.model_dump(), status_code=201 if new else 200)

    @router.get("/v1/customers", tags=["customers"])
    async def list_customers(_: Principal = Depends(admin)) -> list[CustomerOut]:
        def listing() -> list[CustomerOut]:
            return [_customer_out(c.id) for c in service.store.list_customers()]

        return await asyncio.to_thread(listing)

    @router.get("/v1/customers/{customer_id}", response_model=CustomerOut, tags=["customers"])
    async def get_customer(customer_id: str, _: Principal = Depends(customer_or_admin)) -> Any:
        return await asyncio.to_thread(_customer_out, customer_id)

    @router.delete("/v1/customers/{customer_id}", status_code=204, tags=["customers"])
    async def delete_customer(customer_id: str, _: Principal = Depends(admin)) -> Response:
        if await asyncio.to_thread(service.store.get_customer, customer_id) is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        await service.delete_customer(customer_id)
        return Response(status_code=204)

    return router
