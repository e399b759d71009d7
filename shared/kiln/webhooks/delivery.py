"""Delivering webhook events: one attempt per worker invocation, retried on a schedule.

A delivery's attempt ``n`` arrives as a job message (``kiln.webhooks.model.DELIVERY_PREFIX``
ids, the check number being ``n``). :func:`attempt` claims the delivery with a short
lease (a duplicate or stale message is acked and forgotten), POSTs the signed event
outside any transaction (``kiln.webhooks.send``), records the attempt
(``webhookAttempts``), then in one transaction ends the delivery (2xx: ``succeeded``;
``410``: ``failed`` and the endpoint disabled; a refused URL or the schedule used up:
``failed``) or sets its next attempt and schedules the wake-up (Cloud Tasks). Nothing
sleeps; a lost wake-up or a crashed attempt is repaired by :func:`sweep`. Every attempt
is its own invocation, so a slow receiver holds only its own deliveries.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from typing import Any

from kiln import log
from kiln.webhooks import model, send
from kiln.webhooks.events import wake
from kiln.webhooks.model import Delivery, DeliveryState

logger = log.get("webhooks")
SWEEP_LIMIT = 200


class AttemptOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # failed; the next attempt is scheduled
    FAILED = "failed"  # failed for good
    STALE = "stale"  # not the delivery's live attempt (a duplicate or late message)
    BUSY = "busy"  # another invocation holds it
    MISSING = "missing"


def attempt(services: Any, delivery_id: str, number: int) -> AttemptOutcome:
    """Make attempt ``number`` of a delivery, if it is the live one."""
    store = services.webhooks
    now = services.clock.now()

    def claim(current: Delivery | None) -> tuple[dict[str, Any] | None, AttemptOutcome | None]:
        if current is None:
            return None, AttemptOutcome.MISSING
        if current.state is not DeliveryState.PENDING or number != current.attempt:
            return None, AttemptOutcome.STALE
        if current.lease_until is not None and current.lease_until > now:
            return None, AttemptOutcome.BUSY
        return {"leaseUntil": now + model.ATTEMPT_LEASE}, None

    refused = store.transact_delivery(delivery_id, claim)
    if refused is not None:
        return refused
    delivery = store.delivery(delivery_id)
    assert delivery is not None
    result = _send(services, delivery)
    store.add_attempt(delivery_id, number, {
        "at": now, "status": result.status, "error": result.error, "detail": result.detail,
        "ms": result.ms, "endpointId": delivery.endpoint_id, "eventId": delivery.event_id})
    outcome, retry_at = _settle(services, delivery, number, result)
    if retry_at is not None:
        wake(services, delivery_id, number + 1, retry_at)
    log.event(logger, "webhook attempt", logging.INFO if result.ok else logging.WARNING,
              deliveryId=delivery_id, attempt=number, status=result.status,
              error=result.error, outcome=outcome.value, ms=result.ms)
    return outcome


def _send(services: Any, delivery: Delivery) -> send.SendResult:
    store = services.webhooks
    event = store.event(delivery.event_id)
    if event is None:
        return send.SendResult(None, "refused", "the event is gone")
    if delivery.endpoint_id.startswith("url_"):
        secret = store.tenant_secret(delivery.tenant, model.new_secret())
    else:
        endpoint = store.endpoint(delivery.endpoint_id)
        if endpoint is None or endpoint.disabled:
            why = "removed" if endpoint is None else f"disabled ({endpoint.disabled})"
            return send.SendResult(None, "refused", f"the endpoint was {why}")
        secret = endpoint.secret
    body = event.body.encode()
    headers = send.signed_headers(secret, event.id, services.clock.now(), body)
    return send.post(delivery.url, body, headers, allow_local=services.settings.local,
                     timeout=services.settings.webhook_timeout_seconds)


def _settle(services: Any, delivery: Delivery, number: int,
            result: send.SendResult) -> tuple[AttemptOutcome, dt.datetime | None]:
    now = services.clock.now()
    scale = services.settings.webhook_schedule_scale
    if result.ok:
        state, outcome, retry_at = DeliveryState.SUCCEEDED, AttemptOutcome.SUCCEEDED, None
    elif result.refused or result.status == 410:
        state, outcome, retry_at = DeliveryState.FAILED, AttemptOutcome.FAILED, None
    else:
        delay = model.delay_before(number + 1 - delivery.base, scale)
        if delay is None:
            state, outcome, retry_at = DeliveryState.FAILED, AttemptOutcome.FAILED, None
        else:
            state, outcome, retry_at = DeliveryState.PENDING, AttemptOutcome.RETRY, now + delay
    fields: dict[str, Any] = {"state": state.value, "leaseUntil": None,
                              "lastStatus": result.status, "lastError": result.error}
    if retry_at is not None:
        fields.update(attempt=number + 1, nextAt=retry_at)
    else:
        fields["endedAt"] = now

    def decide(current: Delivery | None) -> tuple[dict[str, Any] | None, bool]:
        live = current is not None and current.state is DeliveryState.PENDING \
            and current.attempt == number
        return (fields if live else None), live

    if not services.webhooks.transact_delivery(delivery.id, decide):
        # Its lease ran out and another invocation made this attempt and settled it: that
        # one's outcome stands, and it woke the next attempt if there is one.
        return AttemptOutcome.STALE, None
    if result.status == 410 and not delivery.endpoint_id.startswith("url_"):
        services.webhooks.disable_endpoint(delivery.endpoint_id, "gone")
        log.event(logger, "webhook endpoint disabled: it answered 410", logging.WARNING,
                  endpointId=delivery.endpoint_id)
    return outcome, retry_at


def sweep(services: Any) -> int:
    """Wake again every pending delivery whose attempt is overdue (its wake-up was lost, or
    the invocation that held it died); how many were woken."""
    now = services.clock.now()
    woken = 0
    for delivery in services.webhooks.deliveries(due_before=now - model.LOST_AFTER,
                                                 limit=SWEEP_LIMIT):
        if delivery.lease_until is not None and delivery.lease_until > now:
            continue
        if not wake(services, delivery.id, delivery.attempt, now):
            break  # the queue is down: the rest wait for the next pass, not a timeout each
        woken += 1
    return woken


def replay(services: Any, event_id: str) -> list[str]:
    """Send an event again to every delivery it had: each ended delivery starts a new
    round of attempts (same ``webhook-id``: receivers that de-duplicate keep one). The
    delivery ids woken."""
    store = services.webhooks
    now = services.clock.now()
    woken = []
    for delivery in store.deliveries(event_id=event_id):
        next_attempt = delivery.attempt + 1

        def decide(current: Delivery | None, n: int = next_attempt) -> tuple[dict[str, Any] | None, bool]:
            if current is None or current.state is DeliveryState.PENDING:
                return None, False
            return {"state": DeliveryState.PENDING.value, "attempt": n, "nextAt": now,
                    "base": n - 1, "leaseUntil": None, "endedAt": None}, True

        if store.transact_delivery(delivery.id, decide):
            wake(services, delivery.id, next_attempt, now)
            woken.append(delivery.id)
    return woken
