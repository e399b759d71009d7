"""Accepting a job, for every channel: record it and wake a worker, at once.

The caller was admitted first (``kiln.runtime.admission``: quota, backpressure). The
job's two documents are created in one commit as an *arrival* of the fair queue
(``pending``, stage ``queued``, no ``queueReason`` yet) while its id is published, both
at the same time; the answer waits for both, so the job exists before the 202. The
worker that receives the message gives the job its places (its owner's running limit,
its provider's capacity) and runs it, or records why it waits
(``kiln.runtime.dispatch.arrive``). Nothing about places is read or written on the way
in: the acknowledgement is one commit and one publish (docs/benchmarks.md).

A message may reach a worker before the commit lands: the worker nacks a message whose
job does not exist yet while the message is young. If the publish fails the job is
still accepted: the sweeper re-publishes an arrival whose message was lost, as any
pending job. The same (uid, idempotency key) always maps to the
same job id; a replay returns that job (a duplicate message is harmless: the claim
decides).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kiln import log, tracing
from kiln.compose import Services
from kiln.core import lifecycle, urls
from kiln.core.errors import ConflictError, KilnError, RetryableError, ValidationError
from kiln.core.job import JobStatus, new_job_id
from kiln.core.requests import JobRequest
from kiln.runtime.admission import Admission, give_back, over_quota, plan_for

logger = log.get("ingress")


@dataclass(frozen=True)
class Accepted:
    job_id: str
    created: bool  # False: an idempotent replay of an earlier request
    status: JobStatus


def accept_job(services: Services, *, uid: str, channel: str, request: JobRequest,
               idempotency_key: str | None = None,
               server: Mapping[str, Any] | None = None,
               admission: Admission | None = None) -> Accepted:
    """Record a job as an arrival of the fair queue and publish it, both at once.
    ``admission``: what ``admit`` granted (its plan); None for the channel's default plan.

    Raises:
        ValidationError: ``invalid_image_url``: ``options.imageUrl`` breaks a rule that
            needs no lookup (``kiln.core.urls``).
        ConflictError: the idempotency key was used for a different request.
        QuotaExceededError: a deferred admission's quota ran out meanwhile (another
            instance took the last tickets); the job created beside it failed at once.
        RetryableError: the job store is unavailable (nothing was accepted).
    """
    check_image_url(request, allow_local=services.settings.local)
    job_id = new_job_id(uid, idempotency_key)
    plan = admission.plan if admission else plan_for(services, uid=uid, channel=channel,
                                                     claimed=None)
    queue = lifecycle.QueueEntry(plan=plan.name, priority=plan.priority,
                                 ttl_seconds=services.settings.queue_ttl_seconds, reason=None)
    new = lifecycle.new_job(job_id=job_id, uid=uid, channel=channel, request=request,
                            now=services.clock.now(), policy=services.policy,
                            idempotency_key=idempotency_key, server=server, queue=queue)
    # Three calls at once: the job's commit, its message and (for a deferred admission)
    # its quota tickets; the answer waits for all three.
    ticket = _beside(services.counters.confirm, admission.quota_key, list(admission.tickets)) \
        if admission is not None and not admission.taken else None
    published = _beside(services.queue.publish, job_id, reason=ACCEPT_REASON)
    try:
        created = services.store.create(new)
    except KilnError:
        give_back(services, _paid(services, admission, ticket, created=False))
        _settle(published)
        raise
    if not created:  # a replay (its first request was admitted): this one costs nothing
        give_back(services, _paid(services, admission, ticket, created=False))
        _settle(published)
        existing = services.store.get(job_id)
        if existing is None or existing.uid != uid \
                or existing.server.fingerprint != request.fingerprint():
            raise ConflictError("This Idempotency-Key was already used for a different request.",
                                code="idempotency_key_reused")
        return Accepted(job_id, False, existing.status)
    with log.job_context(job_id):
        tracing.accepted(job_id)
        try:
            _paid(services, admission, ticket, created=True)
        except KilnError as exc:  # its quota was taken meanwhile: the job ends at once
            _refused(services, job_id, exc)
            _settle(published)
            raise
        if not _settle(published):
            # Accepted all the same: the documents are durable and the sweeper re-publishes.
            log.event(logger, "publish failed; the sweeper will re-publish", logging.WARNING)
        log.event(logger, "job accepted", kind=request.kind, channel=channel)
    return Accepted(job_id, True, JobStatus.PENDING)


def _paid(services: Services, admission: Admission | None, ticket: Future[object] | None, *,
          created: bool) -> Admission | None:
    """The admission with its tickets taken. A deferred admission's reserved numbers were
    taken beside the commit; when another instance took one first, the next free ones are
    taken now (``created``: only for a job that exists; else nothing more is taken).

    Raises:
        QuotaExceededError: the quota ran out meanwhile.
        RetryableError: the quota store is unavailable.
    """
    if admission is None or ticket is None:
        return admission
    try:
        confirmed = bool(ticket.result())
    except RetryableError:
        if not created:
            return None
        raise
    if confirmed:
        return dataclasses.replace(admission, taken=True)
    if not created:
        return None
    numbers = services.counters.take(admission.quota_key, admission.count,
                                     admission.plan.daily_jobs)
    if numbers is None:
        raise over_quota(admission, services.clock.now())
    return dataclasses.replace(admission, tickets=tuple(numbers), taken=True)


def _refused(services: Services, job_id: str, error: KilnError) -> None:
    """End a job created beside a quota that ran out (or could not be reached): failed,
    with the reason its caller is also told (its message may have reached a worker)."""
    try:
        services.store.transact(job_id, lambda job: (lifecycle.fail(
            job, code=error.code, message=error.message) if job and not job.terminal else None,
            None))
    except KilnError as exc:  # its deadline or the sweeper ends it
        log.event(logger, "refused job not ended", logging.WARNING, code=exc.code)


#: The ``reason`` of the message published beside its job's commit: a worker that finds
#: no job for it while it is young nacks instead of dropping it (kiln.runtime.worker).
ACCEPT_REASON = "accept"
#: Calls in flight beside the jobs' commits (two per ingress thread at most).
_POOL_SIZE = 32
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _beside(call: Callable[..., object], *args: Any, **kwargs: Any) -> Future[object]:
    """Run ``call`` on the pool with the request's context (its log fields and its trace,
    which the message carries)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="kiln-accept")
    return _pool.submit(contextvars.copy_context().run, call, *args, **kwargs)


def _settle(published: Future[object]) -> bool:
    """Wait for the publish; whether it went out (a failure is logged by the caller)."""
    try:
        published.result()
    except RetryableError:
        return False
    return True


def check_image_url(request: JobRequest, *, allow_local: bool) -> None:
    """Refuse at submit an ``imageUrl`` the fetcher would refuse without a lookup; a host
    that does not resolve fails the job once, when a provider checks it."""
    url = request.options.get("imageUrl")
    why = urls.refusal(str(url), allow_local=allow_local) if url is not None else ""
    if why:
        raise ValidationError("invalid_image_url", f"Option 'imageUrl' was refused: {why}.",
                              field="options.imageUrl")
