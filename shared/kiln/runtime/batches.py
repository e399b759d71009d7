"""Accepting, reading and canceling batches, for app users and API keys alike.

A batch's jobs are created with it in one commit (``kiln.ports.BatchStore.create``), then
published concurrently; a publish that fails leaves a pending job the sweeper publishes,
as for a single job. A replay with the same Idempotency-Key returns the same ids without
publishing again; a key already used for a single job refuses the batch in its commit
(and a batch's key refuses a single job in the job's). See ``kiln.core.batches`` for the
shapes and docs/client-contract.md.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.batches import (
    TERMINAL,
    Batch,
    counts,
    fingerprint,
    item_error,
    item_job_id,
    new_batch_id,
)
from kiln.core.errors import (
    ConflictError,
    KilnError,
    LimitError,
    NotFoundError,
    RetryableError,
    TransitionError,
    ValidationError,
)
from kiln.core.job import NewJob, is_valid_job_id, new_job_id
from kiln.core.plans import Plan
from kiln.core.principal import Principal
from kiln.core.requests import JobRequest
from kiln.runtime import actions, dispatch
from kiln.runtime.accept import check_request
from kiln.runtime.admission import admit, give_back

logger = log.get("ingress")
#: Publishes in flight at once for one batch (the publisher client is thread-safe).
PUBLISH_THREADS = 16
#: How long a batch cancel sends its jobs' events itself (the ingress answers in 60 s).
CANCEL_NOTIFY_SECONDS = 20.0


@dataclass(frozen=True)
class AcceptedBatch:
    batch_id: str
    job_ids: tuple[str, ...]
    created: bool  # False: an idempotent replay


def accept_batch(services: Services, *, principal: Principal, requests: list[JobRequest],
                 idempotency_key: str | None = None) -> AcceptedBatch:
    """Record a batch and its jobs together, then publish them.

    Raises:
        ValidationError: an item's ``options.imageUrl`` is refused (named ``items[i]…``).
        ConflictError: the Idempotency-Key was used for a different request.
        RetryableError: the store is unavailable (nothing was accepted).
    """
    uid = principal.uid
    batch_id = new_batch_id(uid, idempotency_key)
    existing = services.batches.get(batch_id) if idempotency_key else None
    if existing is not None:  # a replay: admitted and checked the first time, costs nothing
        return _replayed(existing, uid, fingerprint(requests))  # (whatever changed since)
    for index, request in enumerate(requests):
        try:
            check_request(request, services.settings)
        except ValidationError as exc:
            raise item_error(index, exc) from None
    # Admitted as many jobs (quota, backpressure); beyond the caller's running limit and the
    # generator's capacity the batch's jobs wait their turns in the fair queue.
    try:
        admission = admit(services, uid=uid, channel=principal.channel, plan=principal.plan,
                          count=len(requests))
    except LimitError:
        # A request with the same key, racing this one, made the batch meanwhile (its
        # tickets hid the quota from this one): this is its replay, or a 422.
        try:
            existing = services.batches.get(batch_id) if idempotency_key else None
            single = existing is None and idempotency_key is not None and \
                services.store.get(new_job_id(uid, idempotency_key)) is not None
        except KilnError:
            existing, single = None, False  # the store cannot say: the refusal stands
        if single:  # the key's mistake, not a 429 to wait out
            raise ConflictError("This Idempotency-Key was already used for a different "
                                "request.", code="idempotency_key_reused") from None
        if existing is None:
            raise
        return _replayed(existing, uid, fingerprint(requests))
    ids = [item_job_id(batch_id, index) for index in range(len(requests))]
    try:
        places = _take_places(services, ids, uid, requests, admission.plan)
    except KilnError:
        give_back(services, admission)
        raise
    now = services.clock.now()
    jobs: list[NewJob] = []
    for job_id, request in zip(ids, requests, strict=True):
        pools, reason = places[job_id]
        queue = lifecycle.QueueEntry(plan=admission.plan.name, priority=admission.plan.priority,
                                     ttl_seconds=services.settings.queue_ttl_seconds,
                                     reason=reason or dispatch.RUNNING_LIMIT, pools=tuple(pools))
        new = lifecycle.new_job(job_id=job_id, uid=uid, channel=principal.channel,
                                request=request, now=now, policy=services.policy, queue=queue)
        jobs.append(NewJob(new.id, {**new.doc, "batchId": batch_id}, new.server))
    batch = Batch(batch_id, uid, principal.channel, tuple(job.id for job in jobs),
                  fingerprint(requests), now, principal.tenant)
    try:
        created = services.batches.create(  # (a single job of this key refuses it)
            batch, jobs, key_job=new_job_id(uid, idempotency_key) if idempotency_key else None)
    except KilnError:
        created = None
    if not created:
        existing = _unmade(services, batch_id, places)
        if created is None and existing is not None and _ours(existing, batch):
            # The commit landed though its answer was lost (a timeout): the batch is this
            # request's, its jobs exist, and its quota stays taken.
            log.event(logger, "batch commit answered late; it was made", logging.WARNING,
                      batchId=batch_id)
        else:
            give_back(services, admission)
            if created is None:
                raise RetryableError("The job store is unavailable.", code="store_unavailable")
            if existing is None:
                raise ConflictError("This Idempotency-Key was already used for a different "
                                    "request.", code="idempotency_key_reused")
            return _replayed(existing, uid, batch.fingerprint)
    started = tuple(job_id for job_id in ids if places[job_id][0])
    publish_all(services, started)
    dispatch.look_again(services, uid=uid, plan=admission.plan,  # (nothing when none waits)
                        waits={(places[job.id][1] or dispatch.RUNNING_LIMIT, job.doc["kind"])
                               for job in jobs if not places[job.id][0]})
    log.event(logger, "batch accepted", batchId=batch_id, jobs=len(jobs), started=len(started),
              channel=principal.channel)
    return AcceptedBatch(batch_id, batch.job_ids, True)


def _ours(stored: Batch, made: Batch) -> bool:
    """Whether ``stored`` is the very batch this request wrote: the same owner and items,
    and its creation time, which each request sets to its own clock reading."""
    return (stored.uid, stored.fingerprint, stored.created_at) == (
        made.uid, made.fingerprint, made.created_at)


def _unmade(services: Services, batch_id: str,
            places: dict[str, tuple[list[str], str | None]]) -> Batch | None:
    """A batch this request did not create: the batch as stored (None if none is), and
    the places of job ids it does not have given back (all of them when no batch of this
    id exists). The job ids are the batch's, and a place is its job id's: a concurrent
    request with the same key that created the batch holds those very places, its jobs
    running in them, and giving them back let other jobs run past the limits; one of
    another size has fewer jobs, and the places of the rest are nobody's. Kept when
    unknown (the store fails):
    a place whose job is missing or waits is free to a pass after
    ``dispatch.FRESH_PLACE_SECONDS``, so what this request took alone comes back then."""
    try:
        existing = services.batches.get(batch_id)
    except KilnError:
        return None
    kept = set(existing.job_ids) if existing is not None else set()
    for job_id, (pools, _reason) in places.items():
        if job_id not in kept:  # (a same-key batch of another size has fewer jobs)
            dispatch.release_places(services, job_id, pools)
    return existing


def _replayed(existing: Batch, uid: str, fingerprint_: str) -> AcceptedBatch:
    if existing.uid != uid or existing.fingerprint != fingerprint_:
        raise ConflictError("This Idempotency-Key was already used for a different request.",
                            code="idempotency_key_reused")
    return AcceptedBatch(existing.id, existing.job_ids, False)


def _take_places(services: Services, ids: list[str], uid: str, requests: list[JobRequest],
                 plan: Plan) -> dict[str, tuple[list[str], str | None]]:
    """Places for the batch's jobs, as for single jobs (``dispatch.take_places``), taken
    concurrently (each place is its own create-if-absent document): the jobs that get
    none wait their turns, with the reason (running limit, generator capacity)."""
    if services.counters.waiting(dispatch.PROVIDER_CAPACITY) > 0:
        return {job_id: ([], dispatch.PROVIDER_CAPACITY) for job_id in ids}

    def take(item: tuple[str, JobRequest]) -> tuple[list[str], str | None]:
        job_id, request = item
        return dispatch.take_places(services, job_id=job_id, uid=uid, kind=request.kind,
                                    plan=plan)

    places: dict[str, tuple[list[str], str | None]] = {}
    with ThreadPoolExecutor(max_workers=min(PUBLISH_THREADS, len(ids))) as pool:
        futures = {job_id: pool.submit(take, (job_id, request))
                   for job_id, request in zip(ids, requests, strict=True)}
    failed: KilnError | None = None
    for job_id, future in futures.items():
        try:
            places[job_id] = future.result()
        except KilnError as exc:
            failed = exc
    if failed is not None:
        for job_id, (pools, _reason) in places.items():
            dispatch.release_places(services, job_id, pools)
        raise failed
    return places


def publish_all(services: Services, job_ids: tuple[str, ...]) -> int:
    """Publish every job (concurrently); how many failed (the sweeper publishes those)."""
    if not job_ids:  # every job of the batch waits its turn in the fair queue
        return 0
    def one(job_id: str) -> bool:
        try:
            services.queue.publish(job_id)
            return True
        except RetryableError:
            return False

    with ThreadPoolExecutor(max_workers=min(PUBLISH_THREADS, len(job_ids))) as pool:
        failed = sum(not ok for ok in pool.map(one, job_ids))
    if failed:
        log.event(logger, "publish failed; the sweeper will re-publish", logging.WARNING,
                  failed=failed)
    return failed


def owned_batch(services: Services, principal: Principal, batch_id: str) -> Batch:
    batch = services.batches.get(batch_id) if is_valid_job_id(batch_id) else None
    if batch is None or batch.uid != principal.uid:
        raise NotFoundError("No such batch.")
    return batch


def view(services: Services, batch: Batch) -> dict[str, Any]:
    """``GET /v1/batches/{id}``: the counts per status, from the jobs."""
    statuses = services.batches.statuses(batch.id)
    tally = counts({job_id: statuses.get(job_id, "pending") for job_id in batch.job_ids})
    created = batch.created_at.isoformat() if batch.created_at is not None else None
    return {"batchId": batch.id, "uid": batch.uid, "channel": batch.channel,
            "total": len(batch.job_ids), "counts": tally,
            "done": sum(tally[s] for s in TERMINAL) == len(batch.job_ids),
            "jobIds": list(batch.job_ids), "createdAt": created}


def cancel(services: Services, batch: Batch) -> int:
    """Cancel every job of the batch that has not ended; how many this call canceled.
    A backend's ``job.canceled`` events are sent as the jobs are canceled for
    :data:`CANCEL_NOTIFY_SECONDS`; the rest (a webhook store that keeps failing makes each
    send pause) are left claimed for the sweeper, so the request ends in time."""
    statuses = services.batches.statuses(batch.id)
    canceled, until = 0, services.clock.monotonic() + CANCEL_NOTIFY_SECONDS
    for job_id in batch.job_ids:
        if statuses.get(job_id) in TERMINAL:
            continue
        with contextlib.suppress(TransitionError):  # it ended meanwhile
            canceled += actions.cancel(services, job_id, by="owner",
                                       notify_now=services.clock.monotonic() < until).changed
    return canceled
