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
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import KilnError, RetryableError
from kiln.core.job import Job, JobStatus
from kiln.runtime import batch_end, dispatch, endings, notify

logger = log.get("actions")


@dataclass(frozen=True)
class Outcome:
    """``changed``: this call moved the job; ``status``: the job's status now; ``job``: the
    job as it was before the call."""

    changed: bool
    status: JobStatus
    job: Job


def cancel(services: Services, job_id: str, *, by: str, notify_now: bool = True) -> Outcome:
    """Cancel a pending or running job (``by`` names who, for the log; ``notify_now``
    False leaves a backend's claimed ``job.canceled`` to the sweeper's next pass).

    A worker holding the job notices within a progress interval and cancels the provider's
    task. Whenever a provider task exists a wake-up message is published too, so a worker
    cancels that task: the job may wait on it with nobody holding it, or its lease may
    still look live while the worker that held it is dead (a live worker's own cancel
    comes first; the wake-up's then finds the task canceled).
    A backend's job (channel ``api``: ``notify.AT_LEAST_ONCE``) gets its ``job.canceled``
    webhook event at least once: the cancel claims its notification in the same write
    and sends it through ``notify.deliver`` (its channel, then its batch's end), so one
    the webhook store refused, or one lost with this process, is sent by the sweeper. An
    app or chat job's cancel sends no push and no chat message (docs/client-contract.md).
    """
    def decide(job: Job | None) -> tuple[Any, tuple[bool, Job]]:
        notice = job is not None and job.channel in notify.AT_LEAST_ONCE
        change = lifecycle.cancel(job, notice=notice)
        assert job is not None
        return change, (change is not None, job)

    changed, job = services.store.transact(job_id, decide)
    with log.job_context(job_id):
        if changed and job.server.provider_task_id:
            wake_to_cancel(services, job_id)
        if changed:
            log.event(logger, "job canceled", by=by)
            _next_in_queue(services, job_id)
            if job.channel in notify.AT_LEAST_ONCE and notify_now:  # (its batch's end
                notify.deliver(services, job_id)                      # comes after it)
    if changed and job.channel not in notify.AT_LEAST_ONCE:
        batch_end.on_job_ended(services, job)
    return Outcome(changed, JobStatus.CANCELED, job)


def retry(services: Services, job_id: str, *, by: str) -> Outcome:
    """Run a failed job again: pending, published. A job that is already pending or running
    again is left as it is. A paid task the failed run left running (past its maximum age,
    or out of attempts: ``lifecycle.remote_task_left``) is stopped first, while its id is
    still known: the new run forgets it. An API tenant's end event the failed run never
    sent (``notify.AT_LEAST_ONCE``) is sent first, as the new run's claim replaces it.

    Raises:
        RetryableError: that task's cancel, or the failed run's end event, failed for a
            moment; nothing was changed.
    """
    before = services.store.get(job_id)
    if before is not None and lifecycle.remote_task_left(before):
        endings.cancel_left(services, before)
    if before is not None and _unannounced(before):
        # The run's end was never announced (its sender died, or the webhook store was
        # down): announce it now, as the new run's claim will no longer name it.
        notify.deliver(services, job_id)

    def decide(job: Job | None) -> tuple[Any, tuple[bool, Job]]:
        if job is not None and _unannounced(job):  # still not: the retry must wait for it
            raise RetryableError("The job's last end is still being announced; try again "
                                 "in a moment.", code="notice_pending")
        change = lifecycle.retry(job, now=services.clock.now(), policy=services.policy)
        assert job is not None
        return change, (change is not None, job)

    changed, job = services.store.transact(job_id, decide)
    if not changed:
        return Outcome(False, job.status, job)
    with log.job_context(job_id):
        if job.server.queued_at is not None:  # back in the fair queue: a pass starts it
            _next_in_queue(services, job_id)
        else:
            _publish(services, job_id, "retry", "publish failed; the sweeper will re-publish")
        log.event(logger, "job retried", by=by)
    return Outcome(True, JobStatus.PENDING, job)


def _unannounced(job: Job) -> bool:
    """An API tenant's ended job whose end event was never sent (at least once)."""
    return job.channel in notify.AT_LEAST_ONCE and job.terminal and \
        (job.server.notify or {}).get("state") == lifecycle.NOTIFY_CLAIMED


def _next_in_queue(services: Services, job_id: str) -> None:
    """Give back an ended job's places and start who is next (the sweeper's pass does it
    otherwise, within a minute)."""
    try:
        dispatch.after_end(services, job_id)
    except KilnError as exc:
        log.event(logger, "queue pass deferred to the sweeper", logging.WARNING, code=exc.code)


def wake_to_cancel(services: Services, job_id: str) -> None:
    """Publish a wake-up so that a worker cancels the provider's task of a job that ended
    without it (``lifecycle.remote_task_left``), whatever its lease says (its holder may
    be dead); a publish that fails is logged."""
    _publish(services, job_id, "cancel", "cancel wake-up not published")


def _publish(services: Services, job_id: str, reason: str, warning: str) -> None:
    try:
        services.queue.publish(job_id, reason=reason)
    except RetryableError:
        log.event(logger, warning, logging.WARNING)
