"""Admission, for every channel: the caller's plan, its daily quota, and backpressure.

``admit`` is called before a job (or a batch of ``count`` jobs) is created: over the
plan's daily quota → :class:`~kiln.core.errors.QuotaExceededError` (HTTP 429, a polite
chat reply), too many jobs waiting across Kiln → :class:`~kiln.core.errors.OverloadedError`
(HTTP 503); either way nothing is created. Within both, the jobs are accepted and wait
for their places in the fair queue (``kiln.runtime.dispatch``). The counters are sharded
and the waiting count is a query (``kiln.ports.Counters``): no hot document; see
docs/architecture.md ("Fair queues").
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass

from kiln import log
from kiln.compose import Services
from kiln.core.errors import KilnError, OverloadedError, QuotaExceededError, ValidationError
from kiln.core.plans import Plan

logger = log.get("ingress")

#: How long a caller refused for backpressure is asked to wait.
OVERLOADED_RETRY_SECONDS = 30


@dataclass(frozen=True)
class Admission:
    """What admission granted: ``count`` jobs for ``uid`` on ``plan``."""

    uid: str
    channel: str
    plan: Plan
    count: int = 1
    quota_key: str = ""
    tickets: tuple[int, ...] = ()
    #: False: the tickets are only reserved (``admit(defer=True)``); acceptance takes them
    #: beside the job's commit (``kiln.runtime.accept``).
    taken: bool = True


def plan_for(services: Services, *, uid: str, channel: str, claimed: str | None) -> Plan:
    """The caller's plan: an operator's grant (``KILN_PLAN_GRANTS``) first; a Telegram
    chat's from ``KILN_TELEGRAM_PLAN``; otherwise the plan its verified credentials carry
    (an app user's custom claim, an API key's tenant), else ``KILN_DEFAULT_PLAN``. A
    claimed plan the table lacks falls back to the default (logged)."""
    settings = services.settings
    table = settings.plan_table()
    granted = settings.grants().get(uid)
    if granted is not None:
        return table[granted]
    if channel == "telegram":
        return table[settings.telegram_plan]
    if claimed is not None:
        if claimed in table:
            return table[claimed]
        log.event(logger, "unknown plan claimed; default plan used", logging.WARNING,
                  plan=claimed[:40])
    return table[settings.default_plan]


def quota_key(uid: str, day: str) -> str:
    return f"quota:{uid}:{day}"


def admit(services: Services, *, uid: str, channel: str, plan: str | None,
          count: int = 1, holder: str = "", defer: bool = False) -> Admission:
    """Admit ``count`` new jobs of ``uid`` on its ``plan`` (the claimed plan name);
    ``holder``: the job the tickets pay for, when its id is known (kept on each ticket).
    ``defer``: reserve the tickets' numbers without writing them (usually no read either:
    this process knows the next numbers); the caller takes them (``accept_job`` does, at
    the same time as it creates the job).

    Raises:
        ValidationError: ``batch_exceeds_quota``: more jobs at once than the plan allows
            in a day; ``plan_allows_no_jobs``: a plan of 0 jobs a day.
        OverloadedError: more than ``KILN_MAX_WAITING`` jobs would be waiting to start.
        QuotaExceededError: the plan's jobs per day would be exceeded.
        RetryableError: the counters are unavailable (nothing was admitted).
    """
    settings = services.settings
    granted = plan_for(services, uid=uid, channel=channel, claimed=plan)
    if granted.daily_jobs < 1:  # no day would ever take one: not a 429 until midnight
        raise ValidationError(
            "plan_allows_no_jobs", f"The {granted.name} plan allows no jobs; ask for "
            "another plan.")
    if count > 1 and count > granted.daily_jobs:  # no day would ever take it: not a 429
        raise ValidationError(
            "batch_exceeds_quota", f"This batch has {count} jobs, more than the "
            f"{granted.daily_jobs} a day the {granted.name} plan allows; split it.",
            field="items")
    # A soft limit: a fresh instance admits until its first count arrives (one query, in
    # the background) rather than make its first request wait on it (docs/architecture.md).
    if services.counters.waiting(unknown=0) + count > settings.max_waiting:
        raise OverloadedError("Kiln has too many jobs waiting to start; please try again "
                              "in a little while.", code="overloaded",
                              retry_after=OVERLOADED_RETRY_SECONDS)
    now = services.clock.now().astimezone(dt.UTC)
    key = quota_key(uid, now.date().isoformat())
    counters = services.counters
    tickets = counters.reserve(key, count, granted.daily_jobs) if defer \
        else counters.take(key, count, granted.daily_jobs, holder)
    if tickets is None:
        raise over_quota(Admission(uid, channel, granted, count, key), now)
    return Admission(uid, channel, granted, count, key, tuple(tickets), taken=not defer)


def over_quota(admission: Admission, now: dt.datetime) -> QuotaExceededError:
    """The refusal of an admission whose reserved tickets were all taken meanwhile."""
    now = now.astimezone(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    plan = admission.plan
    return QuotaExceededError(
        f"You have used today's {plan.daily_jobs} jobs on the {plan.name} plan "
        f"(this request needs {admission.count}). The quota resets at midnight UTC.",
        code="quota_exceeded", retry_after=max(1, math.ceil((midnight - now).total_seconds())))


def give_back(services: Services, admission: Admission | None) -> None:
    """Return the quota of an admission whose job was not created (best effort)."""
    if admission is None or not admission.tickets or not admission.taken:
        return
    try:
        services.counters.give_back(admission.quota_key, list(admission.tickets))
    except KilnError as exc:
        log.event(logger, "quota not given back", logging.WARNING, code=exc.code)
