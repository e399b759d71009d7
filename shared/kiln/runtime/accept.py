"""Accepting a job, for every channel: record it, then wake a worker.

The caller was admitted first (``kiln.runtime.admission``: quota, backpressure). The
job's places (its owner's running limit, its provider's capacity) are taken when free
(``kiln.runtime.dispatch``); then its two documents are created at once: started, or
waiting in the fair queue. A started job's id is published. If the publish fails the job
is still accepted: the sweeper re-publishes pending jobs, so nothing accepted is lost. A
waiting job is published when a pass of the queue starts it. The same (uid, idempotency
key) always maps to the same job id; a replay returns that job without a second publish.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import log, tracing
from kiln.compose import Services
from kiln.core import lifecycle, urls
from kiln.core.errors import ConflictError, KilnError, RetryableError, ValidationError
from kiln.core.job import JobStatus, new_job_id
from kiln.core.requests import JobRequest
from kiln.runtime import dispatch
from kiln.runtime.admission import Admission, give_back, plan_for

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
    """Record a job, and publish it when its places are free (else it waits its turn).
    ``admission``: what ``admit`` granted (its plan); None for the channel's default plan.

    Raises:
        ValidationError: ``invalid_image_url``: ``options.imageUrl`` breaks a rule that
            needs no lookup (``kiln.core.urls``).
        ConflictError: the idempotency key was used for a different request.
        RetryableError: the job store is unavailable (nothing was accepted).
    """
    check_image_url(request, allow_local=services.settings.local)
    job_id = new_job_id(uid, idempotency_key)
    plan = admission.plan if admission else plan_for(services, uid=uid, channel=channel,
                                                     claimed=None)
    pools: list[str]
    reason: str | None
    try:
        if services.counters.waiting(dispatch.PROVIDER_CAPACITY) > 0:
            # Others already wait for the generator: this job joins them (and no place is
            # read or written on the way in).
            pools, reason = [], dispatch.PROVIDER_CAPACITY
        else:
            pools, reason = dispatch.take_places(services, job_id=job_id, uid=uid,
                                                 kind=request.kind, plan=plan)
    except KilnError:
        give_back(services, admission)
        raise
    queue = lifecycle.QueueEntry(plan=plan.name, priority=plan.priority,
                                 ttl_seconds=services.settings.queue_ttl_seconds,
                                 reason=reason or dispatch.RUNNING_LIMIT, pools=tuple(pools))
    new = lifecycle.new_job(job_id=job_id, uid=uid, channel=channel, request=request,
                            now=services.clock.now(), policy=services.policy,
                            idempotency_key=idempotency_key, server=server, queue=queue)
    try:
        created = services.store.create(new)
    except KilnError:
        dispatch.release_places(services, job_id, pools)
        give_back(services, admission)
        raise
    if not created:  # a replay (its first request was admitted): this one costs nothing
        give_back(services, admission)
        existing = services.store.get(job_id)
        held = existing.server.pools if existing else ()
        dispatch.release_places(services, job_id, [p for p in pools if p not in held])
        if existing is None or existing.uid != uid \
                or existing.server.fingerprint != request.fingerprint():
            raise ConflictError("This Idempotency-Key was already used for a different request.",
                                code="idempotency_key_reused")
        return Accepted(job_id, False, existing.status)
    with log.job_context(job_id):
        tracing.accepted(job_id)
        if not pools:
            log.event(logger, "job accepted; waiting its turn", kind=request.kind,
                      channel=channel, reason=reason)
            return Accepted(job_id, True, JobStatus.PENDING)
        try:
            services.queue.publish(job_id)
        except RetryableError:
            # Accepted all the same: the documents are durable and the sweeper re-publishes.
            log.event(logger, "publish failed; the sweeper will re-publish", logging.WARNING)
        log.event(logger, "job accepted", kind=request.kind, channel=channel)
    return Accepted(job_id, True, JobStatus.PENDING)


def check_image_url(request: JobRequest, *, allow_local: bool) -> None:
    """Refuse at submit an ``imageUrl`` the fetcher would refuse without a lookup; a host
    that does not resolve fails the job once, when a provider checks it."""
    url = request.options.get("imageUrl")
    why = urls.refusal(str(url), allow_local=allow_local) if url is not None else ""
    if why:
        raise ValidationError("invalid_image_url", f"Option 'imageUrl' was refused: {why}.",
                              field="options.imageUrl")
