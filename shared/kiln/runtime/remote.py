"""A provider's remote task as a delivery submits it: recorded on the job at once, so no
later run pays for a second task and callbacks find the job, and stopped when this delivery
cannot hand it on (the job ended or changed hands while the submit ran).
"""

from __future__ import annotations

import logging
from typing import Any

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle, timeline
from kiln.core.errors import KilnError, LeaseLostError, RetryableError
from kiln.core.job import Job, JobStatus
from kiln.providers.base import TaskProvider
from kiln.providers.callbacks import task_key
from kiln.runtime import actions, endings

logger = log.get("worker")


def save_task(provider: TaskProvider, job_id: str, task_id: str, services: Services,
              owner: str, *, submitted: bool = True) -> bool:
    """Checkpoint the task id at once (no later delivery pays for a second task) and index
    it for callbacks; True when a callback for it came first (check at once).
    ``submitted``: this delivery created the task (else the provider moved on to it, and
    the delivery that holds the job now finds it at its poll)."""
    now = services.clock.now()

    def decide(job: Job | None) -> tuple[Any, Job | None]:
        return timeline.carry(lifecycle.checkpoint(
            job, worker_id=owner, now=now, policy=services.policy, provider=provider.name,
            task_id=task_id), {timeline.step("submitted", job.attempts if job else 1): now}), job

    try:
        before = services.store.transact(job_id, decide)
    except LeaseLostError:
        if submitted:  # another delivery holds the job; only we know this task
            _stop_unrecorded(provider, task_id)
        raise
    except RetryableError:
        # The store failed (or its answer was lost): a checkpoint that did not land leaves
        # a task no later run knows, and the next run would pay for another.
        before = _recorded(services, job_id, task_id)
        if before is None:
            if submitted:
                _stop_unrecorded(provider, task_id)
            raise
    if before is not None and before.status is JobStatus.FAILED:
        # It failed past its maximum age while the task was submitted (the sweeper's
        # wake-up found no task to stop): the task is recorded, so stop it here, or, on a
        # passing failure, through a wake-up whose delivery finds it left.
        try:
            endings.cancel_remote(provider, job_id, services)
        except RetryableError:
            actions.wake_to_cancel(services, job_id)
        raise LeaseLostError("The job ended past its maximum age while its task was submitted.")
    try:
        return services.task_index.link(provider.name, task_key(provider.name, task_id), job_id)
    except KilnError as exc:  # callbacks for it are ignored; the checks still find its end
        log.event(logger, "task not indexed; polling only", logging.WARNING, code=exc.code)
        return False


def _recorded(services: Services, job_id: str, task_id: str) -> Job | None:
    """The job, read again, if it records ``task_id``; None if not, or if it cannot be
    read (then the task is stopped: a task that runs unknown costs more than a job
    whose recorded task was stopped, which fails readably)."""
    try:
        job = services.store.get(job_id)
    except KilnError:
        return None
    return job if job is not None and job.server.provider_task_id == task_id else None


def _stop_unrecorded(provider: TaskProvider, task_id: str) -> None:
    """Cancel a task this delivery submitted but could not record (its lease was lost while
    the submit ran, or the store failed): no other run knows the task, so none would ever
    stop it."""
    try:
        provider.cancel(task_id)
    except KilnError as exc:
        log.event(logger, "unrecorded provider task not canceled", logging.WARNING,
                  taskId=task_id, code=exc.code)
        return
    log.event(logger, "unrecorded provider task canceled", taskId=task_id)
