"""The fair queue's start: a waiting job gets its places, then a worker is woken.

A job holds two places while it runs (``kiln.ports.Slots``): one of its owner's pool
(``user:{uid}``, the plan's running limit) and one of its provider account's pool
(``provider:{name}``, ``KILN_PROVIDER_CAPACITY``, narrowed for a while after a provider
429). Acceptance takes them at once when both are free; otherwise the job waits
(``pending``, stage ``queued``, ``queueReason``). A pass (:func:`dispatch`) runs when a
job ends (the worker), after a cancel, and on every sweep: it orders the waiting jobs
fairly (``kiln.core.fairness``) and starts those whose places are free. A place whose
holder ended counts as free in a pass, so a lost release costs nothing but a moment (a
holder gone or still queued: after :data:`FRESH_PLACE_SECONDS`, see :func:`_ended`).
Starting is a lifecycle transition (``lifecycle.start``), so two passes never start a
job twice; every other guarantee is the worker's and the sweeper's as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterable

from kiln import log
from kiln.compose import Services
from kiln.core import fairness, lifecycle
from kiln.core.errors import KilnError, RetryableError
from kiln.core.job import Change, Job, JobStatus
from kiln.core.plans import Plan

logger = log.get("dispatch")

#: Waiting jobs one pass looks at (each costs two document reads).
SCAN_LIMIT = 200
#: A place held this long by a job that is still (or again) queued, or gone, was left
#: behind (its taker crashed before its start): a pass takes it. Younger, its holder may
#: be starting now (milliseconds, seconds while the store retries).
FRESH_PLACE_SECONDS = 60.0
RUNNING_LIMIT, PROVIDER_CAPACITY = "running_limit", "provider_capacity"


def job_plan(services: Services, job: Job) -> Plan:
    table = services.settings.plan_table()
    return table.get(job.server.plan or "", table[services.settings.default_plan])


def provider_pool(services: Services, kind: str) -> tuple[str, int, int]:
    """The pool of the provider account that makes ``kind``: its capacity and its usable
    window now (smaller for a while after a provider 429)."""
    settings = services.settings
    name = settings.image_provider if kind == "image" else settings.model_provider
    table = settings.capacity_table()
    pool, capacity = f"provider:{name}", table.get(name, table["*"])
    return pool, capacity, services.slots.window(pool, capacity, services.clock.now())


def user_pool(uid: str) -> str:
    return f"user:{uid}"


def take_places(services: Services, *, job_id: str, uid: str, kind: str, plan: Plan,
                done: Callable[[str, float], bool] | None = None,
                look_first: bool = True) -> tuple[list[str], str | None]:
    """Hold the user's and the provider's place for ``job_id``: (the pools, None), or
    ([], why it must wait) holding nothing. ``look_first``: read whether the provider's
    pool is full before writing the user's place."""
    pool, capacity, window = provider_pool(services, kind)
    if done is None and look_first and len(services.slots.holders(pool)) >= window:
        # Full (a read, no write): taking the user's place only to give it back would
        # write the user's place document at each arrival.
        return [], PROVIDER_CAPACITY
    mine = user_pool(uid)
    if not services.slots.take(mine, plan.running, job_id, done):
        return [], RUNNING_LIMIT
    if not services.slots.take(pool, capacity, job_id, done,
                               limit=window if window < capacity else None):
        services.slots.release(mine, job_id)
        return [], PROVIDER_CAPACITY
    return [mine, pool], None


def release_places(services: Services, job_id: str, pools: list[str] | tuple[str, ...]) -> None:
    for pool in pools:
        try:
            services.slots.release(pool, job_id)
        except KilnError as exc:  # a pass finds the place free once the job has ended
            log.event(logger, "place not released", logging.WARNING, code=exc.code)


def _ended(services: Services) -> Callable[[str, float], bool]:
    """Whether a place's holder no longer needs it: its job ended; or it is gone or queued
    again and has held the place :data:`FRESH_PLACE_SECONDS` (a job between taking its
    places and its start looks just so: an arrival before its claim, a pass's start
    before its commit, a batch before its documents exist; its place is not free)."""
    def done(job_id: str, held_for: float) -> bool:
        job = services.store.get(job_id)
        if job is not None and job.terminal:
            return True
        taking = job is None or (job.status is JobStatus.PENDING and job.server.queued)
        return taking and held_for >= FRESH_PLACE_SECONDS
    return done


def try_start(services: Services, job: Job) -> str | None:
    """Start one waiting job if its places are free: None when started (or no longer
    waiting), else why it still waits."""
    pool, _capacity, window = provider_pool(services, job.kind)
    done = _ended(services)
    # (A holder that may be done counts as free here: the take decides by the place's age.)
    if sum(1 for holder in services.slots.holders(pool)
           if not done(holder, math.inf)) >= window:
        return PROVIDER_CAPACITY  # full: decided by reads, nothing written
    pools, reason = take_places(services, job_id=job.id, uid=job.uid, kind=job.kind,
                                plan=job_plan(services, job), done=done)
    if reason is not None:
        return reason
    return _start(services, job.id, pools)


def _start(services: Services, job_id: str, pools: list[str]) -> str | None:
    """Leave the queue holding ``pools``. Another dispatcher may have started the same job
    meanwhile with the same places (a place is its holder's: taking it again is a no-op),
    so only places the job does not hold now are given back."""
    def decide(current: Job | None) -> tuple[Change | None, tuple[bool, Job | None]]:
        change = lifecycle.start(current, pools=pools)
        return change, (change is not None, current)

    started, current = services.store.transact(job_id, decide)
    if not started:
        release_unheld(services, current, job_id, pools)
        return None
    try:
        services.queue.publish(job_id, reason="start")
    except RetryableError:  # a started pending job is re-published by the sweeper
        log.event(logger, "start not published; the sweeper will re-publish", logging.WARNING)
    return None


def arrive(services: Services, job: Job) -> list[str]:
    """A new job's first delivery (an arrival: queued, no reason yet): the places it took
    (the caller claims it with them), or none: then why it waits is written on the job
    for its owner to see. A job arriving while others wait for the provider joins them.
    Nothing is read first: each place is a create-if-absent (``Slots.take`` with no
    ``done``), so a free pool costs one write per place.

    Once the reason is written, the pool it names is read again (:func:`look_again`):
    a place that freed meanwhile runs the pass here, so the job is never left waiting
    beside a free place until the sweeper's next pass."""
    reason, plan = PROVIDER_CAPACITY, job_plan(services, job)
    if services.counters.waiting(PROVIDER_CAPACITY) == 0:
        pools, why = take_places(services, job_id=job.id, uid=job.uid, kind=job.kind,
                                 plan=plan, look_first=False)
        if why is None:
            return pools
        reason = why
    _write_reason(services, job.id, reason, None)
    look_again(services, uid=job.uid, plan=plan, waits={(reason, job.kind)})
    return []


def look_again(services: Services, *, uid: str, plan: Plan,
               waits: Iterable[tuple[str, str]]) -> None:
    """Jobs of ``uid`` now wait visibly, each for a ``(reason, kind)`` of ``waits``: read
    each pool they wait for once, and run a pass if one has a free place. A place that
    freed after their take failed but before they waited visibly was released unseen:
    the pass that followed that release may have looked before they waited. A release
    after they wait is followed by a pass that sees them. (A holder that ended without
    giving its place back is counted here: the next pass, or the sweeper's, counts it
    free.) Raises nothing the store raises: the jobs are accepted and wait visibly, and
    the next pass starts them."""
    try:
        for reason, kind in waits:
            if reason == RUNNING_LIMIT:
                pool, places = user_pool(uid), plan.running
            else:
                pool, _capacity, places = provider_pool(services, kind)
            if len(services.slots.holders(pool)) < places:
                dispatch(services)
                return
    except KilnError as exc:
        log.event(logger, "queue pass deferred", logging.WARNING, code=exc.code)


def release_unheld(services: Services, job: Job | None, job_id: str,
                   pools: list[str] | tuple[str, ...]) -> None:
    """Give back ``pools`` taken for ``job_id`` by a start that did not commit, except
    those the job (as last read) holds: a place is its holder's, so a concurrent start
    of the same job took the same ones."""
    held = job.server.pools if job is not None and not job.terminal else ()
    release_places(services, job_id, [pool for pool in pools if pool not in held])


def dispatch(services: Services, *, positions: bool = False) -> int:
    """One pass: start the waiting jobs whose places are free, fairly; returns how many
    started. ``positions``: also write each waiting job's ``queuePosition`` (the sweeper's
    pass, once a minute, so no job document is written more often)."""
    now = services.clock.now()
    # A window of the waiting jobs that moves from pass to pass (``rotate``): with more
    # waiting than a pass reads, a fixed window left the others waiting until they expired.
    waiting = {job.id: job for job in services.store.find(status=JobStatus.PENDING.value,
                                                          limit=SCAN_LIMIT, waiting=True,
                                                          rotate=True)
               if job.server.queued and not lifecycle.queue_expired(job, now)
               and (job.server.not_before is None or job.server.not_before <= now)}
    ordered = fairness.order(
        (fairness.Waiting(job.id, job.uid, job.server.priority,
                          job.server.queued_at or job.created_at or now)
         for job in waiting.values()),
        now=now, ageing_seconds=services.settings.queue_ageing_seconds)
    started, full, limited = 0, set(), set()
    still: list[tuple[Job, str]] = []
    for item in ordered:
        job = waiting[item.job_id]
        pool = provider_pool(services, job.kind)[0]
        if job.uid in limited:
            still.append((job, RUNNING_LIMIT))
            continue
        if pool in full:
            still.append((job, PROVIDER_CAPACITY))
            continue
        try:
            reason = try_start(services, job)
        except RetryableError as exc:
            log.event(logger, "start deferred", logging.WARNING, code=exc.code)
            still.append((job, job.queue_reason or RUNNING_LIMIT))
            continue
        if reason is None:
            started += 1
        else:
            (limited.add(job.uid) if reason == RUNNING_LIMIT else full.add(pool))
            still.append((job, reason))
    for position, (job, reason) in enumerate(still, start=1):
        at = position if positions else job.queue_position
        if lifecycle.queue_reason(job, reason, at):
            _write_reason(services, job.id, reason, at)
    if started:
        log.event(logger, "queue pass", started=started, waiting=len(still))
    return started


def _write_reason(services: Services, job_id: str, reason: str, position: int | None) -> None:
    """Why a job still waits, decided again on the job as it is now: another pass may
    have started it since this one read it (a blind write would mark a running job
    waiting)."""
    def decide(current: Job | None) -> tuple[Change | None, None]:
        return (lifecycle.queue_reason(current, reason, position) if current is not None
                else None), None

    services.store.transact(job_id, decide)


def after_end(services: Services, job_id: str) -> int:
    """A job ended (or was canceled): give back its places and start who is next."""
    job = services.store.get(job_id)
    if job is not None and job.terminal:
        release_places(services, job_id, job.server.pools)
    return dispatch(services)


def provider_refused(services: Services, job: Job, retry_after: float | None) -> None:
    """A provider said 429 before the task began and the job goes back to the queue:
    halve the provider's window for a while, and give back the job's places (by its id:
    ``job`` may be as read before its claim, which wrote them)."""
    pool = narrow_provider(services, job.kind, retry_after)
    release_places(services, job.id, (user_pool(job.uid), pool))


def narrow_provider(services: Services, kind: str, retry_after: float | None) -> str:
    """Halve the window of ``kind``'s provider for its backoff (or ``retry_after``, if
    longer); the provider's pool. A job retried outside the queue keeps its places: its
    next attempt runs on them, and they are given back when it ends."""
    pool, _capacity, window = provider_pool(services, kind)
    until = services.clock.now() + dt.timedelta(
        seconds=max(services.settings.provider_backoff_seconds, retry_after or 0))
    services.slots.narrow(pool, max(1, window // 2), until)
    return pool
