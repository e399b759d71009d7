"""The sweeper: no accepted job is ever left without an end.

Runs every minute (Cloud Scheduler; locally a loop in the stack). For each pending or
running job the lifecycle decides (``sweep_action``): re-publish one whose publish may
have been lost or whose lease expired (the next claim resumes or fails it), send a new
check to one waiting on its remote task whose scheduled check is overdue, or fail one
past its deadline or its queue TTL (``expired``). An ended job whose notification is
still only claimed :data:`UNSENT_GRACE_SECONDS` after its end is notified
(``_renotify``): its worker died between the ending write and the send, or that write's
answer was lost; one ended more than :data:`UNSENT_MAX_AGE_SECONDS` ago is abandoned
instead (``notify.state`` ``abandoned``: news that late is noise). A pass of the fair
queue then starts the waiting jobs whose places are free (``dispatch.dispatch``). Then
each channel retries the end-of-job messages it deferred because its chat could not be
reached (``notify.redeliver``), and open batches whose jobs have all ended are announced.
Each of these steps is guarded: one that fails is counted (``job_errors``) and logged,
and the others still run. Every change goes through the same lifecycle transactions as
the worker, so sweepers may run concurrently with each other and with workers.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import logging
from collections import Counter
from collections.abc import Callable

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import RetryableError
from kiln.core.job import Change, Job, JobStatus
from kiln.core.lifecycle import SweepAction
from kiln.runtime import actions, batch_end, checks, dispatch, notify

logger = log.get("sweeper")

SCAN_LIMIT = 500
#: An ended job's notification still unsent this long after the end was lost (a worker
#: sends it within a second of its ending write): the sweeper sends it. Long enough that
#: a slow send in flight is not sent twice.
UNSENT_GRACE_SECONDS = 300.0
#: A lost notification of a job that ended longer ago than this is not sent but
#: abandoned: a push or chat message that late is noise, and claims left by older code
#: (up to the 90 days jobs are kept) would otherwise be sent months late, and fill the
#: window of ``JobStore.unnotified`` for ever.
UNSENT_MAX_AGE_SECONDS = 3600.0
#: ...for an API tenant's webhook event, whose deliveries are retried for days: as long.
UNSENT_MAX_AGE_API_SECONDS = 3 * 86400.0
#: The share of the sweeper's timeout, counted from the pass's start, past which no lost
#: notification is begun (each may take seconds: a push over quota up to 20): the queue
#: pass, chats and batch ends after it get the rest, and a killed pass loses no push.
RENOTIFY_SHARE = 1 / 3


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
    ABANDONED = "notify_abandoned"  # lost notifications too old to send (not sent)
    BATCHES_ENDED = "batches_ended"
    STARTED = "started"  # waiting jobs the queue's pass started
    REINDEXED = "reindexed"  # waiting jobs the queue's pass could not find, now found
    #: jobs, or steps of the pass, that failed (logged; the next pass tries again)
    JOB_ERRORS = "job_errors"


def sweep(services: Services, *, now: dt.datetime | None = None) -> dict[str, int]:
    """One pass; returns counts of what it did (also logged)."""
    now = now or services.clock.now()
    stale_after = services.settings.pending_republish_seconds
    report: Counter[str] = Counter()

    def scan(status: JobStatus) -> None:
        for job in services.store.find(status=status.value, limit=SCAN_LIMIT, rotate=True):
            report[SweepCount.SCANNED] += 1
            try:
                _sweep_job(services, job, status, now, stale_after, report)
            except Exception as exc:  # one job that cannot be swept never stops the pass
                report[SweepCount.JOB_ERRORS] += 1
                with log.job_context(job.id):
                    log.event(logger, "job not swept", logging.ERROR, error=type(exc).__name__)

    for status in (JobStatus.PENDING, JobStatus.PROCESSING):  # (a scan that fails: the rest
        _guarded(report, f"{status.value} scan", functools.partial(scan, status))  # goes on)
    _guarded(report, "renotify", lambda: _renotify(services, now, report))
    _guarded(report, "queue pass", lambda: _queue_pass(services, report))
    # (a chat's redelivery spends what is left of this invocation, begun at ``now``)
    _guarded(report, "channel redelivery",
             lambda: _count(report, SweepCount.REDELIVERED, notify.redeliver(services, now)))
    _guarded(report, "batch ends",
             lambda: _count(report, SweepCount.BATCHES_ENDED, batch_end.sweep(services)))
    result = {str(name): count for name, count in report.items()}
    log.event(logger, "sweep done", **result)
    return result


def _guarded(report: Counter[str], step: str, run: Callable[[], None]) -> None:
    """Run one step of the pass; a failure is counted and logged, never stops the pass
    (e.g. an index Firestore is still building fails its query with FailedPrecondition)."""
    try:
        run()
    except Exception as exc:
        report[SweepCount.JOB_ERRORS] += 1
        log.event(logger, "sweep step failed", logging.ERROR, step=step,
                  error=type(exc).__name__, detail=str(exc)[:500])


def _count(report: Counter[str], name: SweepCount, count: int) -> None:
    if count:
        report[name] += count


def _queue_pass(services: Services, report: Counter[str]) -> None:
    """The fair queue: start whoever's places are free, refresh the positions shown."""
    try:
        _count(report, SweepCount.REINDEXED,
               services.store.reindex_waiting(dispatch.SCAN_LIMIT))
        _count(report, SweepCount.STARTED, dispatch.dispatch(services, positions=True))
    except RetryableError:
        report[SweepCount.PUBLISH_ERRORS] += 1


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
    """Send each lost end notification once (``notify.take``: the one call that moves it
    from ``claimed`` sends it, across passes and workers), giving back the job's places
    as its worker would have, before the send (a retried job's new run may take places
    under the same id meanwhile); abandon those too old to send. Once a backend's event
    meets a passing fault (its emit paused about 4 s between its tries), the other
    backends' events wait for the next pass instead of each pausing as long."""
    cutoff = now - dt.timedelta(seconds=UNSENT_GRACE_SECONDS)
    budget = dt.timedelta(seconds=services.settings.sweeper_timeout_seconds * RENOTIFY_SHARE)
    events_down = False  # a backend's event met a passing fault: the others wait a pass
    # (a query that fails, e.g. while its index builds, fails this step: ``_guarded``)
    for job in services.store.unnotified(SCAN_LIMIT):
        if services.clock.now() - now > budget:  # the rest wait for the next pass
            log.event(logger, "lost notifications left for the next pass", logging.WARNING)
            return
        if job.completed_at is None or job.completed_at > cutoff or \
                (events_down and job.channel in notify.AT_LEAST_ONCE):
            continue
        with log.job_context(job.id):
            try:
                max_age = UNSENT_MAX_AGE_API_SECONDS if job.channel in notify.AT_LEAST_ONCE \
                    else UNSENT_MAX_AGE_SECONDS
                if job.completed_at < now - dt.timedelta(seconds=max_age):
                    if _abandon(services, job.id):
                        report[SweepCount.ABANDONED] += 1
                        log.event(logger, "lost end notification too old; not sent",
                                  logging.WARNING, status=job.status.value,
                                  endedAt=job.completed_at.isoformat())
                    continue
                taken = notify.take(services, job.id)
                if taken is None:
                    continue
                dispatch.release_places(services, job.id, list(taken.server.pools))
                if "error" in notify.send(services, taken):  # (notify logged why)
                    report[SweepCount.JOB_ERRORS] += 1
                    events_down = events_down or job.channel in notify.AT_LEAST_ONCE
                    continue
                log.event(logger, "lost end notification sent", logging.WARNING,
                          status=job.status.value)
                report[SweepCount.RENOTIFIED] += 1
            except Exception as exc:  # the next pass (or none: sent at most once) goes on
                report[SweepCount.JOB_ERRORS] += 1
                log.event(logger, "lost notification not sent", logging.ERROR,
                          error=type(exc).__name__)


def _abandon(services: Services, job_id: str) -> bool:
    """Mark a claimed notification ``abandoned`` (it leaves ``unnotified``) and give back
    the job's places; False when it was no longer claimed."""
    def decide(job: Job | None) -> tuple[Change | None, list[str] | None]:
        if job is None or not job.terminal or \
                (job.server.notify or {}).get("state") != lifecycle.NOTIFY_CLAIMED:
            return None, None
        return lifecycle.notified(lifecycle.NOTIFY_ABANDONED, {}), list(job.server.pools)

    pools = services.store.transact(job_id, decide)
    if pools is None:
        return False
    dispatch.release_places(services, job_id, pools)
    return True


def _expire(services: Services, job_id: str, now: dt.datetime) -> bool:
    """Fail a job past its maximum age, give back its places (the pass that follows in
    this sweep may start the next job in them), then notify. The places are given back
    first, as read by the failure's write: a send takes seconds, and a retry of the job
    meanwhile may take places under the same job id."""
    def decide(job: Job | None) -> tuple[Change | None, Job | None]:
        change = lifecycle.expire(job, now=now)
        return change, job if change is not None else None

    expired = services.store.transact(job_id, decide)
    if expired is None:
        return False
    with log.job_context(job_id):
        log.event(logger, "job failed: past its maximum age", logging.WARNING)
        dispatch.release_places(services, job_id, list(expired.server.pools))
        notify.deliver(services, job_id)
        if expired.server.provider_task_id:  # its paid task may run on: a worker cancels it
            actions.wake_to_cancel(services, job_id)
    return True
