"""Checks of jobs that wait on a remote task: nothing sleeps while a provider works.

A worker that submits (or polls) a remote task parks the job (``lifecycle.park``) and
sends its next check: a job message with the check's number, published later by the
scheduler (Cloud Tasks) or at once through the queue when it is due now. Only the job's
live check runs it (``lifecycle.claim``), so duplicate, late and superseded checks are
acked and forgotten. A provider callback *wakes* the job (a new live check, due now); the
sweeper *rechecks* a job whose check never came. Either way the check polls the provider:
a callback only says "look now", the poll is the truth.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import RetryableError
from kiln.core.job import Change, Job
from kiln.core.lifecycle import Check

logger = log.get("checks")


#: After the scheduler fails, how long a worker process sends no check at once in its
#: stead: a blip costs one early poll, an outage (a deleted queue, a lost permission) does
#: not make every waiting job poll its provider in a loop; their checks are then the
#: sweeper's (``recheck``).
EARLY_CHECK_PAUSE = 60.0
_early: weakref.WeakKeyDictionary[Services, float] = weakref.WeakKeyDictionary()
_early_lock = threading.Lock()


def send(services: Services, job_id: str, check: Check, *, reason: str = "check") -> bool:
    """Publish ``check``: scheduled when it is due later, through the queue when due now.
    If the scheduler fails, check at once instead (an early check costs one poll), once in
    ``EARLY_CHECK_PAUSE`` per process; otherwise, or if that fails too, the sweeper repairs
    the job (``recheck``). False when nothing was sent."""
    due_later = check.at > services.clock.now()
    try:
        if due_later:
            services.scheduler.schedule(job_id, check.number, check.at)
        else:
            services.queue.publish(job_id, reason=reason, check=check.number)
        return True
    except RetryableError as exc:
        log.event(logger, "check not scheduled", logging.WARNING, code=exc.code,
                  check=check.number)
    with _early_lock:  # (per process: its one Services)
        now = services.clock.monotonic()
        early = now - _early.get(services, -math.inf) >= EARLY_CHECK_PAUSE
        if due_later and early:
            _early[services] = now
    if due_later and early:
        try:
            services.queue.publish(job_id, reason=f"{reason}-now", check=check.number)
            return True
        except RetryableError:
            pass
    log.event(logger, "check lost; the sweeper will send another", logging.WARNING,
              check=check.number)
    return False


def wake(services: Services, job_id: str, *, reason: str) -> bool:
    """Check a job at once (its provider says the task ended). Coalesced: a job with a due
    check gets no second one; a job a worker holds is checked again when it parks; an
    ended or unknown job is left alone. True when a check was sent or a worker marked."""
    now = services.clock.now()

    def decide(job: Job | None) -> tuple[Change | None, tuple[bool, Check | None]]:
        change, check = lifecycle.wake(job, now=now)
        return change, (change is not None, check)

    changed, check = services.store.transact(job_id, decide)
    if check is not None:
        return send(services, job_id, check, reason=reason)
    return changed


def recheck(services: Services, job_id: str) -> bool:
    """Send a new live check for a waiting job whose scheduled one is overdue (lost)."""
    now = services.clock.now()

    def decide(job: Job | None) -> tuple[Change | None, Check | None]:
        return lifecycle.recheck(job, now=now)

    check = services.store.transact(job_id, decide)
    return check is not None and send(services, job_id, check, reason="sweep-check")
