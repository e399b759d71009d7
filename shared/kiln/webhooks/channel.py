"""The ``api`` channel: a backend's jobs end in a signed webhook, not a chat message.

Registered in the composition root (``Services.channels["api"]``) and called by
``kiln.runtime.notify``: ``on_finished`` emits ``job.completed|failed|canceled`` for the
job's tenant (its owner ``api:<tenant>``; to the tenant's endpoints and the job's own
``webhook`` URL; a cancel claims its notification too, ``kiln.runtime.actions``), once per
run of the job (:func:`announce_end`); ``on_progress`` emits an opt-in ``job.progress`` at
most once per ``PROGRESS_SECONDS`` per job, and ``redeliver`` (the sweeper's pass) wakes
deliveries whose wake-up was lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from kiln import log
from kiln.core.errors import RetryableError
from kiln.core.job import Job
from kiln.webhooks import delivery, events

logger = log.get("webhooks")
#: At most one ``job.progress`` event per job in this many seconds (coalesced).
PROGRESS_SECONDS = 10.0
#: Pauses between the tries of an end event's emit when the webhook store is unreachable.
EMIT_PAUSES = (0.2, 1.0, 3.0)
API_OWNER = "api:"


def tenant_of(job: Job) -> str | None:
    """The tenant of a job owned by ``api:<tenant>``; None for any other owner."""
    if job.uid.startswith(API_OWNER) and len(job.uid) > len(API_OWNER):
        return job.uid[len(API_OWNER):]
    return None


def announce_end(services: Any, job: Job) -> dict[str, Any]:
    """Emit the end event of an ended API job (``job.completed|failed|canceled``); what was
    emitted (``{}`` for a job of no tenant). Once per run of the job and type whoever
    calls it again: the event's id is stable for its subject, the run
    (``kiln.webhooks.events.job_subject``), so a retried job's next end is a new event."""
    tenant = tenant_of(job)
    event_type = events.job_event_type(job)
    if tenant is None or event_type is None:
        return {}
    for pause in (*EMIT_PAUSES, None):
        try:
            event_id = events.emit(services, tenant=tenant, event_type=event_type,
                                   subject_id=events.job_subject(job),
                                   data=events.job_data(job),
                                   url=job.server.webhook)
            return {"webhookEvent": event_id}
        except RetryableError:
            # A job's end is announced once: a store blip must not lose the event, so try
            # again briefly (a second emit completes a partial one).
            if pause is None:
                raise
            services.clock.sleep(pause)
    raise AssertionError("unreachable")


class ApiChannel:
    """``kiln.ports.Channel`` for backends (API keys)."""

    def __init__(self, progress_seconds: float = PROGRESS_SECONDS) -> None:
        self.progress_seconds = progress_seconds

    def on_started(self, services: Any, job: Job) -> None:
        return None

    def on_progress(self, services: Any, job: Job, progress: int, stage: str) -> None:
        tenant = tenant_of(job)
        if tenant is None or not any(e.wants("job.progress")
                                     for e in services.webhooks.endpoints(tenant)):
            return
        window = int(services.clock.now().timestamp() // self.progress_seconds)
        data = {**events.job_data(job), "progress": progress, "stage": stage}
        events.emit(services, tenant=tenant, event_type="job.progress",
                    subject_id=f"{job.id}/{window}", data=data)

    def on_finished(self, services: Any, job: Job) -> dict[str, Any]:
        return announce_end(services, job)

    def redeliver(self, services: Any, started: dt.datetime | None = None) -> int:
        try:
            return delivery.sweep(services)
        except Exception as exc:  # the job sweep goes on without the webhook one
            log.event(logger, "webhook sweep failed", logging.WARNING, error=type(exc).__name__)
            return 0
