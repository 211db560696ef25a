"""A customer's endpoints: PUT/GET/DELETE, list, verify (the role check) and status."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, Response

from logferry.service.api.auth import Auth
from logferry.service.endpoints import (
    check_customer_id,
    check_endpoint_name,
    endpoint_document,
    parse_endpoint,
)
from logferry.service.ingest_route import Principal, problem, too_many
from logferry.service.logs import log
from logferry.service.runtime import Service
from logferry.service.timestamps import shape_times

logger = logging.getLogger("logferry.api")


def endpoints_router(service: Service, auth: Auth) -> APIRouter:
    """Saving an endpoint runs the role check first (a customer cannot skip it)."""
    router = APIRouter()
    customer_or_admin = auth.customer_or_admin

    @router.put(
        "/v1/customers/{customer_id}/endpoints/{name}",
        tags=["endpoints"],
        summary="Create or replace an endpoint (admin, or the customer's own token); runs the role "
        "check first; only the admin may skip it with verify=false.",
    )
    async def put_endpoint(
        customer_id: str,
        name: str,
        body: dict[str, Any] = Body(
            ...,
            examples=[
                {
                    "type": "s3",
                    "bucket_name": "my-logs",
                    "path": "cdn/",
                    "iam_role": "arn:aws:iam::123456789012:role/logferry-s3-logging",
                    "period": 300,
                    "gzip_level": 3,
                }
            ],
        ),
        verify: bool = Query(
            True, description="Run `role check` before accepting (only the admin may skip it)."
        ),
        who: Principal = Depends(customer_or_admin),
    ) -> Any:
        if not who.admin and not verify:
            raise HTTPException(403, "only the admin token may skip the role check (verify=false)")
        check_customer_id(customer_id)
        check_endpoint_name(name)
        if await asyncio.to_thread(service.store.get_customer, customer_id) is None:
            raise HTTPException(
                404, f"no customer {customer_id!r}: PUT /v1/customers/{customer_id} first"
            )
        type_, model = parse_endpoint(name, body, **service.endpoint_rules)
        if not who.admin:  # a customer's own change runs the role check: rate-limited
            wait = service.verify_wait(customer_id)
            if wait > 0:
                return too_many(
                    f"customer {customer_id!r} ran the role check too often "
                    f"(server.verify_per_minute = {service.config.server.verify_per_minute:g})",
                    wait,
                    "each check assumes the role in every STS region",
                )
        report = None
        if (verify and service.config.server.verify_on_change) or not who.admin:
            report = await asyncio.to_thread(service.verify, customer_id, type_, model)
            if not report.ok:
                return problem(
                    422,
                    f"the role check failed for {model.iam_role}: {report.summary()}",
                    "fix the role (see `logferry role check`), or retry with ?verify=false",
                    report=report.as_json(),
                )
        record, new = await service.save_endpoint(customer_id, name, type_, model)
        if report is not None:
            service.remember_verified(record, report)
        log(
            logger,
            logging.INFO,
            "endpoint saved",
            customer=customer_id,
            endpoint=name,
            type=type_,
            new=new,
        )
        return JSONResponse(endpoint_document(type_, model), status_code=201 if new else 200)

    @router.get("/v1/customers/{customer_id}/endpoints", tags=["endpoints"])
    async def list_endpoints(
        customer_id: str, _: Principal = Depends(customer_or_admin)
    ) -> list[dict[str, Any]]:
        return [
            endpoint_document(record.type, model)
            for (c, _n), (record, model) in sorted(service.endpoints.items())
            if c == customer_id
        ]

    @router.get("/v1/customers/{customer_id}/endpoints/{name}", tags=["endpoints"])
    async def get_endpoint(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> dict[str, Any]:
        record, model = service.endpoint(customer_id, name)
        return endpoint_document(record.type, model)

    @router.delete(
        "/v1/customers/{customer_id}/endpoints/{name}", status_code=204, tags=["endpoints"]
    )
    async def delete_endpoint(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> Response:
        if not await service.delete_endpoint(customer_id, name):
            raise HTTPException(404, f"customer {customer_id!r} has no endpoint {name!r}")
        return Response(status_code=204)

    @router.post("/v1/customers/{customer_id}/endpoints/{name}/verify", tags=["endpoints"])
    async def verify_endpoint(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> Any:
        record, model = service.endpoint(customer_id, name)
        wait = service.verify_wait(customer_id)
        if wait > 0:
            return too_many(
                f"customer {customer_id!r} called verify too often "
                f"(server.verify_per_minute = {service.config.server.verify_per_minute:g})",
                wait,
                "each verify assumes the role in every STS region",
            )
        report = await asyncio.to_thread(service.verify, customer_id, record.type, model)
        if report.ok:
            service.broker.forget(model.iam_role)
            service.remember_verified(record, report)
            service.worker(customer_id, name).notify()  # retry now if it was in error
        return report.as_json()

    @router.get("/v1/customers/{customer_id}/endpoints/{name}/status", tags=["endpoints"])
    async def endpoint_status(
        customer_id: str, name: str, _: Principal = Depends(customer_or_admin)
    ) -> dict[str, Any]:
        # On the loop: a 404 for an unknown endpoint, or its worker made here, not in the thread.
        if (customer_id, name) not in service.invalid:
            service.worker(customer_id, name)
        return shape_times(await asyncio.to_thread(service.endpoint_status, customer_id, name))

    return router
