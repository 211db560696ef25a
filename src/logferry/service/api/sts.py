"""GET /v1/sts/regions: the vendor's STS regions and their health, as the console shows it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, Depends

from logferry.service.api.auth import Auth
from logferry.service.runtime import Service


def own_sts_errors(store: Any, customer_id: str, regions: list[str]) -> dict[str, str]:
    """Per STS region, the customer's newest AssumeRole error that names it (from its own
    endpoints' stored errors; reads SQLite, so call it in a thread).

    The broker's per-region `last_error` is whoever failed last there: another tenant's role,
    and its account ID in a RegionDisabledException. A customer sees only what its own roles
    caused: "AssumeRole ARN via STS REGION failed: …" and "no STS region could issue
    credentials for ARN (REGION: CODE; …)" are the broker's messages for them.
    """
    found: dict[str, tuple[float, str]] = {}
    patterns = {r: re.compile(rf"(?<![\w-]){re.escape(r)}(?![\w-])") for r in regions}
    for endpoint in store.list_endpoints(customer_id):
        for error in store.errors(endpoint.uid_prefix):
            message = str(error.get("message") or "")
            if "STS " not in message:
                continue
            for region, pattern in patterns.items():
                if pattern.search(message) and error["time"] > found.get(region, (0.0, ""))[0]:
                    found[region] = (error["time"], f"{error['code']}: {message}")
    return {region: text for region, (_, text) in found.items()}


def sts_router(service: Service, auth: Auth) -> APIRouter:
    """Any valid token may read it; a customer sees only the errors its own roles caused."""
    router = APIRouter()

    @router.get(
        "/v1/sts/regions",
        tags=["console"],
        summary="The vendor's STS regions and their health (any valid token). `last_error`: "
        "the admin sees the region's last error whoever caused it; a customer only its own "
        "endpoints' latest AssumeRole error naming that region (errors can name AWS accounts).",
    )
    async def sts_regions(who: Any = Depends(auth.principal)) -> list[dict[str, Any]]:
        health = service.broker.region_health()
        regions = list(service.config.vendor.sts_regions)
        own: dict[str, str] = {}
        if not who.admin:
            own = await asyncio.to_thread(own_sts_errors, service.store, who.customer_id, regions)
        out = []
        for region in regions:
            h = health.get(region, {"healthy": True, "failures": 0, "last_error": None})
            out.append(
                {
                    "region": region,
                    "healthy": bool(h["healthy"]),
                    "failures": h["failures"],
                    "last_error": h["last_error"] if who.admin else own.get(region),
                }
            )
        return out

    return router
