"""How a delivery ends a job it could not complete: failed, released for another attempt,
or put back in the fair queue — each decided by ``kiln.core.lifecycle``, then notified.

Each returns ``RunOutcome.CANCELED`` when the job was canceled while this delivery held
it (the caller then cancels the provider's task: the cancel published no wake-up, the
lease being live), and ``LEASE_LOST`` when another delivery owns it. An ending write
whose answer was lost but which landed (:func:`ended_here`) is still notified here:
nobody else would.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle, timeline
from kiln.core.errors import (
    CanceledError,
    ConfigError,
    KilnError,
    LeaseLostError,
    RetryableError,
)
from kiln.core.job import Change, Job, JobStatus
from kiln.providers.base import TaskProvider
from kiln.runtime import dispatch, notify
from kiln.runtime.outcomes import RunOutcome

logger = log.get("worker")


def lease_owner(services: Services, token: str) -> str:
    """Who holds a job's lease for one delivery: this process and the delivery's claim
    ``token``. A process runs several deliveries at once, so a delivery that outlived its
    lease must not pass the ownership checks of a later delivery of the same job there."""
    return f"{services.worker_id}/{token}"


def task_started(services: Services, job_id: str) -> bool:
    current = services.store.get(job_id)
    return current is None or bool(current.server.provider_task_id)


def ended_here(services: Services, job_id: str, token: str, status: JobStatus,
               code: str | None = None) -> bool:
    """Whether this delivery's own ending write landed although its answer was lost: the
    SDK's retry of a committed write decided again on the ended job (``LeaseLostError``),
    or the call timed out (``RetryableError``). The job then has ``status`` (and error
    ``code``), still carries the delivery's claim ``token`` (an ending keeps it; only
    the claim of a later delivery replaces it) and its notification is claimed, unsent.

    Raises:
        RetryableError: the job cannot be read now (the caller's delivery is nacked).
    """
    job = services.store.get(job_id)
    return (job is not None and job.status is status
            and job.server.claim_token == token
            and (job.server.notify or {}).get("state") == lifecycle.NOTIFY_CLAIMED
            and (code is None or (job.error or {}).get("code") == code))


def _landed(lost: KilnError, services: Services, job_id: str, token: str,
            code: str) -> bool:
    """After ``lost`` from a failure's write: True when it landed (notify it); False for
    a lease lost to another delivery; a retryable error that did not land is raised."""
    if ended_here(services, job_id, token, JobStatus.FAILED, code):
        log.event(logger, "failure written though its answer was lost", logging.WARNING,
                  code=lost.code)
        return True
    if isinstance(lost, RetryableError):
        raise lost
    return False


def complete(job_id: str, services: Services, token: str, result: Mapping[str, Any],
             provenance: Mapping[str, Any] | None,
             steps: Mapping[str, dt.datetime | None]) -> None:
    """Write the completion, decided on a plain read and written on it: two calls instead
    of a transaction's three (the transaction only if the job was written meanwhile;
    docs/benchmarks.md). ``steps`` go on the timeline with ``completed``, the time of the
    decision (after the read). A write that landed although its answer was lost counts
    as written (:func:`ended_here`): its notification is then the caller's to send.

    Raises:
        CanceledError, LeaseLostError: the job is not this delivery's to complete.
        RetryableError: the store is unreachable and the write did not land.
    """
    try:
        services.store.transact(job_id, lambda current: (timeline.carry(
            lifecycle.complete(current, worker_id=lease_owner(services, token), result=result,
                               provenance=provenance),
            {**steps, "completed": services.clock.now()}), True),
            seen=services.store.get(job_id))
    except (LeaseLostError, RetryableError) as lost:
        if not ended_here(services, job_id, token, JobStatus.COMPLETED):
            raise
        log.event(logger, "completion written though its answer was lost", logging.WARNING,
                  code=lost.code)


def requeue(job_id: str, services: Services, job: Job, exc: RetryableError, *,
            token: str) -> RunOutcome:
    """The provider is at capacity (429) and no task began: back to the queue, the attempt
    not spent, the provider's window narrowed for a while."""
    try:
        delay = exc.retry_after or services.settings.retry_backoff_seconds
        services.store.transact(job_id, lambda current: (lifecycle.requeue(
            current, worker_id=lease_owner(services, token), now=services.clock.now(), delay=delay), None))
    except CanceledError:
        return RunOutcome.CANCELED
    except LeaseLostError:
        return RunOutcome.LEASE_LOST
    dispatch.provider_refused(services, job, exc.retry_after)
    log.event(logger, "provider at capacity; job back in the queue", logging.WARNING,
              retryAfter=exc.retry_after)
    return RunOutcome.QUEUED


def fail(job_id: str, services: Services, code: str, message: str, *, token: str,
         steps: Mapping[str, dt.datetime | None] | None = None,
         task_left: bool = False) -> RunOutcome:
    """Fail the job for good (``token``: this delivery's claim, to recognise its own write
    when the answer is lost) and notify. ``task_left``: its remote task may still run
    (``lifecycle.remote_task_left``): the caller stops it, or a redelivery does."""
    left = Change({}, {"taskLeft": True}) if task_left else Change({}, {})
    try:
        services.store.transact(job_id, lambda job: (timeline.carry(lifecycle.fail(
            job, code=code, message=message, worker_id=lease_owner(services, token)) | left,
            {**(steps or {}), "failed": services.clock.now()}), None))
    except CanceledError:
        return RunOutcome.CANCELED
    except (LeaseLostError, RetryableError) as lost:
        if not _landed(lost, services, job_id, token, code):
            return RunOutcome.LEASE_LOST
    log.event(logger, "job failed", logging.WARNING, code=code)
    notify.deliver(services, job_id)
    return RunOutcome.FAILED


def retry_later(job_id: str, services: Services, exc: RetryableError, *, token: str,
                forget_task: bool = False,
                steps: Mapping[str, dt.datetime | None] | None = None) -> RunOutcome:
    """Release for another attempt (and raise to nack), or fail if none are left
    (``token`` as for :func:`fail`)."""
    def decide(job: Job | None) -> tuple[Any, float | None]:
        now = services.clock.now()
        change, backoff = lifecycle.retry_or_fail(job, worker_id=lease_owner(services, token), now=now,
                                                  policy=services.policy, error=exc,
                                                  forget_task=forget_task)
        step = "failed" if backoff is None or job is None else timeline.step("released",
                                                                             job.attempts)
        return timeline.carry(change, {**(steps or {}), step: now}), backoff

    try:
        backoff = services.store.transact(job_id, decide)
    except CanceledError:
        return RunOutcome.CANCELED
    except (LeaseLostError, RetryableError) as lost:
        # A release whose answer was lost leaves a pending job the sweeper re-publishes.
        if not _landed(lost, services, job_id, token, exc.code):
            return RunOutcome.LEASE_LOST
        backoff = None
    if backoff is None:
        log.event(logger, "job failed", logging.WARNING, code=exc.code)
        notify.deliver(services, job_id)
        return RunOutcome.FAILED
    log.event(logger, "job released for retry", logging.WARNING, code=exc.code,
              backoffSeconds=backoff)
    raise exc


def cancel_left(services: Services, job: Job) -> None:
    """Cancel the remote task of a job that ended without it (:func:`cancel_remote`) with
    the provider it was submitted to; one that can no longer be built leaves it to expire."""
    try:
        cancel_remote(services.provider_of(job), job.id, services)
    except ConfigError:
        log.event(logger, "provider gone; remote task left to expire", logging.WARNING,
                  provider=job.server.provider)


def cancel_remote(provider: Any, job_id: str, services: Services) -> None:
    """Cancel the provider's task of a job that ended without it (canceled, failed past
    its maximum age, or out of attempts while the task ran: ``taskLeft``), where the
    provider allows it.

    Raises:
        RetryableError: the provider's cancel failed for now (a 5xx, a timeout, a 429):
            the caller's delivery nacks, and its redelivery finds the job canceled with
            its task left (``lifecycle.remote_task_left``) and cancels again.
    """
    if not isinstance(provider, TaskProvider):
        return
    job = services.store.get(job_id)
    if job is None or not job.server.provider_task_id or job.server.remote_canceled:
        return
    task_id = job.server.provider_task_id
    try:
        provider.cancel(task_id)
    except RetryableError as exc:
        log.event(logger, "provider cancel failed; trying again", logging.WARNING,
                  code=exc.code)
        raise
    except KilnError as exc:  # refused for good (the provider cannot cancel): nothing to do
        log.event(logger, "provider cancel refused", logging.WARNING, code=exc.code)
        return
    log.event(logger, "provider task canceled", taskId=task_id)
    try:
        services.store.apply(job_id, lifecycle.remote_canceled())
    except KilnError as exc:  # a later delivery may ask again; the task is canceled already
        log.event(logger, "provider cancel not recorded", logging.WARNING, code=exc.code)
