"""Webhook records (pure data): endpoints, events, deliveries, the retry schedule, ids.

Firestore collections (server only: the security rules deny every client):
``webhookEndpoints/{endpointId}``, ``webhookSecrets/{tenant}``, ``webhookEvents/{eventId}``,
``webhookDeliveries/{deliveryId}`` (one per event and endpoint) and
``webhookAttempts/{deliveryId}-{n}`` (one per attempt).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The Standard Webhooks schedule: the delay before attempt 1, 2, … (seconds).
SCHEDULE: tuple[float, ...] = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600,
                               14 * 3600, 20 * 3600, 24 * 3600)
#: How long a receiver has to answer.
RECEIVER_TIMEOUT = 15.0
#: How long an attempt holds its delivery (the timeout plus a margin for the records).
ATTEMPT_LEASE = dt.timedelta(seconds=45)
#: A delivery whose wake-up is this late is woken again by the sweeper.
LOST_AFTER = dt.timedelta(seconds=60)
#: How long events, deliveries and attempts are kept (Firestore's TTL on ``expireAt``):
#: the ~3 days of retries and a month to replay; an event's body holds download links.
RETENTION = dt.timedelta(days=30)


def expire_at(created: dt.datetime | None) -> dt.datetime | None:
    """When a record created at ``created`` is deleted (:data:`RETENTION`)."""
    return created + RETENTION if created is not None else None

JOB_EVENTS = ("job.completed", "job.failed", "job.canceled")
EVENT_TYPES = (*JOB_EVENTS, "batch.completed", "job.progress")
#: A webhook delivery travels as a job message whose id starts with this (never a job id:
#: job ids are hexadecimal), its check number being the attempt number.
DELIVERY_PREFIX = "wh-"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (``nextAt``)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every attempt used, a refused URL, or the endpoint gone (410)


def new_secret() -> str:
    """A ``whsec_`` secret: base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(8)


def event_id(event_type: str, subject_id: str) -> str:
    """The stable id of an event (its ``webhook-id``): the same for the same (type, subject)."""
    return "msg_" + hashlib.sha256(f"{event_type}\x00{subject_id}".encode()).hexdigest()[:24]


def url_endpoint_id(tenant: str, url: str) -> str:
    """The endpoint id of a per-job webhook URL (not registered: one per tenant and URL)."""
    return "url_" + hashlib.sha256(f"{tenant}\x00{url}".encode()).hexdigest()[:16]


def delivery_id(event: str, endpoint: str) -> str:
    return DELIVERY_PREFIX + hashlib.sha256(f"{event}\x00{endpoint}".encode()).hexdigest()[:32]


def delay_before(attempt: int, scale: float = 1.0) -> dt.timedelta | None:
    """The wait before attempt ``attempt`` (1-based); None past the schedule."""
    if attempt < 1 or attempt > len(SCHEDULE):
        return None
    return dt.timedelta(seconds=SCHEDULE[attempt - 1] * scale)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def newest_first(deliveries: list[Delivery]) -> list[Delivery]:
    return sorted(deliveries, key=lambda d: (d.created_at or _EPOCH, d.id), reverse=True)


def _when(value: Any) -> dt.datetime | None:
    return value if isinstance(value, dt.datetime) else None


@dataclass(frozen=True)
class Endpoint:
    """Where a tenant's events go. ``events`` empty means every event type."""

    id: str
    tenant: str
    url: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = ()
    disabled: str = ""  # why it no longer receives ("gone": it answered 410)
    created_at: dt.datetime | None = None

    def wants(self, event_type: str) -> bool:
        if self.disabled:
            return False
        if self.events:
            return event_type in self.events
        return event_type != "job.progress"  # progress is opt-in

    def to_doc(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "url": self.url, "secret": self.secret,
                "events": list(self.events), "disabled": self.disabled,
                "createdAt": self.created_at}

    @classmethod
    def from_doc(cls, endpoint_id: str, doc: Mapping[str, Any]) -> Endpoint:
        return cls(endpoint_id, str(doc.get("tenant", "")), str(doc.get("url", "")),
                   str(doc.get("secret", "")), tuple(doc.get("events") or ()),
                   str(doc.get("disabled") or ""), _when(doc.get("createdAt")))

    def public_view(self) -> dict[str, Any]:
        """What an operator or the tenant may see again (never the secret)."""
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "disabled": self.disabled or None,
                "createdAt": self.created_at.isoformat() if self.created_at else None}


@dataclass(frozen=True)
class Event:
    """One event, its body fixed when it was recorded (every attempt sends the same bytes)."""

    id: str
    tenant: str
    type: str
    subject_id: str
    body: str
    url: str | None = None  # a per-job webhook URL
    created_at: dt.datetime | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "type": self.type, "subjectId": self.subject_id,
                "body": self.body, "url": self.url, "createdAt": self.created_at,
                "expireAt": expire_at(self.created_at)}

    @classmethod
    def from_doc(cls, id_: str, doc: Mapping[str, Any]) -> Event:
        return cls(id_, str(doc.get("tenant", "")), str(doc.get("type", "")),
                   str(doc.get("subjectId", "")), str(doc.get("body", "")),
                   doc.get("url") or None, _when(doc.get("createdAt")))


@dataclass(frozen=True)
class Delivery:
    """One event to one endpoint: its state and the number of its next attempt."""

    id: str
    event_id: str
    endpoint_id: str
    tenant: str
    url: str
    state: DeliveryState = DeliveryState.PENDING
    attempt: int = 1  # the next attempt's number (the last one made, once ended)
    base: int = 0  # attempts made before the current round (a replay starts a new one)
    next_at: dt.datetime | None = None
    lease_until: dt.datetime | None = None
    last_status: int | None = None
    last_error: str = ""
    created_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"eventId": self.event_id, "endpointId": self.endpoint_id,
                "tenant": self.tenant, "url": self.url, "state": self.state.value,
                "attempt": self.attempt, "base": self.base, "nextAt": self.next_at,
                "leaseUntil": self.lease_until,
                "lastStatus": self.last_status, "lastError": self.last_error,
                "createdAt": self.created_at, "endedAt": self.ended_at,
                "expireAt": expire_at(self.created_at)}

    @classmethod
    def from_doc(cls, id_: str, doc: Mapping[str, Any]) -> Delivery:
        status = doc.get("lastStatus")
        return cls(id_, str(doc.get("eventId", "")), str(doc.get("endpointId", "")),
                   str(doc.get("tenant", "")), str(doc.get("url", "")),
                   DeliveryState(doc.get("state", "pending")), int(doc.get("attempt", 1)),
                   int(doc.get("base", 0)),
                   _when(doc.get("nextAt")), _when(doc.get("leaseUntil")),
                   int(status) if isinstance(status, int) else None,
                   str(doc.get("lastError") or ""), _when(doc.get("createdAt")),
                   _when(doc.get("endedAt")))

    def public_view(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {"id": self.id, "eventId": self.event_id, "endpointId": self.endpoint_id,
                "url": self.url, "state": self.state.value, "attempt": self.attempt,
                "nextAt": iso(self.next_at) if self.state is DeliveryState.PENDING else None,
                "lastStatus": self.last_status, "lastError": self.last_error or None,
                "createdAt": iso(self.created_at), "endedAt": iso(self.ended_at)}
