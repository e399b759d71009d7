"""Accepting a job, for every channel: record it, then wake a worker.

The job's two documents are created at once before anything else; then its id is
published. If the publish fails the job is still accepted: the sweeper re-publishes
pending jobs, so nothing accepted is lost. The same (uid, idempotency key) always maps
to the same job id; a replay returns that job without a second publish.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import log
from kiln.compose import Services
from kiln.core import lifecycle, urls
from kiln.core.errors import ConflictError, RetryableError, ValidationError
from kiln.core.job import JobStatus, new_job_id
from kiln.core.requests import JobRequest

logger = log.get("ingress")


@dataclass(frozen=True)
class Accepted:
    job_id: str
    created: bool  # False: an idempotent replay of an earlier request
    status: JobStatus


def accept_job(services: Services, *, uid: str, channel: str, request: JobRequest,
               idempotency_key: str | None = None,
               server: Mapping[str, Any] | None = None) -> Accepted:
    """Record and publish a job.

    Raises:
        ValidationError: ``invalid_image_url``: ``options.imageUrl`` breaks a rule that
            needs no lookup (``kiln.core.urls``).
        ConflictError: the idempotency key was used for a different request.
        RetryableError: the job store is unavailable (nothing was accepted).
    """
    check_image_url(request, allow_local=services.settings.local)
    job_id = new_job_id(uid, idempotency_key)
    new = lifecycle.new_job(job_id=job_id, uid=uid, channel=channel, request=request,
                            now=services.clock.now(), policy=services.policy,
                            idempotency_key=idempotency_key, server=server)
    if not services.store.create(new):
        existing = services.store.get(job_id)
        if existing is None or existing.uid != uid \
                or existing.server.fingerprint != request.fingerprint():
            raise ConflictError("This Idempotency-Key was already used for a different request.",
                                code="idempotency_key_reused")
        return Accepted(job_id, False, existing.status)
    with log.job_context(job_id):
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
