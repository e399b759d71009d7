"""Emitting webhook events: each recorded once, with one delivery per target.

:func:`emit` is the one entry: it records the event (its id, the ``webhook-id``, is stable
for (type, subject), so a second emit of one event finds it and sends nothing again; a
job's end event has the job's run for subject, :func:`job_subject`),
creates a delivery for each of the tenant's endpoints that wants the type (and for a
per-job webhook URL), and wakes each new delivery's first attempt at once. A wake-up that
is lost is repaired by the sweeper (``kiln.webhooks.delivery.sweep``). The body is
documented in docs/webhooks.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from kiln import log
from kiln.core.errors import RetryableError
from kiln.core.job import Job, JobStatus
from kiln.webhooks import model
from kiln.webhooks.model import Delivery, Event

logger = log.get("webhooks")

_TYPE_OF = {JobStatus.COMPLETED: "job.completed", JobStatus.FAILED: "job.failed",
            JobStatus.CANCELED: "job.canceled"}


def emit(services: Any, *, tenant: str, event_type: str, subject_id: str, data: dict[str, Any],
         url: str | None = None) -> str:
    """Record one event and schedule its deliveries; its id (the ``webhook-id``).

    Raises:
        ValueError: an unknown event type.
        RetryableError: the webhook store is unreachable (nothing or part recorded: a
            second emit completes it).
    """
    if event_type not in model.EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    store = services.webhooks
    now = services.clock.now()
    event_id = model.event_id(event_type, subject_id)
    body = json.dumps({"type": event_type, "timestamp": _iso(now), "data": data},
                      separators=(",", ":"), ensure_ascii=False)
    event = Event(event_id, tenant, event_type, subject_id, body, url, now)
    if not store.create_event(event):
        event = store.event(event_id) or event
    created = [d for d in _deliveries(services, event, now) if store.create_delivery(d)]
    for delivery in created:
        wake(services, delivery.id, 1, now)
    if created:
        log.event(logger, "webhook event recorded", eventId=event_id, type=event_type,
                  deliveries=len(created))
    return event_id


def _deliveries(services: Any, event: Event, now: dt.datetime) -> list[Delivery]:
    targets = [(e.id, e.url) for e in services.webhooks.endpoints(event.tenant)
               if e.wants(event.type)]
    if event.url and event.type != "job.progress":
        targets.append((model.url_endpoint_id(event.tenant, event.url), event.url))
    return [Delivery(model.delivery_id(event.id, endpoint_id), event.id, endpoint_id,
                     event.tenant, url, next_at=now, created_at=now)
            for endpoint_id, url in targets]


def wake(services: Any, delivery_id: str, attempt: int, at: dt.datetime) -> bool:
    """Send the wake-up of a delivery's attempt: through the queue when due now, else a
    scheduled message (Cloud Tasks). False when it was lost (the sweeper repairs it)."""
    try:
        if at <= services.clock.now():
            services.queue.publish(delivery_id, reason="webhook", check=attempt)
        else:
            services.scheduler.schedule(delivery_id, attempt, at)
        return True
    except RetryableError as exc:
        log.event(logger, "webhook wake-up lost; the sweeper sends another", logging.WARNING,
                  code=exc.code, attempt=attempt)
        return False


def job_event_type(job: Job) -> str | None:
    return _TYPE_OF.get(job.status)


def job_subject(job: Job) -> str:
    """The subject of a job's end event: the job's run. The first run's is the job id
    (the ids of events recorded before runs were told apart stay the same); a run after
    ``n`` explicit retries (``POST …:retry``) is ``{jobId}/r{n}``, so its end is a new
    event rather than the first run's found again."""
    retries = job.server.retries
    return f"{job.id}/r{retries}" if retries else job.id


def job_data(job: Job) -> dict[str, Any]:
    """The ``data`` of a job event: what a backend needs without reading the job."""
    data: dict[str, Any] = {"jobId": job.id, "status": job.status.value, "kind": job.kind,
                            "progress": job.progress}
    result = job.result or {}
    if job.status is JobStatus.COMPLETED:
        data["resultUrl"] = result.get("downloadUrl") or result.get("url")
        for name in ("contentType", "bytes"):
            if name in result:
                data[name] = result[name]
    if job.error and job.status is not JobStatus.CANCELED:  # a retry's error, not its end
        data["error"] = {"code": job.error.get("code", ""), "message": job.error.get("message", "")}
    # ``Job.batch_id`` comes with batches (branch i13a); a job without one has none.
    batch_id = getattr(job, "batch_id", None)
    if batch_id:
        data["batchId"] = batch_id
    return data


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
