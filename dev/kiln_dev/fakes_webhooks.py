"""In-memory ``kiln.ports.WebhookStore`` for unit tests (same semantics as the Firestore
adapter: create-if-absent, a ``decide`` that raises writes nothing)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Mapping
from typing import Any, TypeVar

from kiln.ports import DecideDelivery
from kiln.webhooks.model import Delivery, DeliveryState, Endpoint, Event, newest_first

T = TypeVar("T")


class InMemoryWebhookStore:
    def __init__(self) -> None:
        self.endpoints_by_id: dict[str, Endpoint] = {}
        self.secrets: dict[str, str] = {}
        self.events: dict[str, Event] = {}
        self.deliveries_by_id: dict[str, dict[str, Any]] = {}
        self.attempt_records: dict[str, dict[int, dict[str, Any]]] = {}
        self._lock = threading.RLock()

    def put_endpoint(self, endpoint: Endpoint, limit: int | None = None) -> bool:
        with self._lock:
            if limit is not None and len(self.endpoints(endpoint.tenant)) >= limit:
                return False
            self.endpoints_by_id[endpoint.id] = endpoint
            return True

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self.endpoints_by_id.get(endpoint_id)

    def endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        found = [e for e in self.endpoints_by_id.values() if tenant is None or e.tenant == tenant]
        return sorted(found, key=lambda e: (e.tenant, e.id))

    def delete_endpoint(self, endpoint_id: str) -> bool:
        return self.endpoints_by_id.pop(endpoint_id, None) is not None

    def disable_endpoint(self, endpoint_id: str, reason: str) -> None:
        endpoint = self.endpoints_by_id.get(endpoint_id)
        if endpoint is not None:
            self.endpoints_by_id[endpoint_id] = dataclasses.replace(endpoint, disabled=reason)

    def tenant_secret(self, tenant: str, new: str) -> str:
        with self._lock:
            return self.secrets.setdefault(tenant, new)

    def create_event(self, event: Event) -> bool:
        with self._lock:
            if event.id in self.events:
                return False
            self.events[event.id] = event
            return True

    def event(self, event_id: str) -> Event | None:
        return self.events.get(event_id)

    def create_delivery(self, delivery: Delivery) -> bool:
        with self._lock:
            if delivery.id in self.deliveries_by_id:
                return False
            self.deliveries_by_id[delivery.id] = delivery.to_doc()
            return True

    def delivery(self, delivery_id: str) -> Delivery | None:
        doc = self.deliveries_by_id.get(delivery_id)
        return None if doc is None else Delivery.from_doc(delivery_id, doc)

    def transact_delivery(self, delivery_id: str, decide: DecideDelivery[T]) -> T:
        with self._lock:
            fields, value = decide(self.delivery(delivery_id))
            if fields and delivery_id in self.deliveries_by_id:
                self.deliveries_by_id[delivery_id].update(fields)
            return value

    def deliveries(self, *, endpoint_id: str | None = None, event_id: str | None = None,
                   due_before: dt.datetime | None = None, limit: int = 100) -> list[Delivery]:
        found = [Delivery.from_doc(i, doc) for i, doc in self.deliveries_by_id.items()]
        found = [d for d in found
                 if (endpoint_id is None or d.endpoint_id == endpoint_id)
                 and (event_id is None or d.event_id == event_id)
                 and (due_before is None or (d.state is DeliveryState.PENDING
                                             and d.next_at is not None and d.next_at <= due_before))]
        return newest_first(found)[:limit]

    def add_attempt(self, delivery_id: str, number: int, record: Mapping[str, Any]) -> None:
        with self._lock:  # created once, as on Firestore
            self.attempt_records.setdefault(delivery_id, {}).setdefault(number, {
                **record, "deliveryId": delivery_id, "number": number})

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        found = self.attempt_records.get(delivery_id, {})
        return [found[n] for n in sorted(found)]
