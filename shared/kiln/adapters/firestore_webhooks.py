"""Firestore adapter of ``kiln.ports.WebhookStore``: server-only collections.

``webhookEndpoints``, ``webhookSecrets``, ``webhookTenants``, ``webhookEvents``,
``webhookDeliveries`` and ``webhookAttempts`` (the security rules deny every client).
Creation is create-if-absent (an event or a delivery is recorded once, whoever emits it
twice); a delivery's state changes in one transaction (read → decide → write); the HTTP
attempt happens outside it. An endpoint takes one of its tenant's numbered slots
(``webhookTenants/{tenant}/endpointSlots/{n}``) in the commit that writes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.cloud import firestore

from kiln.adapters.firestore import in_transaction, unavailable_is_retryable
from kiln.ports import DecideDelivery
from kiln.webhooks import model
from kiln.webhooks.model import Delivery, Endpoint, Event, newest_first

ENDPOINTS = "webhookEndpoints"
SECRETS = "webhookSecrets"
REGISTRATIONS = "webhookTenants"  # one per tenant, its endpoint slots below it
SLOTS = "endpointSlots"
EVENTS = "webhookEvents"
DELIVERIES = "webhookDeliveries"
ATTEMPTS = "webhookAttempts"
STORE = "webhook store"
#: The longest one read of the store may take, its retries included (the SDK's default is
#: 300 s; a delivery attempt's lease is 45).
READ_SECONDS = 5.0
T = TypeVar("T")


class FirestoreWebhookStore:
    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def _doc(self, collection: str, name: str) -> firestore.DocumentReference:
        return self.client.collection(collection).document(name)

    def _get(self, collection: str, name: str) -> dict[str, Any] | None:
        with unavailable_is_retryable(STORE):  # (bounded well inside an attempt's lease)
            snap = self._doc(collection, name).get(
                timeout=READ_SECONDS, retry=retries.Retry(timeout=READ_SECONDS))
        return (snap.to_dict() or {}) if snap.exists else None

    def _create(self, collection: str, name: str, doc: Mapping[str, Any]) -> bool:
        try:
            with unavailable_is_retryable(STORE):
                self._doc(collection, name).create(dict(doc))
        except gexc.AlreadyExists:
            return False
        return True

    def put_endpoint(self, endpoint: Endpoint, limit: int | None = None) -> bool:
        if limit is None:
            with unavailable_is_retryable(STORE):
                self._doc(ENDPOINTS, endpoint.id).set(endpoint.to_doc())
            return True
        # A tenant has ``limit`` numbered slots; an endpoint is stored in the same commit
        # that creates a free slot's document, so two registrations that pick one slot
        # conflict on that create alone (no transaction over a query, which many
        # registrations at once abort into contention). Endpoints stored without a slot
        # (``limit`` None, or before slots) take room too.
        with unavailable_is_retryable(STORE):
            taken = [s.to_dict() or {} for s in self.client.collection(ENDPOINTS).where(
                filter=firestore.FieldFilter("tenant", "==", endpoint.tenant)).stream()]
        held = {doc["slot"] for doc in taken if isinstance(doc.get("slot"), int)}
        room = limit - sum(1 for doc in taken if not isinstance(doc.get("slot"), int))
        for slot in (n for n in range(max(room, 0)) if n not in held):
            batch = self.client.batch()
            batch.create(self._slot(endpoint.tenant, slot), {"endpoint": endpoint.id})
            batch.set(self._doc(ENDPOINTS, endpoint.id), {**endpoint.to_doc(), "slot": slot})
            try:
                with unavailable_is_retryable(STORE):
                    batch.commit()
            except gexc.AlreadyExists:
                if self._holder(endpoint.tenant, slot) == endpoint.id:
                    return True  # our own commit landed; the SDK's retry of it found it
                continue  # another registration took it since the read: try the next
            return True
        return False

    def _holder(self, tenant: str, slot: int) -> str | None:
        with unavailable_is_retryable(STORE):
            snap = self._slot(tenant, slot).get()
        return (snap.to_dict() or {}).get("endpoint") if snap.exists else None

    def _slot(self, tenant: str, slot: int) -> firestore.DocumentReference:
        return self._doc(REGISTRATIONS, tenant).collection(SLOTS).document(str(slot))

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        doc = self._get(ENDPOINTS, endpoint_id)
        return None if doc is None else Endpoint.from_doc(endpoint_id, doc)

    def endpoints(self, tenant: str | None = None) -> list[Endpoint]:
        query: Any = self.client.collection(ENDPOINTS)
        if tenant is not None:
            query = query.where(filter=firestore.FieldFilter("tenant", "==", tenant))
        with unavailable_is_retryable(STORE):
            found = [Endpoint.from_doc(s.id, s.to_dict() or {}) for s in query.stream()]
        return sorted(found, key=lambda e: (e.tenant, e.id))

    def delete_endpoint(self, endpoint_id: str) -> bool:
        doc = self._get(ENDPOINTS, endpoint_id)
        if doc is None:
            return False
        batch = self.client.batch()
        # Only while it still exists: a second delete that read it before the first must
        # not free the slot a registration took since.
        batch.delete(self._doc(ENDPOINTS, endpoint_id),
                     option=self.client.write_option(exists=True))
        if isinstance(doc.get("slot"), int):
            batch.delete(self._slot(str(doc.get("tenant", "")), doc["slot"]))
        # Gone since the read (NotFound, FailedPrecondition): this call's own commit, retried
        # by the SDK after its answer was lost, or another delete at the same moment. Gone,
        # as asked.
        with contextlib.suppress(gexc.NotFound, gexc.FailedPrecondition), \
                unavailable_is_retryable(STORE):
            batch.commit()
        return True

    def disable_endpoint(self, endpoint_id: str, reason: str) -> None:
        try:
            with unavailable_is_retryable(STORE):
                self._doc(ENDPOINTS, endpoint_id).update({"disabled": reason})
        except gexc.NotFound:
            pass

    def tenant_secret(self, tenant: str, new: str) -> str:
        if self._create(SECRETS, tenant, {"secret": new}):
            return new
        return str((self._get(SECRETS, tenant) or {}).get("secret") or new)

    def create_event(self, event: Event) -> bool:
        return self._create(EVENTS, event.id, event.to_doc())

    def event(self, event_id: str) -> Event | None:
        doc = self._get(EVENTS, event_id)
        return None if doc is None else Event.from_doc(event_id, doc)

    def create_delivery(self, delivery: Delivery) -> bool:
        return self._create(DELIVERIES, delivery.id, delivery.to_doc())

    def delivery(self, delivery_id: str) -> Delivery | None:
        doc = self._get(DELIVERIES, delivery_id)
        return None if doc is None else Delivery.from_doc(delivery_id, doc)

    def transact_delivery(self, delivery_id: str, decide: DecideDelivery[T]) -> T:
        ref = self._doc(DELIVERIES, delivery_id)

        def body(tx: firestore.Transaction) -> T:
            snap = ref.get(transaction=tx)
            current = Delivery.from_doc(delivery_id, snap.to_dict() or {}) if snap.exists else None
            fields, value = decide(current)
            if fields and current is not None:
                tx.update(ref, dict(fields))
            return value

        return in_transaction(self.client, body, store=STORE, busy="The delivery is busy.")

    def deliveries(self, *, endpoint_id: str | None = None, event_id: str | None = None,
                   due_before: dt.datetime | None = None, limit: int = 100) -> list[Delivery]:
        query: Any = self.client.collection(DELIVERIES)
        if endpoint_id is not None:
            query = query.where(filter=firestore.FieldFilter("endpointId", "==", endpoint_id))
        if event_id is not None:
            query = query.where(filter=firestore.FieldFilter("eventId", "==", event_id))
        if due_before is not None:
            query = (query.where(filter=firestore.FieldFilter("state", "==", "pending"))
                     .where(filter=firestore.FieldFilter("nextAt", "<=", due_before)))
        else:  # a listing: the newest ``limit``, not the first by id (ids are hashes)
            query = query.order_by("createdAt", direction=firestore.Query.DESCENDING)
        with unavailable_is_retryable(STORE):
            found = [Delivery.from_doc(s.id, s.to_dict() or {})
                     for s in query.limit(limit).stream()]
        return newest_first(found)

    def add_attempt(self, delivery_id: str, number: int, record: Mapping[str, Any]) -> None:
        doc = {**record, "deliveryId": delivery_id, "number": number,
               "expireAt": model.expire_at(dt.datetime.now(dt.UTC))}
        # Created once: an invocation whose lease ran out records nothing over the one
        # that took the attempt from it.
        self._create(ATTEMPTS, f"{delivery_id}-{number}", doc)

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        query = self.client.collection(ATTEMPTS).where(
            filter=firestore.FieldFilter("deliveryId", "==", delivery_id))
        with unavailable_is_retryable(STORE):
            found = [s.to_dict() or {} for s in query.stream()]
        return sorted(found, key=lambda a: int(a.get("number", 0)))
