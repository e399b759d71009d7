"""Accepting a job, for every channel: one commit, then one publish.

The caller was admitted first (``kiln.runtime.admission``: quota, backpressure; for
``POST /v1/jobs`` the quota tickets are only reserved, and created in the job's commit).
The job's two documents are created in one commit as an *arrival* of the fair queue
(``pending``, stage ``queued``, no ``queueReason`` yet), then its id is published. The
worker that receives the message gives the job its places (its owner's running limit,
its provider's capacity) and runs it, or records why it waits
(``kiln.runtime.dispatch.arrive``). Nothing about places is read or written on the way
in: the acknowledgement is the floor's own two calls (docs/benchmarks.md).

If the publish fails the job is still accepted: the sweeper re-publishes an arrival
whose message was lost, as any pending job. The same (uid, idempotency key) always maps
to the same job id; a replay returns that job and takes nothing. A key already used for a
batch is refused by the job's own commit (``NewJob.key_batch``): no read before it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import log, tracing
from kiln.compose import Services
from kiln.core import lifecycle, urls
from kiln.core.batches import new_batch_id
from kiln.core.errors import (
    ConflictError,
    KilnError,
    RetryableError,
    TicketTakenError,
    ValidationError,
)
from kiln.core.job import Job, JobStatus, NewJob, Tickets, new_job_id
from kiln.core.requests import JobRequest
from kiln.runtime.admission import Admission, give_back, over_quota, plan_for
from kiln.settings import Settings

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
    """Record a job as an arrival of the fair queue, then publish it.
    ``admission``: what ``admit`` granted (its plan); None for the channel's default plan.

    Raises:
        ValidationError: ``invalid_image_url``: ``options.imageUrl`` breaks a rule that
            needs no lookup (``kiln.core.urls``).
        ConflictError: the idempotency key was used for a different request (a batch's
            included, checked in the job's commit).
        QuotaExceededError: a deferred admission's quota ran out meanwhile (another
            instance took the last tickets); nothing was created.
        RetryableError: the job store is unavailable (nothing was accepted).
    """
    check_request(request, services.settings)
    job_id = new_job_id(uid, idempotency_key)
    plan = admission.plan if admission else plan_for(services, uid=uid, channel=channel,
                                                     claimed=None)
    queue = lifecycle.QueueEntry(plan=plan.name, priority=plan.priority,
                                 ttl_seconds=services.settings.queue_ttl_seconds, reason=None)
    new = lifecycle.new_job(job_id=job_id, uid=uid, channel=channel, request=request,
                            now=services.clock.now(), policy=services.policy,
                            idempotency_key=idempotency_key, server=server, queue=queue)
    if admission is not None and not admission.taken:  # its tickets ride on the commit
        new = dataclasses.replace(new, tickets=Tickets(admission.quota_key, admission.tickets))
    if idempotency_key is not None:  # a key already used for a batch refuses the job
        new = dataclasses.replace(new, key_batch=new_batch_id(uid, idempotency_key))
    if not _create(services, new, admission):
        # A replay (its first request was admitted): this one costs nothing.
        existing = services.store.get(job_id)
        if existing is None or existing.uid != uid or not same_request(existing, request):
            raise ConflictError("This Idempotency-Key was already used for a different request.",
                                code="idempotency_key_reused")
        return Accepted(job_id, False, existing.status)
    with log.job_context(job_id):
        tracing.accepted(job_id)
        try:
            services.queue.publish(job_id)
        except RetryableError:
            # Accepted all the same: the documents are durable and the sweeper re-publishes.
            log.event(logger, "publish failed; the sweeper will re-publish", logging.WARNING)
        log.event(logger, "job accepted", kind=request.kind, channel=channel)
    return Accepted(job_id, True, JobStatus.PENDING)


def same_request(existing: Job, request: JobRequest) -> bool:
    """Whether ``request`` is the one ``existing`` was made for. A job stored before its
    webhook was part of the fingerprint digests without it; the URL stored on it then
    decides, so a client's retry across that change is still a replay."""
    if existing.server.fingerprint == request.fingerprint():
        return True
    legacy = dataclasses.replace(request, webhook=None).fingerprint()
    return request.webhook is not None and existing.server.fingerprint == legacy \
        and existing.server.webhook == request.webhook


def _create(services: Services, new: NewJob, admission: Admission | None) -> bool:
    """Create the job (with the quota tickets it carries: one commit); False for a replay,
    which takes nothing. When another instance took one of the reserved numbers first,
    the next free ones are taken, then the job is created.

    Raises:
        QuotaExceededError: the quota ran out meanwhile (nothing created).
    """
    try:
        created = services.store.create(new)
    except TicketTakenError:
        assert admission is not None
        numbers = services.counters.take(admission.quota_key, admission.count,
                                         admission.plan.daily_jobs)
        if numbers is None:
            raise over_quota(admission, services.clock.now()) from None
        admission = dataclasses.replace(admission, tickets=tuple(numbers), taken=True)
        try:
            created = services.store.create(dataclasses.replace(new, tickets=None))
        except KilnError:
            give_back(services, admission)
            raise
    if not created:
        give_back(services, admission)  # (only tickets taken apart; the commit took none)
    return created


def check_request(request: JobRequest, settings: Settings) -> None:
    """Refuse at submit what the job's provider would refuse without a call: a prompt
    longer than it takes, an ``imageUrl`` the fetcher would refuse without a lookup.

    Raises:
        ValidationError: ``prompt_too_long`` or ``invalid_image_url``.
    """
    longest = settings.prompt_max(request.kind)
    if len(request.prompt) > longest:
        noun = "3D models" if request.kind == "model" else "images"
        raise ValidationError(
            "prompt_too_long", f"The service that makes {noun} takes prompts of up to "
            f"{longest} characters; this one has {len(request.prompt)}.", field="prompt")
    check_image_url(request, allow_local=settings.local)


def check_image_url(request: JobRequest, *, allow_local: bool) -> None:
    """Refuse at submit an ``imageUrl`` the fetcher would refuse without a lookup; a host
    that does not resolve fails the job once, when a provider checks it."""
    url = request.options.get("imageUrl")
    why = urls.refusal(str(url), allow_local=allow_local) if url is not None else ""
    if why:
        raise ValidationError("invalid_image_url", f"Option 'imageUrl' was refused: {why}.",
                              field="options.imageUrl")
