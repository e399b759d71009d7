"""How a delivery ends a job it could not complete: failed, released for another attempt,
or put back in the fair queue — each decided by ``kiln.core.lifecycle``, then notified."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle, timeline
from kiln.core.errors import CanceledError, LeaseLostError, RetryableError
from kiln.core.job import Job
from kiln.runtime import dispatch, notify
from kiln.runtime.outcomes import RunOutcome

logger = log.get("worker")


def task_started(services: Services, job_id: str) -> bool:
    current = services.store.get(job_id)
    return current is None or bool(current.server.provider_task_id)


def requeue(job_id: str, services: Services, job: Job, exc: RetryableError) -> RunOutcome:
    """The provider is at capacity (429) and no task began: back to the queue, the attempt
    not spent, the provider's window narrowed for a while."""
    try:
        delay = exc.retry_after or services.settings.retry_backoff_seconds
        services.store.transact(job_id, lambda current: (lifecycle.requeue(
            current, worker_id=services.worker_id, now=services.clock.now(), delay=delay), None))
    except (CanceledError, LeaseLostError):
        return RunOutcome.LEASE_LOST
    dispatch.provider_refused(services, job, exc.retry_after)
    log.event(logger, "provider at capacity; job back in the queue", logging.WARNING,
              retryAfter=exc.retry_after)
    return RunOutcome.QUEUED


def fail(job_id: str, services: Services, code: str, message: str, *,
          steps: Mapping[str, dt.datetime | None] | None = None) -> RunOutcome:
    try:
        services.store.transact(job_id, lambda job: (timeline.carry(lifecycle.fail(
            job, code=code, message=message, worker_id=services.worker_id),
            {**(steps or {}), "failed": services.clock.now()}), None))
    except (CanceledError, LeaseLostError):
        return RunOutcome.LEASE_LOST
    log.event(logger, "job failed", logging.WARNING, code=code)
    notify.deliver(services, job_id)
    return RunOutcome.FAILED


def retry_later(job_id: str, services: Services, exc: RetryableError, *,
                 forget_task: bool = False,
                 steps: Mapping[str, dt.datetime | None] | None = None) -> RunOutcome:
    """Release for another attempt (and raise to nack), or fail if none are left."""
    def decide(job: Job | None) -> tuple[Any, float | None]:
        now = services.clock.now()
        change, backoff = lifecycle.retry_or_fail(job, worker_id=services.worker_id, now=now,
                                                  policy=services.policy, error=exc,
                                                  forget_task=forget_task)
        step = "failed" if backoff is None or job is None else timeline.step("released",
                                                                             job.attempts)
        return timeline.carry(change, {**(steps or {}), step: now}), backoff

    try:
        backoff = services.store.transact(job_id, decide)
    except (CanceledError, LeaseLostError):
        return RunOutcome.LEASE_LOST
    if backoff is None:
        log.event(logger, "job failed", logging.WARNING, code=exc.code)
        notify.deliver(services, job_id)
        return RunOutcome.FAILED
    log.event(logger, "job released for retry", logging.WARNING, code=exc.code,
              backoffSeconds=backoff)
    raise exc
