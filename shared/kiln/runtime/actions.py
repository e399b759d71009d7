"""Cancel and retry: the same transitions and side effects for the HTTP API, the Telegram
chat and the operator CLI.

Both are idempotent (cancelling a canceled job, retrying a job that is pending again, do
nothing) and raise ``TransitionError`` with a readable message when the job's status does
not allow them. Callers check ownership before calling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kiln import log
from kiln.adapters.firestore import utcnow
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import RetryableError, TransitionError
from kiln.core.job import JobStatus

logger = log.get("actions")


@dataclass(frozen=True)
class Outcome:
    """``changed``: this call moved the job; ``status``: the job's status now; ``job``: the
    document as it was before the call."""

    changed: bool
    status: str
    job: dict[str, Any]


def cancel(services: Services, job_id: str, *, by: str) -> Outcome:
    """Cancel a pending or running job (``by`` names who, for the log).

    A worker holding the job notices within a progress interval and cancels the provider's
    task. When nobody holds it (its worker died, or between hand-offs) and a provider task
    exists, a wake-up message is published so a worker cancels that task.
    """

    def decide(job: dict[str, Any] | None) -> tuple[Any, tuple[bool, bool, dict[str, Any]]]:
        if job is None:
            raise TransitionError("No such job.")
        updates = lifecycle.cancel(job)
        orphaned = not lifecycle.lease_live(job, utcnow())
        remote_task = bool(lifecycle.server(job).get("providerTaskId"))
        return updates, (updates is not None, updates is not None and orphaned and remote_task, job)

    changed, wake, job = services.store.transact(job_id, decide)
    with log.job_context(job_id):
        if wake:
            _publish(services, job_id, "cancel", "cancel wake-up not published")
        if changed:
            log.event(logger, "job canceled", by=by)
    return Outcome(changed, JobStatus.CANCELED.value, job)


def retry(services: Services, job_id: str, *, by: str) -> Outcome:
    """Run a failed job again: pending, published. A job that is already pending or running
    again is left as it is."""
    max_age = services.settings.job_max_age_seconds

    def decide(job: dict[str, Any] | None) -> tuple[Any, tuple[bool, dict[str, Any]]]:
        if job is None:
            raise TransitionError("No such job.")
        updates = lifecycle.retry(job, now=utcnow(), max_age_seconds=max_age)
        return updates, (updates is not None, job)

    changed, job = services.store.transact(job_id, decide)
    if not changed:
        return Outcome(False, str(job["status"]), job)
    with log.job_context(job_id):
        _publish(services, job_id, "retry", "publish failed; the sweeper will re-publish")
        log.event(logger, "job retried", by=by)
    return Outcome(True, JobStatus.PENDING.value, job)


def _publish(services: Services, job_id: str, reason: str, warning: str) -> None:
    try:
        services.queue.publish(job_id, reason=reason)
    except RetryableError:
        log.event(logger, warning, logging.WARNING)
