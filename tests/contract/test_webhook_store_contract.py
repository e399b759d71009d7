"""The webhook store's contract, on the in-memory fake and on the Firestore emulator."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kiln.webhooks import model
from kiln.webhooks.model import Delivery, DeliveryState, Endpoint, Event
from kiln_dev.fakes_webhooks import InMemoryWebhookStore


@pytest.fixture(params=["fake", "emulator"])
def hooks(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return InMemoryWebhookStore()
    return request.getfixturevalue("services").webhooks


def test_endpoints_per_tenant_secret_kept_and_disable(hooks: Any) -> None:
    tenant = "t-" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.UTC)
    endpoint = Endpoint(model.new_endpoint_id(), tenant, "https://a.example/h", model.new_secret(),
                        ("job.completed",), created_at=now)
    hooks.put_endpoint(endpoint)
    assert [e.id for e in hooks.endpoints(tenant)] == [endpoint.id]
    read = hooks.endpoint(endpoint.id)
    assert read.secret == endpoint.secret and read.events == ("job.completed",)
    hooks.disable_endpoint(endpoint.id, "gone")
    assert hooks.endpoint(endpoint.id).disabled == "gone"
    assert hooks.delete_endpoint(endpoint.id) is True
    assert hooks.delete_endpoint(endpoint.id) is False and hooks.endpoints(tenant) == []
    first = hooks.tenant_secret(tenant, "whsec_first")
    assert first == "whsec_first" and hooks.tenant_secret(tenant, "whsec_other") == first


def registering(hooks: Any, tenant: str, *, limit: int) -> Callable[[int], bool]:
    """Registration number ``n`` of one of ``tenant``'s endpoints, with room for ``limit``:
    whether it was stored."""
    now = dt.datetime.now(dt.UTC)

    def register(n: int) -> bool:
        return bool(hooks.put_endpoint(Endpoint(
            model.new_endpoint_id(), tenant, f"https://a.example/h{n}", model.new_secret(),
            (), created_at=now), limit=limit))

    return register


def at_once(register: Callable[[int], bool], count: int) -> list[bool]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(register, range(count)))


def test_a_tenants_endpoints_stay_within_the_limit_when_registered_at_once(hooks: Any) -> None:
    """Given 3 registrations of one tenant at once with room for 2, then exactly 2 are
    stored and 1 refused (False, nothing written): counted with the write, not
    read first and written after; another tenant's room is its own."""
    tenant = "t-" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.UTC)
    stored = at_once(registering(hooks, tenant, limit=2), 3)
    assert sorted(stored) == [False, True, True]
    assert len(hooks.endpoints(tenant)) == 2
    other = Endpoint(model.new_endpoint_id(), tenant + "-b", "https://b.example/h",
                     model.new_secret(), (), created_at=now)
    assert hooks.put_endpoint(other, limit=2) is True


def test_twelve_registrations_at_once_fill_ten_places_and_a_delete_frees_one(
        hooks: Any) -> None:
    """Given 12 registrations of one tenant at once with room for 10, then exactly 10 are
    stored and 2 refused, none raises (no contention error); deleting one frees its room
    for exactly one more, and deleting it again frees nothing."""
    tenant = "t-" + uuid.uuid4().hex[:8]
    register = registering(hooks, tenant, limit=10)
    stored = at_once(register, 12)
    assert stored.count(True) == 10 and len(hooks.endpoints(tenant)) == 10
    gone = hooks.endpoints(tenant)[3].id
    assert hooks.delete_endpoint(gone) is True
    assert hooks.delete_endpoint(gone) is False
    assert [register(n) for n in range(12, 14)] == [True, False]
    assert len(hooks.endpoints(tenant)) == 10


def test_events_and_deliveries_are_created_once_and_transacted(hooks: Any) -> None:
    now = dt.datetime.now(dt.UTC)
    subject = uuid.uuid4().hex
    event = Event(model.event_id("job.completed", subject), "t", "job.completed", subject,
                  '{"type":"job.completed"}', None, now)
    assert hooks.create_event(event) is True and hooks.create_event(event) is False
    assert hooks.event(event.id).body == event.body
    delivery = Delivery(model.delivery_id(event.id, "ep_1"), event.id, "ep_1", "t",
                        "https://a.example/h", next_at=now, created_at=now)
    assert hooks.create_delivery(delivery) is True and hooks.create_delivery(delivery) is False
    due = [d.id for d in hooks.deliveries(due_before=now + dt.timedelta(seconds=1), limit=500)]
    assert delivery.id in due
    assert hooks.transact_delivery(delivery.id, lambda d: ({"state": "succeeded",
                                                            "lastStatus": 204}, d.attempt)) == 1
    read = hooks.delivery(delivery.id)
    assert read.state is DeliveryState.SUCCEEDED and read.last_status == 204
    assert delivery.id not in [d.id for d in hooks.deliveries(
        due_before=now + dt.timedelta(seconds=1), limit=500)]
    assert [d.id for d in hooks.deliveries(event_id=event.id)] == [delivery.id]
    hooks.add_attempt(delivery.id, 2, {"status": 500})
    hooks.add_attempt(delivery.id, 1, {"status": 204})
    assert [a["status"] for a in hooks.attempts(delivery.id)] == [204, 500]


def test_a_listing_is_the_newest_deliveries_not_the_first_by_id(hooks: Any) -> None:
    """Given an endpoint with more deliveries than the listing's limit, the listing holds
    the newest ones, newest first (on Firestore it held the first by id: ids are hashes,
    so the newest were left out at random)."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    endpoint = f"ep_{uuid.uuid4().hex[:16]}"
    made = []
    for n in range(12):
        event_id = model.event_id("job.completed", uuid.uuid4().hex)
        delivery = Delivery(model.delivery_id(event_id, endpoint), event_id, endpoint, "t",
                            "https://a.example/h", created_at=start + dt.timedelta(minutes=n))
        assert hooks.create_delivery(delivery)
        made.append(delivery.id)
    listed = [d.id for d in hooks.deliveries(endpoint_id=endpoint, limit=5)]
    assert listed == made[::-1][:5]


def test_events_deliveries_and_attempts_are_stored_with_their_expiry(
        request: pytest.FixtureRequest) -> None:
    """On Firestore, each event, delivery and attempt carries ``expireAt`` (30 days on),
    which the TTL policies in infra/firestore.tf delete by: they were kept for ever, each
    event's body with its download links."""
    hooks = request.getfixturevalue("services").webhooks
    now = dt.datetime.now(dt.UTC)
    subject = uuid.uuid4().hex
    event = Event(model.event_id("job.completed", subject), "t", "job.completed", subject,
                  "{}", None, now)
    delivery = Delivery(model.delivery_id(event.id, "ep_1"), event.id, "ep_1", "t",
                        "https://a.example/h", next_at=now, created_at=now)
    assert hooks.create_event(event) and hooks.create_delivery(delivery)
    hooks.add_attempt(delivery.id, 1, {"status": 204})
    stored = [hooks.client.collection(name).document(doc_id).get().to_dict()["expireAt"]
              for name, doc_id in (("webhookEvents", event.id),
                                   ("webhookDeliveries", delivery.id),
                                   ("webhookAttempts", f"{delivery.id}-1"))]
    for expire in stored:
        assert abs(expire - (now + model.RETENTION)) < dt.timedelta(minutes=1), stored


def test_an_attempt_is_recorded_once(hooks: Any) -> None:
    """A second record of the same attempt (an invocation whose lease ran out, finishing
    after the one that took the attempt over) does not replace the first."""
    delivery_id = "dlv_" + uuid.uuid4().hex[:12]
    hooks.add_attempt(delivery_id, 1, {"status": 200, "error": ""})
    hooks.add_attempt(delivery_id, 1, {"status": None, "error": "dns"})
    hooks.add_attempt(delivery_id, 2, {"status": 503, "error": "http_503"})
    assert [(a["number"], a["status"]) for a in hooks.attempts(delivery_id)] == [(1, 200), (2, 503)]
