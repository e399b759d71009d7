"""The sweeper: no accepted job is ever left without an end.

Runs every minute (Cloud Scheduler; locally a loop in the stack). It re-publishes
pending jobs whose publish may have been lost and running jobs whose lease expired (the
next claim resumes or fails them), and fails jobs past their maximum age. Every change
goes through the same lifecycle transactions as the worker, so sweepers may run
concurrently with each other and with workers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

from kiln import log
from kiln.adapters.firestore import utcnow
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import RetryableError, TransitionError
from kiln.core.job import JobStatus
from kiln.runtime import notify

logger = log.get("sweeper")

SCAN_LIMIT = 500


def sweep(services: Services, *, now: dt.datetime | None = None) -> dict[str, int]:
    """One pass; returns counts of what it did (also logged)."""
    settings = services.settings
    now = now or utcnow()
    report: Counter[str] = Counter()
    stale = now - dt.timedelta(seconds=settings.pending_republish_seconds)
    for status in (JobStatus.PENDING, JobStatus.PROCESSING):
        for job_id, job in services.store.find(status=status.value, limit=SCAN_LIMIT):
            report["scanned"] += 1
            action = _decide(job, now=now, stale=stale)
            if action == "fail":
                if _fail_expired(services, job_id):
                    report["failed_expired"] += 1
            elif action == "republish":
                try:
                    services.queue.publish(job_id, reason=f"sweep-{status.value}")
                    report[f"republished_{status.value}"] += 1
                    # Remembered, so a backlog is not re-published again every pass.
                    services.store.update(job_id, {"_server.republishedAt": now})
                except RetryableError:
                    report["publish_errors"] += 1
    result = dict(report)
    log.event(logger, "sweep done", **result)
    return result


def _decide(job: dict[str, Any], *, now: dt.datetime, stale: dt.datetime) -> str | None:
    srv = lifecycle.server(job)
    deadline = srv.get("deadlineAt")
    if deadline is not None and now >= deadline:
        return "fail"
    republished = srv.get("republishedAt")
    if republished is not None and republished > stale:
        return None  # re-published recently: that message is still on its way
    if job["status"] == JobStatus.PROCESSING.value:
        return None if lifecycle.lease_live(job, now) else "republish"
    not_before = srv.get("notBefore")
    if not_before is not None:
        return "republish" if now >= not_before else None
    updated = job.get("updatedAt")
    return "republish" if updated is None or updated <= stale else None


def _fail_expired(services: Services, job_id: str) -> bool:
    def decide(job: dict[str, Any] | None) -> tuple[Any, bool]:
        if job is None or JobStatus(job["status"]).terminal:
            return None, False
        try:
            return lifecycle.fail(job, code="deadline_exceeded",
                                  message="The job took too long and was stopped."), True
        except TransitionError:
            return None, False

    if not services.store.transact(job_id, decide):
        return False
    with log.job_context(job_id):
        log.event(logger, "job failed: past its maximum age", logging.WARNING)
        notify.deliver(services, job_id)
    return True
