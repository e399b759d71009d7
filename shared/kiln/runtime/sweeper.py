"""The sweeper: no accepted job is ever left without an end.

Runs every minute (Cloud Scheduler; locally a loop in the stack). For each pending or
running job the lifecycle decides (``sweep_action``): re-publish one whose publish may
have been lost or whose lease expired (the next claim resumes or fails it), send a new
check to one waiting on its remote task whose scheduled check is overdue, or fail one
past its deadline or its queue TTL (``expired``). An ended job whose notification is
still only claimed :data:`UNSENT_GRACE_SECONDS` after its end is notified
(``_renotify``): its worker died between the ending write and the send, or that write's
answer was lost. A pass of the fair queue then starts the waiting jobs whose places are
free (``dispatch.dispatch``). Then each channel retries the end-of-job messages it
deferred because its chat could not be reached (``notify.redeliver``). Every change
goes through the same lifecycle transactions as the worker, so sweepers may run
concurrently with each other and with workers.
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
#: An ended job's notification still unsent this long after the end was lost (a worker
#: sends it within a second of its ending write): the sweeper sends it. Long enough that
#: a slow send in flight is not sent twice.
UNSENT_GRACE_SECONDS = 300.0
#: ``notify.state`` while the sweeper sends a lost notification (``notify.deliver`` then
#: records ``sent``, ``retrying`` or ``error``): taken in a transaction, so two
#: overlapping passes send it once.
RESENDING = "resending"


class SweepCount(enum.StrEnum):
    """The counts a sweep reports."""

    SCANNED = "scanned"
    FAILED_EXPIRED = "failed_expired"
    REPUBLISHED_PENDING = "republished_pending"
    REPUBLISHED_PROCESSING = "republished_processing"
    RECHECKED = "rechecked"
    PUBLISH_ERRORS = "publish_errors"
    REDELIVERED = "redelivered"
    RENOTIFIED = "renotified"  # ended jobs whose lost notification this pass sent
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
        for job in services.store.find(status=status.value, limit=SCAN_LIMIT, rotate=True):
            report[SweepCount.SCANNED] += 1
            try:
                _sweep_job(services, job, status, now, stale_after, report)
            except Exception as exc:  # one job that cannot be swept never stops the pass
                report[SweepCount.JOB_ERRORS] += 1
                with log.job_context(job.id):
                    log.event(logger, "job not swept", logging.ERROR, error=type(exc).__name__)
    _renotify(services, now, report)
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


def _renotify(services: Services, now: dt.datetime, report: Counter[str]) -> None:
    """Send each lost end notification once (at most once per pass and across passes:
    the first to move it from ``claimed`` sends it), giving back the job's places as its
    worker would have. The channels guard against the rare second send: the push's
    collapse key is the job id, a webhook event's id is stable per job and type."""
    cutoff = now - dt.timedelta(seconds=UNSENT_GRACE_SECONDS)

    def take(job: Job | None) -> tuple[Change | None, bool]:
        claimed = job is not None and job.terminal and \
            (job.server.notify or {}).get("state") == lifecycle.NOTIFY_CLAIMED
        return (lifecycle.notified(RESENDING, {}), True) if claimed else (None, False)

    try:
        ended = services.store.unnotified(SCAN_LIMIT)
    except RetryableError:
        report[SweepCount.JOB_ERRORS] += 1
        return
    for job in ended:
        if job.completed_at is None or job.completed_at > cutoff:
            continue
        with log.job_context(job.id):
            try:
                if not services.store.transact(job.id, take):
                    continue
                log.event(logger, "lost end notification sent", logging.WARNING,
                          status=job.status.value)
                notify.deliver(services, job.id)
                dispatch.release_places(services, job.id, job.server.pools)
                report[SweepCount.RENOTIFIED] += 1
            except Exception as exc:  # the next pass (or none: sent at most once) goes on
                report[SweepCount.JOB_ERRORS] += 1
                log.event(logger, "lost notification not sent", logging.ERROR,
                          error=type(exc).__name__)


def _expire(services: Services, job_id: str, now: dt.datetime) -> bool:
    """Fail a job past its maximum age, notify, and give back its places (the pass that
    follows in this sweep may start the next job in them)."""
    def decide(job: Job | None) -> tuple[Change | None, list[str] | None]:
        change = lifecycle.expire(job, now=now)
        return change, list(job.server.pools) if change is not None and job else None

    pools = services.store.transact(job_id, decide)
    if pools is None:
        return False
    with log.job_context(job_id):
        log.event(logger, "job failed: past its maximum age", logging.WARNING)
        notify.deliver(services, job_id)
        dispatch.release_places(services, job_id, pools)
    return True
