"""Customers of the running service: external IDs, create/update with their limits, and the
role check of an endpoint before it is stored (part of `service.runtime.Service`)."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from logferry.aws.clients import AwsTarget
from logferry.aws.role_check import Report
from logferry.aws.sts_broker import CredentialBroker
from logferry.errors import InputError
from logferry.service.config import ServiceConfig
from logferry.service.endpoint_changes import UnknownEndpoint
from logferry.service.endpoints import EndpointModel
from logferry.service.records import CustomerRecord, EndpointRecord
from logferry.service.registry import StateStore
from logferry.sinks.registry import factory

if TYPE_CHECKING:
    from logferry.service.worker import EndpointWorker


class CustomerRecords:
    config: ServiceConfig
    store: StateStore
    broker: CredentialBroker
    aws_target: AwsTarget

    if TYPE_CHECKING:  # provided by TenantLimits and Service

        def _apply_limits(self, record: CustomerRecord) -> None: ...

        def worker(self, customer_id: str, name: str) -> EndpointWorker: ...

    def new_external_id(self, customer_id: str) -> str:
        """The default external ID; never one that was ever bound before (tombstones)."""
        if self.config.vendor.external_id_mode == "customer_id":
            if not self.store.external_id_bound(customer_id):
                return customer_id
            # A re-created customer id: the deleted tenant's roles still trust the old ID.
            return f"{customer_id[:64]}-{secrets.token_urlsafe(12)}"
        return f"{self.config.vendor.name[:16]}-{secrets.token_urlsafe(24)}"

    def put_customer(
        self,
        customer_id: str,
        external_id: str | None = None,
        limits: dict[str, Any] | None = None,
    ) -> tuple[CustomerRecord, bool]:
        """Create (or update the limits of) a customer; raises ExternalIdTaken on reuse.
        Blocks on SQLite: for start-up and tools; the API's routes use `save_customer`."""
        record, new = self._store_customer(customer_id, external_id, limits)
        self._apply_limits(record)
        return record, new

    def put_customers(
        self, items: list[tuple[str, str | None, dict[str, Any] | None]]
    ) -> list[tuple[CustomerRecord, bool]]:
        """`put_customer` for many `(customer_id, external_id, limits)` in one registry batch
        (start-up: the config's customers)."""
        batch = [
            (customer_id, self._external_id_for(customer_id, external_id), limits)
            for customer_id, external_id, limits in items
        ]
        results = self.store.put_customers(batch)
        for record, _ in results:
            self._apply_limits(record)
        return results

    async def save_customer(
        self,
        customer_id: str,
        external_id: str | None = None,
        limits: dict[str, Any] | None = None,
    ) -> tuple[CustomerRecord, bool]:
        """`put_customer` for the event loop: the SQLite work runs on a thread."""
        record, new = await asyncio.to_thread(
            self._store_customer, customer_id, external_id, limits
        )
        self._apply_limits(record)
        return record, new

    def _store_customer(
        self, customer_id: str, external_id: str | None, limits: dict[str, Any] | None
    ) -> tuple[CustomerRecord, bool]:
        return self.store.put_customer(
            customer_id, self._external_id_for(customer_id, external_id), limits
        )

    def _external_id_for(self, customer_id: str, external_id: str | None) -> str:
        """The given one; a new one for a new customer given none ("" keeps an existing
        customer's: the store never changes it)."""
        if external_id is None and self.store.get_customer(customer_id) is None:
            external_id = self.new_external_id(customer_id)
        return external_id or ""

    def no_customer(self, record: EndpointRecord) -> str:
        """Fail closed when an endpoint's customer record is missing: never guess the ID."""
        raise InputError(
            "customer",
            f"customer {record.customer_id!r} of endpoint {record.name!r} has no record: "
            "no external ID, so no role is assumed.",
            fix=f"Re-create the endpoint under PUT /v1/customers/{record.customer_id}.",
        )

    def verify(self, customer_id: str, type_: str, model: EndpointModel) -> Report:
        customer = self.store.get_customer(customer_id)
        if customer is None:  # fail closed: never guess an external ID
            raise UnknownEndpoint(
                "customer",
                f"no customer {customer_id!r}.",
                fix=f"Create it: PUT /v1/customers/{customer_id}",
            )
        return factory(type_).verify(
            model,
            broker=self.broker,
            external_id=customer.external_id,
            customer_id=customer_id,
            aws_target=self.aws_target,
        )

    def remember_verified(self, record: EndpointRecord, report: Report) -> None:
        """A role check whose write probe passed for this stored endpoint stands in for the
        worker's own probe (the same calls, headers and destination): no second probe."""
        if report.write_proven():
            worker = self.worker(record.customer_id, record.name)
            worker.remember_setup_proof(record, report.external_id)
