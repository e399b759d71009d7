"""The sweeper: no accepted job is ever left without an end.

Runs every minute (Cloud Scheduler; locally a loop in the stack). For each pending or
running job the lifecycle decides (``sweep_action``): re-publish one whose publish may
have been lost or whose lease expired (the next claim resumes or fails it), send a new
check to one waiting on its remote task whose scheduled check is overdue, or fail one
past its deadline or its queue TTL (``expired``). A pass of the fair queue then starts
the waiting jobs whose places are free (``dispatch.dispatch``). Then each channel
retries the end-of-job messages it deferred because its chat could not be reached
(``notify.redeliver``). Every change goes through the same lifecycle transactions as
the worker, so sweepers may run concurrently with each other and with workers.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections import Counter

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import RetryableError
from kiln.core.job import Change, Job, JobStatus
from kiln.core.lifecycle import SweepAction
from kiln.runtime import batch_end, checks, dispatch, notify

logger = log.get("sweeper")

SCAN_LIMIT = 500


class SweepCount(enum.StrEnum):
    """The counts a sweep reports."""

    SCANNED = "scanned"
    FAILED_EXPIRED = "failed_expired"
    REPUBLISHED_PENDING = "republished_pending"
    REPUBLISHED_PROCESSING = "republished_processing"
    RECHECKED = "rechecked"
    PUBLISH_ERRORS = "publish_errors"
    REDELIVERED = "redelivered"
    BATCHES_ENDED = "batches_ended"
    STARTED = "started"  # waiting jobs the queue's pass started
    REINDEXED = "reindexed"  # waiting jobs the queue's pass could not find, now found
    JOB_ERRORS = "job_errors"  # jobs a pass could not sweep (logged; the next pass tries again)


def sweep(services: Services, *, now: dt.datetime | None = None) -> dict[str, int]:
    """One pass; returns counts of what it did (also logged)."""
    now = now or services.clock.now()
    stale_after = services.settings.pending_republish_seconds
    report: Counter[str] = Counter()
    for status in (JobStatus.PENDING, JobStatus.PROCESSING):
        for job in services.store.find(status=status.value, limit=SCAN_LIMIT):
            report[SweepCount.SCANNED] += 1
            try:
                _sweep_job(services, job, status, now, stale_after, report)
            except Exception as exc:  # one job that cannot be swept never stops the pass
                report[SweepCount.JOB_ERRORS] += 1
                with log.job_context(job.id):
                    log.event(logger, "job not swept", logging.ERROR, error=type(exc).__name__)
    try:  # the fair queue: start whoever's places are free, refresh the positions shown
        reindexed = services.store.reindex_waiting(dispatch.SCAN_LIMIT)
        if reindexed:
            report[SweepCount.REINDEXED] += reindexed
        started = dispatch.dispatch(services, positions=True)
        if started:
            report[SweepCount.STARTED] += started
    except RetryableError:
        report[SweepCount.PUBLISH_ERRORS] += 1
    redelivered = notify.redeliver(services)
    if redelivered:
        report[SweepCount.REDELIVERED] += redelivered
    batches_ended = batch_end.sweep(services)
    if batches_ended:
        report[SweepCount.BATCHES_ENDED] += batches_ended
    result = {str(name): count for name, count in report.items()}
    log.event(logger, "sweep done", **result)
    return result


def _sweep_job(services: Services, job: Job, status: JobStatus, now: dt.datetime,
               stale_after: float, report: Counter[str]) -> None:
    action = lifecycle.sweep_action(job, now=now, stale_after=stale_after)
    if action is SweepAction.EXPIRE:
        if _expire(services, job.id, now):
            report[SweepCount.FAILED_EXPIRED] += 1
    elif action is SweepAction.RECHECK:
        with log.job_context(job.id):
            if checks.recheck(services, job.id):
                report[SweepCount.RECHECKED] += 1
            else:
                report[SweepCount.PUBLISH_ERRORS] += 1
    elif action is SweepAction.REPUBLISH:
        try:
            services.queue.publish(job.id, reason=f"sweep-{status.value}")
            report[SweepCount(f"republished_{status.value}")] += 1
            services.store.apply(job.id, lifecycle.republished(now))
        except RetryableError:
            report[SweepCount.PUBLISH_ERRORS] += 1


def _expire(services: Services, job_id: str, now: dt.datetime) -> bool:
    def decide(job: Job | None) -> tuple[Change | None, bool]:
        change = lifecycle.expire(job, now=now)
        return change, change is not None

    if not services.store.transact(job_id, decide):
        return False
    with log.job_context(job_id):
        log.event(logger, "job failed: past its maximum age", logging.WARNING)
        notify.deliver(services, job_id)
    return True
