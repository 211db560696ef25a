"""The HTTP surface on one port: ingest, management API (OpenAPI at /openapi.json), probes, metrics.

FastAPI because the management API is model-driven (pydantic bodies, 422 per-field errors and an
OpenAPI document for free); ingest reads the raw body stream itself so a large body is never
parsed twice and the 413 limit is enforced while reading, not after. `logferry serve` answers the
ingest route in plain ASGI in front of this app (service/ingest_route.py: a small request's CPU).

One module per resource, each an `APIRouter` (docs/architecture.md): auth.py (the bearer
token dependencies), probes.py (/healthz, /readyz, /metrics), ingest.py, customers.py, tokens.py,
endpoints.py, sts.py; the console's own routes are in service/console_api.py.
app.py's `create_app` composes them in a fixed order (the OpenAPI document depends on it).
"""

from __future__ import annotations

from logferry.service.api.app import create_app
from logferry.service.api.customers import CustomerBody, CustomerOut
from logferry.service.api.tokens import TokenOut

__all__ = ["CustomerBody", "CustomerOut", "TokenOut", "create_app"]
