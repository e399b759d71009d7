"""The worker: claim a job, generate, store the result, end it, notify — once.

Called for every Pub/Sub delivery (at least once, often more). ``kiln.core.lifecycle``
decides every state change; this module runs the provider and applies those decisions.
The return value (a :class:`RunOutcome`) acks; raising ``RetryableError`` nacks so
Pub/Sub redelivers after a backoff.

A synchronous provider runs inside the delivery. A remote task never holds one: the
first delivery submits it and parks the job; each scheduled check (``kiln.runtime.checks``)
polls it once, then parks again or fetches the result.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from typing import Any

from kiln import log, tracing
from kiln.adapters.pubsub import decode_message
from kiln.compose import Services
from kiln.core import lifecycle, timeline
from kiln.core.errors import (
    CanceledError,
    ConfigError,
    KilnError,
    LeaseLostError,
    PermanentError,
    RetryableError,
)
from kiln.core.job import Job, JobStatus
from kiln.core.lifecycle import ClaimOutcome
from kiln.providers.base import Artifact, GenerationRequest, SyncProvider, TaskProvider, TaskState
from kiln.runtime import checks, dispatch, endings, notify, remote, results
from kiln.runtime.outcomes import RunOutcome
from kiln.runtime.progress import ProgressReporter
from kiln.runtime.results import store_result
from kiln.webhooks import delivery as webhook_delivery
from kiln.webhooks.model import DELIVERY_PREFIX

logger = log.get("worker")

RATE_LIMITED = "provider_rate_limited"  # a provider's 429 (kiln.providers.http)
BACKOFF = "backoff"  # the code of the nack of a delivery that came before the job's backoff ended


class _Wait(Exception):
    """The remote task is still running (or its provider could not say): park the job until
    its next check, no sooner than ``retry_after`` seconds (a provider's 429)."""

    def __init__(self, progress: int, stage: str | None, *, at_once: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(stage)
        self.progress, self.stage, self.at_once = progress, stage, at_once
        self.retry_after = retry_after


@tracing.delivered
def handle_message(data: Any, services: Services) -> RunOutcome:
    """Process one Pub/Sub message; log one line with what the delivery did and how long
    it held the invocation (``RunOutcome.RELEASED`` when it raised to nack).

    Raises:
        RetryableError: the job was released for another attempt, or is in backoff (nack).
    """
    started = services.clock.monotonic()
    delivered_at = services.clock.now()
    outcome = RunOutcome.RELEASED
    job_id: str | None = None
    try:
        delivery = decode_message(data)
        job_id = delivery.job_id
    except PermanentError as exc:
        # A poison message can never succeed: ack it (log) instead of retrying forever.
        log.event(logger, "poison message acked", logging.ERROR, reason=exc.message)
        outcome = RunOutcome.POISON
        _log_delivery(outcome, started, services)
        return outcome
    if job_id.startswith(DELIVERY_PREFIX):
        webhook_delivery.attempt(services, job_id, delivery.check or 1)
        outcome = RunOutcome.WEBHOOK
        _log_delivery(outcome, started, services)
        return outcome
    with log.job_context(job_id):
        try:
            outcome = run_job(job_id, services, check=delivery.check,
                              published_at=delivery.published_at, delivered_at=delivered_at)
            return outcome
        except RetryableError as exc:
            outcome = RunOutcome.NOT_YET if exc.code == BACKOFF else RunOutcome.RELEASED
            raise
        finally:
            _log_delivery(outcome, started, services)


def _log_delivery(outcome: RunOutcome, started: float, services: Services) -> None:
    log.event(logger, "delivery done", outcome=outcome.value,
              seconds=round(services.clock.monotonic() - started, 3))


#: Outcomes after which the job holds no place: the next waiting job may start.
_GAVE_BACK = frozenset({RunOutcome.COMPLETED, RunOutcome.FAILED, RunOutcome.CANCELED,
                        RunOutcome.EXHAUSTED, RunOutcome.EXPIRED, RunOutcome.TERMINAL,
                        RunOutcome.QUEUED})


def run_job(job_id: str, services: Services, *, check: int | None = None,
            published_at: dt.datetime | None = None,
            delivered_at: dt.datetime | None = None) -> RunOutcome:
    """Run one delivery of ``job_id`` (``check``: the scheduled check it is; the two times
    go on the job's timeline with its claim); when the job ended (or went back to the
    queue), start who is next in the fair queue."""
    outcome = _run_job(job_id, services, check=check, published_at=published_at,
                       delivered_at=delivered_at)
    if outcome in _GAVE_BACK:
        try:
            dispatch.after_end(services, job_id)
        except KilnError as exc:  # the sweeper's pass starts them within a minute
            log.event(logger, "queue pass deferred to the sweeper", logging.WARNING,
                      code=exc.code)
    return outcome


def _run_job(job_id: str, services: Services, *, check: int | None,
             published_at: dt.datetime | None, delivered_at: dt.datetime | None) -> RunOutcome:
    """Run one delivery of ``job_id``."""
    clock = services.clock
    started = clock.monotonic()
    arrival = {"published": published_at, "delivered": delivered_at}
    places, seen = _arrival_places(job_id, services) if check is None else (None, None)
    if places == []:
        return RunOutcome.ARRIVED_WAITING
    token = uuid.uuid4().hex  # this delivery's claim, recognised if a write's answer is lost
    outcome, job, resume_task_id = _claim(job_id, services, check, arrival, places, seen, token)
    if places and outcome is not ClaimOutcome.CLAIMED:  # another delivery or a pass was first
        dispatch.release_unheld(services, job, job_id, places)
    if outcome is not ClaimOutcome.CLAIMED:
        return RunOutcome(outcome.value)
    assert job is not None
    attempt = job.attempts + (0 if check is not None else 1)
    request = GenerationRequest(job_id=job_id, kind=job.kind, prompt=job.prompt,
                                options=dict(job.options))
    reporter = ProgressReporter(
        services.store, job_id, endings.lease_owner(services, token), policy=services.policy, clock=clock,
        interval=services.settings.progress_interval_seconds,
        start_progress=job.progress if resume_task_id else 0,
        on_write=lambda progress, stage: notify.on_progress(services, job, progress, stage),
    )
    try:  # a task is polled where it was submitted, whatever is configured now
        provider = services.provider_of(job) if resume_task_id else services.provider(job.kind)
    except ConfigError as exc:
        log.event(logger, "provider misconfigured", logging.ERROR, detail=exc.message)
        noun = "3D models" if request.kind == "model" else "images"
        return endings.fail(job_id, services, "provider_unconfigured",
                            f"This service is not set up to make {noun} right now.", token=token)
    if check is None:
        log.event(logger, "job claimed", attempt=job.attempts + 1, provider=provider.name,
                  resume=bool(resume_task_id))
        notify.on_started(services, job)
    deadline = started + services.settings.worker_budget_seconds
    # The end write carries when generation began (a synchronous provider's submit) and
    # when the result was stored.
    marks = {timeline.step("submitted", attempt): clock.now()
             if isinstance(provider, SyncProvider) else None}
    try:
        produced = _generate(provider, request, reporter, services, resume_task_id, deadline)
        marks[timeline.step("generated", attempt)] = clock.now()
        reporter.update(max(reporter.progress, 95), "uploading")
        reporter.raise_if_stopped()
        produced = dataclasses.replace(produced, chunks=reporter.relay(produced.chunks,
                                                                       "uploading"))
        result = store_result(services.blobs, job, produced,
                              max_bytes=services.settings.max_artifact_bytes)
        marks[timeline.step("stored", attempt)] = clock.now()
        try:
            endings.complete(job_id, services, token, result, produced.provenance, marks)
        except CanceledError:  # canceled while it uploaded: no job names these files
            results.discard(services.blobs, result)
            raise
        log.event(logger, "job completed", bytes=result["bytes"], progressWrites=reporter.writes,
                  seconds=round(clock.monotonic() - started, 3))
        notify.deliver(services, job_id)
        return RunOutcome.COMPLETED
    except _Wait as wait:
        assert isinstance(provider, TaskProvider)
        return _park(job_id, services, provider, job, wait, reporter.worker_id)
    except CanceledError:
        ended = RunOutcome.CANCELED
    except LeaseLostError:
        log.event(logger, "lease lost; another worker continues", logging.WARNING)
        return RunOutcome.LEASE_LOST
    except _PollRefused as exc:
        ended = endings.fail(job_id, services, exc.code, exc.message, steps=marks, token=token,
                             task_left=True)
        if ended is RunOutcome.FAILED:  # (a passing failure nacks: the redelivery cancels)
            endings.cancel_remote(provider, job_id, services)
    except PermanentError as exc:
        ended = endings.fail(job_id, services, exc.code, exc.message, steps=marks, token=token)
    except _TaskFailed as exc:
        ended = endings.retry_later(job_id, services, exc.error, forget_task=True, steps=marks,
                                    token=token)
    except RetryableError as exc:
        if exc.code == RATE_LIMITED and job.server.queued_at is not None \
                and not endings.task_started(services, job_id):
            if lifecycle.may_requeue(job, clock.now(), services.settings.queue_ttl_seconds):
                ended = endings.requeue(job_id, services, job, exc, token=token)
            else:  # turned away longer than a queue's wait: spend attempts from now on,
                dispatch.narrow_provider(services, job.kind, exc.retry_after)  # on its places
                ended = endings.retry_later(job_id, services, exc, steps=marks, token=token)
        else:
            ended = endings.retry_later(job_id, services, exc, steps=marks, token=token)
    except Exception as exc:
        # A bug or an SDK error nobody translated: retry like a crash would, within limits.
        log.event(logger, "unexpected error", logging.ERROR, error=type(exc).__name__,
                  detail=str(exc)[:500])
        ended = endings.retry_later(job_id, services, RetryableError(
            "Something went wrong on our side.", code="internal"), token=token)
    if ended is RunOutcome.CANCELED:
        # Canceled while this delivery held it (noticed while running, or by an ending's
        # write): the paid task is ours to stop now (the cancel's wake-up, published when
        # a task was recorded, then finds it stopped).
        endings.cancel_remote(provider, job_id, services)
        log.event(logger, "job canceled while running; stopped")
    return ended


def _arrival_places(job_id: str, services: Services) -> tuple[list[str] | None, Job | None]:
    """A new job's first delivery (most deliveries are one): a plain read finds the job an
    *arrival* of the fair queue, which takes its places before the claim (one claim per
    arrival, not two). The places taken (``[]``: it waits, why is written on it; None: not
    an arrival, the claim decides), and the job as read: the claim's write is conditioned
    on it, so an untouched arrival is claimed in one commit instead of a transaction."""
    job = services.store.get(job_id)
    if job is None or job.queue_reason is not None or lifecycle.claim(
            job, worker_id=services.worker_id, now=services.clock.now(),
            policy=services.policy, claim_token="").outcome is not ClaimOutcome.QUEUED:
        return None, job
    return dispatch.arrive(services, job), job


@tracing.traced("kiln.claim")
def _claim(job_id: str, services: Services, check: int | None,
           arrival: dict[str, dt.datetime | None], places: list[str] | None,
           seen: Job | None, token: str) -> tuple[ClaimOutcome, Job | None, str | None]:
    now = services.clock.now()

    def decide(job: Job | None) -> tuple[Any, tuple[ClaimOutcome, Job | None, str | None]]:
        claim = lifecycle.claim(job, worker_id=endings.lease_owner(services, token), now=now,
                                policy=services.policy, claim_token=token, check=check,
                                places=places)
        return (timeline.carry(claim.change, _claim_steps(claim.outcome, job, check, now, arrival)),
                (claim.outcome, job, claim.resume_task_id))

    outcome, job, task_id = services.store.transact(job_id, decide, seen=seen)
    if outcome in (ClaimOutcome.EXHAUSTED, ClaimOutcome.EXPIRED):
        log.event(logger, f"job failed: {outcome}", logging.WARNING)
        notify.deliver(services, job_id)
        if job is not None and job.server.provider_task_id:
            # Past its maximum age (nobody will fetch the result), or out of attempts while
            # its task ran (its workers died): the paid task is stopped. A passing failure
            # nacks; the redelivery finds the task left (lifecycle.remote_task_left).
            endings.cancel_left(services, job)
    elif outcome is ClaimOutcome.NOT_YET:
        # Backoff not over: nack so Pub/Sub brings it back later; no attempt is spent.
        raise RetryableError("The job is waiting to retry.", code=BACKOFF)
    elif outcome is ClaimOutcome.TERMINAL and job is not None and lifecycle.remote_task_left(job):
        # Canceled, expired or out of attempts while no worker held it: the paid remote
        # task may still be running. A wake-up or a redelivery brings us here.
        endings.cancel_left(services, job)
    elif outcome not in (ClaimOutcome.CLAIMED, ClaimOutcome.STALE, ClaimOutcome.WAITING):
        log.event(logger, f"delivery ignored: {outcome}")
    return outcome, job, task_id


def _claim_steps(outcome: ClaimOutcome, job: Job | None, check: int | None, now: dt.datetime,
                 arrival: dict[str, dt.datetime | None]) -> dict[str, dt.datetime | None]:
    """The timeline steps a claim's write carries."""
    if outcome in (ClaimOutcome.EXHAUSTED, ClaimOutcome.EXPIRED):
        return {"failed": now}
    if outcome is not ClaimOutcome.CLAIMED or job is None:
        return {}
    if check is not None:
        return {f"check_{check}": now}
    attempt = job.attempts + 1
    return {**{timeline.step(name, attempt): at for name, at in arrival.items()},
            timeline.step("claimed", attempt): now}


class _TaskFailed(Exception):
    """The provider's task failed in a way a new task may not: retry from scratch."""

    def __init__(self, error: RetryableError) -> None:
        super().__init__(error.message)
        self.error = error


class _PollRefused(PermanentError):
    """The provider refused for good to say how its task is doing (a 4xx): the job fails,
    and the task, which may still run (and cost), is stopped."""


@tracing.traced("kiln.provider")
def _generate(provider: Any, request: GenerationRequest, reporter: ProgressReporter,
              services: Services, resume_task_id: str | None, deadline: float) -> Artifact:
    clock = services.clock
    if isinstance(provider, TaskProvider):
        return _run_task(provider, request, reporter, services, resume_task_id, deadline)
    assert isinstance(provider, SyncProvider)
    reporter.update(0, "generating")

    def should_stop() -> bool:
        # A generator that never returns must not hold the invocation past its budget
        # (heartbeats would keep its lease alive): release the attempt instead.
        if clock.monotonic() >= deadline:
            raise RetryableError("The generator did not finish in time.", code="provider_timeout")
        return reporter.should_stop()

    return provider.generate(request, reporter.update, should_stop)


def _run_task(provider: TaskProvider, request: GenerationRequest, reporter: ProgressReporter,
              services: Services, task_id: str | None, deadline: float) -> Artifact:
    """Submit the remote task (first delivery) or poll it once (a check); park the job
    (``_Wait``) while it runs, fetch the result when it succeeded."""
    del deadline  # nothing here waits: one submit or one poll per delivery
    if task_id is None:
        task_id = provider.submit(request)
        early = remote.save_task(provider, request.job_id, task_id, services, reporter.worker_id)
        log.event(logger, "provider task submitted", taskId=task_id)
        raise _Wait(reporter.progress, "queued", at_once=early)
    reporter.raise_if_stopped()
    try:
        status = provider.poll(task_id)
    except PermanentError as exc:
        raise _PollRefused(exc.message, code=exc.code) from exc
    except RetryableError as exc:
        # A provider's blip (5xx, timeout, 429) says nothing about its task: check again
        # later in the same attempt (checks spend none; the job's deadline bounds them),
        # not a release that spends one (three blips failed a job).
        log.event(logger, "check failed; checking again", logging.WARNING, code=exc.code)
        raise _Wait(reporter.progress, None, retry_after=exc.retry_after) from exc
    if status.task_id and status.task_id != task_id:
        task_id = status.task_id  # the provider moved on to its next remote task
        remote.save_task(provider, request.job_id, task_id, services, reporter.worker_id,
                         submitted=False)
    if status.state is TaskState.SUCCEEDED:
        reporter.update(status.progress or 90, status.stage or "downloading")
        # A failing fetch is not a blip of the checks: the task is done and its result
        # unreachable (a 5xx, an expired link), so it spends an attempt (retry_later).
        return provider.fetch(task_id, request)
    if status.state is TaskState.FAILED:
        message = status.error_message or "The provider failed."
        code = status.error_code or "provider_failed"
        if status.retryable:
            raise _TaskFailed(RetryableError(message, code=code))
        raise PermanentError(status.error_message or "The provider could not make this.",
                             code=code)
    if status.state is TaskState.CANCELED:
        current = services.store.get(request.job_id)
        if current is not None and current.status is JobStatus.CANCELED:
            raise CanceledError("The job was canceled.")  # we asked for it
        raise PermanentError("The provider canceled the task.", code="provider_canceled")
    raise _Wait(status.progress, status.stage or
                ("queued" if status.state is TaskState.PENDING else "generating"))


def _park(job_id: str, services: Services, provider: TaskProvider, job: Job,
          wait: _Wait, owner: str) -> RunOutcome:
    delay = 0.0 if wait.at_once else max(provider.cadence.delay(job.server.checks),
                                         wait.retry_after or 0.0)

    def decide(current: Job | None) -> tuple[Any, lifecycle.Check]:
        return lifecycle.park(current, worker_id=owner, now=services.clock.now(),
                              delay=delay, progress=wait.progress, stage=wait.stage)

    try:
        check = services.store.transact(job_id, decide)
    except CanceledError:
        # Canceled while we held it (its cancel woke nobody): the paid task is ours to stop.
        endings.cancel_remote(provider, job_id, services)
        log.event(logger, "job canceled while checking; stopped")
        return RunOutcome.CANCELED
    except LeaseLostError:
        return RunOutcome.LEASE_LOST
    if wait.progress > job.progress or (wait.stage or job.stage) != job.stage:
        notify.on_progress(services, job, max(wait.progress, job.progress),
                           wait.stage or job.stage)
    checks.send(services, job_id, check)
    return RunOutcome.WAITING
