"""The worker: claim a job, generate, store the result, finish it, notify — once.

Called for every Pub/Sub delivery (at least once, often more). The claim transaction
decides what a delivery does; only the holder of the lease writes progress or ends the
job; ending the job claims its notification. The return value acks; raising
``RetryableError`` nacks so Pub/Sub redelivers after a backoff.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kiln import log
from kiln.adapters.firestore import utcnow
from kiln.adapters.pubsub import decode_message
from kiln.adapters.storage import result_path, thumbnail_path
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import (
    CanceledError,
    ConfigError,
    KilnError,
    LeaseLostError,
    PermanentError,
    RetryableError,
)
from kiln.providers.base import (
    EXTENSIONS,
    Artifact,
    GenerationRequest,
    SyncProvider,
    TaskProvider,
    TaskState,
)
from kiln.runtime import notify
from kiln.runtime.artifacts import make_thumbnail, validator_for
from kiln.runtime.progress import ProgressReporter

logger = log.get("worker")

THUMBNAIL_SOURCE_MAX = 20 * 1024 * 1024  # images up to this size get a thumbnail made here


@dataclass(frozen=True)
class _HandOff:
    """The invocation's time budget ran out while a provider task was still running."""


HAND_OFF = _HandOff()


def handle_message(data: Any, services: Services) -> str:
    """Process one Pub/Sub message; return what happened (for logs and tests).

    Raises:
        RetryableError: the job was released for another attempt (nack).
    """
    try:
        job_id = decode_message(data)
    except PermanentError as exc:
        # A poison message can never succeed: ack it (log) instead of retrying forever.
        log.event(logger, "poison message acked", logging.ERROR, reason=exc.message)
        return "poison"
    with log.job_context(job_id):
        return run_job(job_id, services)


def run_job(job_id: str, services: Services, *, clock: Callable[[], float] = time.monotonic) -> str:
    settings = services.settings
    started = clock()
    outcome, job, resume_task_id = _claim(job_id, services)
    if outcome != "claimed":
        return outcome
    assert job is not None
    request = GenerationRequest(job_id=job_id, kind=job["kind"], prompt=job["prompt"],
                                options=job.get("options") or {})
    reporter = ProgressReporter(
        services.store, job_id, services.worker_id,
        interval=settings.progress_interval_seconds, lease_seconds=settings.lease_seconds,
        clock=clock, start_progress=int(job.get("progress") or 0) if resume_task_id else 0,
        on_write=lambda progress, stage: notify.on_progress(services, job_id, job, progress, stage),
    )
    try:
        provider = services.provider(request.kind)
    except ConfigError as exc:
        log.event(logger, "provider misconfigured", logging.ERROR, detail=exc.message)
        noun = "3D models" if request.kind == "model" else "images"
        return _fail(job_id, services, "provider_unconfigured",
                     f"This service is not set up to make {noun} right now.")
    log.event(logger, "job claimed", attempt=job.get("attempts", 0) + 1, provider=provider.name,
              resume=bool(resume_task_id))
    try:
        produced = _generate(provider, request, reporter, services, resume_task_id,
                             deadline=started + settings.worker_budget_seconds, clock=clock)
        if produced is HAND_OFF:
            return _hand_off(job_id, services)
        assert isinstance(produced, Artifact)
        reporter.update(max(reporter.progress, 95), "uploading")
        reporter.raise_if_stopped()
        result = _store_result(services, job, job_id, produced)
        ended = _end(job_id, services, lambda j: lifecycle.complete(
            j, worker_id=services.worker_id, result=result) | _provenance(produced))
        log.event(logger, "job completed", bytes=result["bytes"], progressWrites=reporter.writes,
                  seconds=round(clock() - started, 3))
        if ended:
            notify.deliver(services, job_id)
        return "completed"
    except CanceledError:
        _cancel_remote(provider, job_id, services)
        log.event(logger, "job canceled while running; stopped")
        return "canceled"
    except LeaseLostError:
        log.event(logger, "lease lost; another worker continues", logging.WARNING)
        return "lease_lost"
    except PermanentError as exc:
        return _fail(job_id, services, exc.code, exc.message)
    except RetryableError as exc:
        return _retry_later(job_id, services, exc)
    except Exception as exc:
        # A bug or an SDK error nobody translated: retry like a crash would, within limits.
        log.event(logger, "unexpected error", logging.ERROR, error=type(exc).__name__,
                  detail=str(exc)[:500])
        return _retry_later(job_id, services, RetryableError(
            "Something went wrong on our side.", code="internal"))


def _claim(job_id: str, services: Services) -> tuple[str, dict[str, Any] | None, str | None]:
    settings = services.settings
    now = utcnow()
    token = uuid.uuid4().hex  # this delivery's claim, recognised if the SDK retries it

    def decide(job: dict[str, Any] | None) -> tuple[Any, tuple[str, Any, Any]]:
        if job is None:
            return None, ("missing", None, None)
        claim = lifecycle.claim(job, worker_id=services.worker_id, now=now,
                                lease_seconds=settings.lease_seconds,
                                max_attempts=settings.max_attempts, claim_token=token)
        if claim.outcome == "exhausted":
            last = job.get("error") or {}
            message = (f"{last.get('message') or 'The job kept failing.'} "
                       f"Gave up after {job.get('attempts', 0)} attempts.")
            code = last.get("code") or "attempts_exhausted"
            return lifecycle.fail(job, code=code, message=message), ("exhausted", job, None)
        if claim.outcome == "expired":
            return lifecycle.fail(job, code="deadline_exceeded",
                                  message="The job took too long and was stopped."), (
                "expired", job, None)
        return claim.updates, (claim.outcome, job, claim.resume_task_id)

    outcome, job, task_id = services.store.transact(job_id, decide)
    if outcome in ("exhausted", "expired"):
        log.event(logger, f"job failed: {outcome}", logging.WARNING)
        notify.deliver(services, job_id)
    elif outcome == "not_yet":
        # Backoff not over: nack so Pub/Sub brings it back later; no attempt is spent.
        raise RetryableError("The job is waiting to retry.", code="backoff")
    elif outcome == "terminal" and job is not None and _remote_task_left(job):
        # Canceled while no worker held it (e.g. between hand-offs): the paid remote
        # task may still be running. The cancel's wake-up message brings us here.
        provider_name = lifecycle.server(job).get("provider")
        try:
            _cancel_remote(services.provider(job["kind"]), job_id, services)
        except ConfigError:
            log.event(logger, "provider gone; remote task left to expire", logging.WARNING,
                      provider=provider_name)
    elif outcome != "claimed":
        log.event(logger, f"delivery ignored: {outcome}")
    return outcome, job, task_id


def _remote_task_left(job: dict[str, Any]) -> bool:
    srv = lifecycle.server(job)
    return (job.get("status") == "canceled" and bool(srv.get("providerTaskId"))
            and not srv.get("remoteCanceled"))


def _generate(
    provider: Any,
    request: GenerationRequest,
    reporter: ProgressReporter,
    services: Services,
    resume_task_id: str | None,
    *,
    deadline: float,
    clock: Callable[[], float],
) -> Artifact | _HandOff:
    if isinstance(provider, TaskProvider):
        return _run_task(provider, request, reporter, services, resume_task_id,
                         deadline=deadline, clock=clock)
    assert isinstance(provider, SyncProvider)
    reporter.update(0, "generating")

    def should_stop() -> bool:
        # A generator that never returns must not hold the invocation past its budget
        # (heartbeats would keep its lease alive): release the attempt instead.
        if clock() >= deadline:
            raise RetryableError("The generator did not finish in time.", code="provider_timeout")
        return reporter.should_stop()

    return provider.generate(request, reporter.update, should_stop)


def _run_task(
    provider: TaskProvider,
    request: GenerationRequest,
    reporter: ProgressReporter,
    services: Services,
    task_id: str | None,
    *,
    deadline: float,
    clock: Callable[[], float],
) -> Artifact | _HandOff:
    """Submit (or resume) a remote task and poll it until it ends or the budget runs out."""
    def save(current: str) -> None:
        # Checkpoint at once: any later invocation resumes this task instead of paying twice.
        services.store.transact(request.job_id, lambda job: (lifecycle.checkpoint(
            job or {}, worker_id=services.worker_id, now=utcnow(),
            lease_seconds=services.settings.lease_seconds, provider=provider.name,
            task_id=current), None))
        log.event(logger, "provider task submitted", taskId=current)

    if task_id is None:
        task_id = provider.submit(request)
        save(task_id)
    while True:
        if reporter.should_stop():
            assert reporter.stop_reason is not None
            raise reporter.stop_reason
        status = provider.poll(task_id)
        if status.task_id and status.task_id != task_id:
            task_id = status.task_id  # the provider moved on to its next remote task
            save(task_id)
        if status.state is TaskState.SUCCEEDED:
            reporter.update(status.progress or 90, status.stage or "downloading")
            return provider.fetch(task_id, request)
        if status.state is TaskState.FAILED:
            if status.retryable:
                services.store.update(request.job_id, {"_server.providerTaskId": None})
                raise RetryableError(status.error_message or "The provider failed.",
                                     code=status.error_code or "provider_failed")
            raise PermanentError(status.error_message or "The provider could not make this.",
                                 code=status.error_code or "provider_failed")
        if status.state is TaskState.CANCELED:
            if (services.store.get(request.job_id) or {}).get("status") == "canceled":
                raise CanceledError("The job was canceled.")  # we asked for it
            raise PermanentError("The provider canceled the task.", code="provider_canceled")
        reporter.update(status.progress, status.stage or
                        ("queued" if status.state is TaskState.PENDING else "generating"))
        if clock() + provider.poll_interval >= deadline:
            return HAND_OFF
        time.sleep(provider.poll_interval)


def _hand_off(job_id: str, services: Services) -> str:
    reporter_owner = services.worker_id
    services.store.transact(job_id, lambda job: (lifecycle.hand_off(
        job or {}, worker_id=reporter_owner), None))
    try:
        services.queue.publish(job_id, reason="handoff")
    except RetryableError:
        log.event(logger, "hand-off publish failed; the sweeper will pick it up", logging.WARNING)
    log.event(logger, "job handed off to a fresh invocation")
    return "handed_off"


def _store_result(services: Services, job: dict[str, Any], job_id: str,
                  artifact: Artifact) -> dict[str, Any]:
    """Stream the artifact (validated) into the bucket; add a thumbnail."""
    uid = job["uid"]
    max_bytes = services.settings.max_artifact_bytes
    if artifact.size is not None and artifact.size > max_bytes:
        raise PermanentError("The result is larger than this service accepts.",
                             code="artifact_too_large")
    kept: list[bytes] | None = None
    chunks: Iterable[bytes] = artifact.chunks
    if artifact.kind == "image" and artifact.thumbnail is None and (
            artifact.size is None or artifact.size <= THUMBNAIL_SOURCE_MAX):
        kept = []
        chunks = _tee(chunks, kept, THUMBNAIL_SOURCE_MAX)
    validator = validator_for(artifact.content_type, max_bytes=max_bytes)
    stored = services.blobs.put_stream(
        result_path(uid, job_id, EXTENSIONS[artifact.kind]), chunks, artifact.content_type,
        validator,
    )
    result: dict[str, Any] = {
        "path": stored.path,
        "contentType": stored.content_type,
        "bytes": stored.bytes,
        "sha256": stored.sha256,
        "downloadUrl": stored.download_url,
    }
    thumbnail = artifact.thumbnail
    if thumbnail is None and kept:
        thumbnail = make_thumbnail(b"".join(kept))
    if thumbnail:
        thumb = services.blobs.put_bytes(thumbnail_path(uid, job_id), thumbnail, "image/png")
        result["thumbnailPath"] = thumb.path
        result["thumbnailUrl"] = thumb.download_url
    return result


def _tee(chunks: Iterable[bytes], kept: list[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total <= limit:
            kept.append(chunk)
        else:
            kept.clear()
        yield chunk


def _provenance(artifact: Artifact) -> dict[str, Any]:
    return {"provenance": dict(artifact.provenance)} if artifact.provenance else {}


def _end(job_id: str, services: Services, make_updates: Callable[[dict[str, Any]], Any]) -> bool:
    """Apply an ending transition; True if this call made it (and so owns the notification)."""
    return bool(services.store.transact(
        job_id, lambda job: (make_updates(job or {}), True)))


def _fail(job_id: str, services: Services, code: str, message: str) -> str:
    try:
        _end(job_id, services, lambda job: lifecycle.fail(
            job, code=code, message=message, worker_id=services.worker_id))
    except (CanceledError, LeaseLostError):
        return "lease_lost"
    log.event(logger, "job failed", logging.WARNING, code=code)
    notify.deliver(services, job_id)
    return "failed"


def _retry_later(job_id: str, services: Services, exc: RetryableError) -> str:
    """Release for another attempt (and raise to nack), or fail if none are left."""
    settings = services.settings
    job = services.store.get(job_id) or {}
    if int(job.get("attempts") or 0) >= settings.max_attempts:
        message = f"{exc.message} Gave up after {job.get('attempts')} attempts."
        return _fail(job_id, services, exc.code, message)
    backoff = settings.retry_backoff_seconds * 2 ** max(0, int(job.get("attempts") or 1) - 1)
    if exc.retry_after is not None:
        backoff = max(backoff, exc.retry_after)
    error = {"code": exc.code, "message": exc.message, "retryable": True}
    try:
        services.store.transact(job_id, lambda j: (lifecycle.release(
            j or {}, worker_id=services.worker_id, now=utcnow(), backoff_seconds=backoff,
            error=error), None))
    except (CanceledError, LeaseLostError):
        return "lease_lost"
    log.event(logger, "job released for retry", logging.WARNING, code=exc.code,
              backoffSeconds=backoff)
    raise exc


def _cancel_remote(provider: Any, job_id: str, services: Services) -> None:
    """Cancel the provider's task of a canceled job, where the provider allows it."""
    if not isinstance(provider, TaskProvider):
        return
    job = services.store.get(job_id) or {}
    task_id = lifecycle.server(job).get("providerTaskId")
    if task_id and not lifecycle.server(job).get("remoteCanceled"):
        try:
            provider.cancel(task_id)
            services.store.update(job_id, {"_server.remoteCanceled": True})
            log.event(logger, "provider task canceled", taskId=task_id)
        except KilnError as exc:
            log.event(logger, "provider cancel failed", logging.WARNING, code=exc.code)
