"""The job lifecycle: the one place that decides how a job's state changes.

Each named transition takes the typed :class:`~kiln.core.job.Job` as read inside a store
transaction and returns the :class:`~kiln.core.job.Change` to write in that same
transaction, or raises when the transition is not allowed. The store applies changes
(``JobStore.transact``); nobody else builds a write to a job. No I/O here: the rules are
unit-tested on typed jobs, and attempts, backoff, leases and deadlines come from one
:class:`~kiln.core.policy.RetryPolicy`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln.core import timeline
from kiln.core.errors import CanceledError, LeaseLostError, RetryableError, TransitionError
from kiln.core.job import Change, Job, JobStatus, NewJob, allowed, target
from kiln.core.policy import RetryPolicy
from kiln.core.requests import JobRequest
from kiln.core.sentinels import DELETE, SERVER_TIME, Increment

#: Job documents are kept this long (a TTL policy on ``expireAt``), like their results.
RETENTION_DAYS = 90


def expire_at(since: dt.datetime) -> dt.datetime:
    """When a document written at ``since`` is deleted by its TTL policy (``expireAt``)."""
    return since + dt.timedelta(days=RETENTION_DAYS)

NOTIFY_CLAIMED = "claimed"
#: Taken from ``claimed`` by the one call that sends it (``kiln.runtime.notify``).
NOTIFY_SENDING = "sending"
#: Claimed, never sent, and too old to send (``kiln.runtime.sweeper``).
NOTIFY_ABANDONED = "abandoned"
DEADLINE_EXCEEDED = "deadline_exceeded"  # the error code of a job past its maximum age
DEADLINE_MESSAGE = "The job took too long and was stopped."
QUEUE_EXPIRED_MESSAGE = ("The job waited too long for its turn to start and was dropped. "
                         "Nothing was generated; please try again later.")


class ClaimOutcome(enum.StrEnum):
    """What one worker delivery does with a job."""

    CLAIMED = "claimed"  # run it (the change takes the lease)
    TERMINAL = "terminal"  # already ended: ack
    BUSY = "busy"  # another worker holds a live lease: ack
    NOT_YET = "not_yet"  # in retry backoff: nack so Pub/Sub redelivers later
    EXHAUSTED = "exhausted"  # out of attempts: the change fails it
    EXPIRED = "expired"  # past its deadline: the change fails it
    MISSING = "missing"  # no such job: ack
    WAITING = "waiting"  # parked on its remote task; only its live check runs it: ack
    STALE = "stale"  # a check that is not the job's live one (superseded, duplicate): ack
    QUEUED = "queued"  # waiting for its places in the fair queue; its start publishes it: ack


class SweepAction(enum.StrEnum):
    """What the sweeper does with a pending or running job."""

    LEAVE = "leave"
    REPUBLISH = "republish"  # its publish or its worker was lost: wake a worker
    RECHECK = "recheck"  # waiting, and its scheduled check is overdue (lost): check it now
    EXPIRE = "expire"  # past its deadline: fail it


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    change: Change | None = None
    resume_task_id: str | None = None


@dataclass(frozen=True)
class QueueEntry:
    """Where a new job waits: its plan and priority, how long it may wait, and why."""

    plan: str
    priority: int
    ttl_seconds: float
    #: Why it waits; None for an arrival (a worker places it: ``dispatch.arrive``).
    reason: str | None = "running_limit"
    position: int | None = None
    #: The places it got at once (it starts now), or none (it waits its turn).
    pools: tuple[str, ...] = ()


def new_job(*, job_id: str, uid: str, channel: str, request: JobRequest, now: dt.datetime,
            policy: RetryPolicy, idempotency_key: str | None = None,
            server: Mapping[str, Any] | None = None, queue: QueueEntry | None = None) -> NewJob:
    """The documents of a new ``pending`` job; with ``queue``, waiting in the fair queue
    until :func:`start` gives it its places."""
    doc = {
        "uid": uid, "channel": channel, "kind": request.kind, "prompt": request.prompt,
        "options": dict(request.options), "status": JobStatus.PENDING.value, "stage": "queued",
        "progress": 0, "attempts": 0, "error": None, "result": None,
        "createdAt": SERVER_TIME, "updatedAt": SERVER_TIME, "startedAt": None,
        "completedAt": None,
        # Firestore's TTL policy deletes the documents after this (infra: jobs.expireAt).
        "expireAt": expire_at(now),
    }
    private: dict[str, Any] = {"deadlineAt": policy.deadline(now),
                               "fingerprint": request.fingerprint(), "handoffs": 0,
                               "expireAt": doc["expireAt"],
                               timeline.FIELD: {"accepted": now}, **(server or {})}
    if queue is not None:
        waits = not queue.pools
        doc.update(queueReason=queue.reason if waits else None,
                   queuePosition=queue.position if waits else None)
        private.update(queued=waits, queuedAt=now, plan=queue.plan, priority=queue.priority,
                       queueUntil=now + dt.timedelta(seconds=queue.ttl_seconds),
                       pools=list(queue.pools))
    if idempotency_key is not None:
        private["idempotencyKey"] = idempotency_key
    return NewJob(job_id, doc, private)


# --- claim --------------------------------------------------------------------------


def claim(job: Job | None, *, worker_id: str, now: dt.datetime, policy: RetryPolicy,
          claim_token: str, check: int | None = None,
          places: list[str] | None = None) -> Claim:
    """Decide a delivery; on ``CLAIMED`` the change takes the lease and counts an attempt
    (a check of a job waiting on its remote task continues the same attempt). A job whose
    lease expired mid-run is claimed again and resumes its checkpointed provider task.
    ``check``: the delivery is that scheduled check; a waiting job runs only for its live
    check (``check_seq``), or for any check once that one is overdue; every other delivery
    of it is acked. ``places``: the delivery holds these places for a queued job (its
    arrival): it leaves the queue (as :func:`start`) and is claimed in the same write."""
    if job is None:
        return Claim(ClaimOutcome.MISSING)
    srv = job.server
    if job.terminal:
        return Claim(ClaimOutcome.TERMINAL)
    if job.status is JobStatus.PROCESSING and srv.lease_live(now):
        if srv.claim_token == claim_token:
            # Our own claim committed, but the SDK retried the transaction (its answer was
            # lost under contention): it is ours, nothing more to write.
            return Claim(ClaimOutcome.CLAIMED, None, srv.provider_task_id)
        return Claim(ClaimOutcome.BUSY)
    if srv.past_deadline(now) or queue_expired(job, now):
        return Claim(ClaimOutcome.EXPIRED, expire(job, now=now))
    started: Change | None = None
    if srv.queued and job.status is JobStatus.PENDING:
        if places is None:
            return Claim(ClaimOutcome.QUEUED)
        started = start(job, pools=places)
    # A waiting job runs only for its live check. A check of a job that is not waiting
    # (released for a retry, or its worker died) is an ordinary delivery, decided below.
    if srv.waiting:
        if check is None:
            return Claim(ClaimOutcome.WAITING)  # a duplicate or re-published plain message
        overdue = srv.next_check_at is not None and srv.next_check_at <= now
        if check != srv.check_seq and not overdue:
            # Once the live check is overdue, any check of the job runs it (the lease
            # decides which): behind a backlog longer than the sweeper's repair interval,
            # every repaired check would otherwise arrive after the next repair, stale.
            return Claim(ClaimOutcome.STALE)
        # Invisible to listeners: the job was and stays processing.
        return Claim(ClaimOutcome.CLAIMED, Change(
            {}, {"leaseOwner": worker_id, "leaseExpiresAt": policy.lease_until(now),
             "claimToken": claim_token, "nextCheckAt": None}), srv.provider_task_id)
    if policy.exhausted(job.attempts):
        last = job.error or {}
        given_up = _give_up(job, str(last.get("code") or "attempts_exhausted"),
                            str(last.get("message") or "The job kept failing."))
        if srv.provider_task_id:  # its worker died while the paid task ran: stop it
            given_up = given_up | Change({}, {"taskLeft": True})
        return Claim(ClaimOutcome.EXHAUSTED, given_up)
    if srv.not_before is not None and now < srv.not_before:
        return Claim(ClaimOutcome.NOT_YET)
    public: dict[str, Any] = {"status": target("claim").value, "updatedAt": SERVER_TIME}
    private: dict[str, Any] = {"leaseOwner": worker_id, "leaseExpiresAt": policy.lease_until(now),
                               "notBefore": None, "claimToken": claim_token}
    public["attempts"] = Increment(1)
    public["stage"] = "starting"
    if job.started_at is None:
        public["startedAt"] = SERVER_TIME
    change = Change(public, private)
    return Claim(ClaimOutcome.CLAIMED, started | change if started else change,
                 srv.provider_task_id)


def check_owner(job: Job | None, worker_id: str) -> Job:
    """The job, still processing under our lease; raise otherwise."""
    if job is None:
        raise LeaseLostError("The job document is gone.")
    if job.status is JobStatus.CANCELED:
        raise CanceledError("The job was canceled.")
    if job.status is not JobStatus.PROCESSING or job.server.lease_owner != worker_id:
        raise LeaseLostError("Another worker owns this job now.")
    return job


# --- while running ------------------------------------------------------------------


def report_progress(job: Job | None, *, worker_id: str, now: dt.datetime, policy: RetryPolicy,
                    progress: int | None = None, stage: str | None = None) -> Change:
    """Progress (never backwards within an attempt) and a lease heartbeat; the public
    document is written only when progress or stage really moved."""
    job = check_owner(job, worker_id)
    public: dict[str, Any] = {}
    if progress is not None:
        value = max(job.progress, min(100, max(0, int(progress))))
        if value != job.progress:
            public["progress"] = value
    if stage and stage != job.stage:
        public["stage"] = stage
    if public:
        public["updatedAt"] = SERVER_TIME
    return Change(public, {"leaseExpiresAt": policy.lease_until(now)})


def checkpoint(job: Job | None, *, worker_id: str, now: dt.datetime, policy: RetryPolicy,
               provider: str, task_id: str) -> Change:
    """Record the provider's task id so no later run pays for a second task. A job canceled,
    or failed past its maximum age, while the task was being submitted records it too
    (``remote_task_left``), so the task can be stopped."""
    if job is not None and (job.status is JobStatus.CANCELED or _expired(job)):
        return Change({}, {"providerTaskId": task_id, "provider": provider})
    check_owner(job, worker_id)
    return Change({}, {"leaseExpiresAt": policy.lease_until(now), "providerTaskId": task_id,
                       "provider": provider})


@dataclass(frozen=True)
class Check:
    """A scheduled check to send: the job's live check number and when it is due."""

    number: int
    at: dt.datetime


def park(job: Job | None, *, worker_id: str, now: dt.datetime, delay: float,
         progress: int | None = None, stage: str | None = None) -> tuple[Change, Check]:
    """Wait on the remote task without holding anything: give up the lease and make check
    ``check_seq + 1`` the live one, due after ``delay`` (at once if a callback woke the job
    meanwhile). Progress and stage, when they moved, go in the same write."""
    job = check_owner(job, worker_id)
    srv = job.server
    check = Check(srv.check_seq + 1, now if srv.wake else now + dt.timedelta(seconds=delay))
    public: dict[str, Any] = {}
    if progress is not None and max(0, min(100, int(progress))) > job.progress:
        public["progress"] = max(0, min(100, int(progress)))
    if stage and stage != job.stage:
        public["stage"] = stage
    if public:
        public["updatedAt"] = SERVER_TIME
    return Change(public, {"leaseOwner": None, "leaseExpiresAt": None, "claimToken": None,
                           "checkSeq": check.number, "nextCheckAt": check.at,
                           "checks": Increment(1), "wake": DELETE}), check


def wake(job: Job | None, *, now: dt.datetime) -> tuple[Change | None, Check | None]:
    """Check a waiting job now (a provider callback says its task ended): a new live check
    due at once, unless one is due already (coalesced). A job a worker holds is marked, so
    its next park checks at once; a pending or ended job needs nothing."""
    if job is None or job.terminal:
        return None, None
    srv = job.server
    if srv.waiting:
        assert srv.next_check_at is not None
        if srv.next_check_at <= now:
            return None, None  # a due check is on its way already
        check = Check(srv.check_seq + 1, now)
        return Change({}, {"checkSeq": check.number, "nextCheckAt": now}), check
    if job.status is JobStatus.PROCESSING and not srv.wake:
        return Change({}, {"wake": True}), None
    return None, None


def recheck(job: Job | None, *, now: dt.datetime) -> tuple[Change | None, Check | None]:
    """The sweeper's repair of a waiting job whose check never came: a new live check, due
    now (any late copy of the lost one is then stale)."""
    if job is None or job.terminal or not job.server.waiting:
        return None, None
    check = Check(job.server.check_seq + 1, now)
    return Change({}, {"checkSeq": check.number, "nextCheckAt": now}), check


def retry_or_fail(job: Job | None, *, worker_id: str, now: dt.datetime, policy: RetryPolicy,
                  error: RetryableError, forget_task: bool = False) -> tuple[Change, float | None]:
    """A retryable failure of a run: back to ``pending`` after the policy's backoff, or
    ``failed`` when no attempt is left. Returns the change and the backoff in seconds
    (None: no attempt was left, the job failed).
    ``forget_task``: the provider's task itself failed, so the next attempt starts anew."""
    job = check_owner(job, worker_id)
    if policy.exhausted(job.attempts):
        return _give_up(job, error.code, error.message), None
    backoff = policy.backoff(max(1, job.attempts), error.retry_after)
    private: dict[str, Any] = {"leaseOwner": None, "leaseExpiresAt": None,
                               "notBefore": now + dt.timedelta(seconds=backoff)}
    if forget_task:
        private["providerTaskId"] = None
    return Change({"status": target("release").value, "stage": "retrying",
                   "error": {"code": error.code, "message": error.message, "retryable": True},
                   "updatedAt": SERVER_TIME}, private), backoff


def _give_up(job: Job, code: str, message: str) -> Change:
    return fail(job, code=code, message=f"{message} Gave up after {job.attempts} attempts.")


# --- endings ------------------------------------------------------------------------


def complete(job: Job | None, *, worker_id: str, result: Mapping[str, Any],
             provenance: Mapping[str, Any] | None = None) -> Change:
    """``processing → completed``, claiming the completion notification in the same write."""
    check_owner(job, worker_id)
    public: dict[str, Any] = {"status": target("complete").value, "stage": "done",
                              "progress": 100, "error": None, "result": dict(result),
                              "updatedAt": SERVER_TIME, "completedAt": SERVER_TIME}
    if provenance:  # (a provider's words, on the client's document: kept short)
        public["provenance"] = {name: value[:PROVENANCE_TEXT] if isinstance(value, str)
                                else value for name, value in provenance.items()}
    return Change(public, _ended("generation_completed"))


#: The longest text a provider's provenance field keeps on the job (a task server's
#: ``model`` of a megabyte would fail the completion's write, Firestore's 1 MiB a document).
PROVENANCE_TEXT = 200


def fail(job: Job | None, *, code: str, message: str, worker_id: str | None = None) -> Change:
    """``pending | processing → failed`` with a user-readable reason; claims the push.

    With ``worker_id`` the caller must still own the job (a worker's own failure);
    without it (the sweeper, an exhausted or expired claim) any non-terminal job fails.
    """
    if worker_id is not None:
        job = check_owner(job, worker_id)
    elif job is None or not allowed("fail", job.status):
        raise TransitionError(f"A {job.status.value if job else 'missing'} job cannot fail.")
    return Change({"status": target("fail").value, "stage": "failed",
                   "error": {"code": code, "message": message, "retryable": False},
                   "updatedAt": SERVER_TIME, "completedAt": SERVER_TIME, **_dequeued(job)},
                  _ended("generation_failed"))


def _dequeued(job: Job | None) -> dict[str, Any]:
    """An ending job waits for nothing any more."""
    return {"queueReason": None, "queuePosition": None} if job and job.queue_reason else {}


def _ended(push_type: str) -> dict[str, Any]:
    return {"leaseOwner": None, "leaseExpiresAt": None, "nextCheckAt": None,
            "notify": {"state": NOTIFY_CLAIMED, "type": push_type}}


def cancel(job: Job | None, *, notice: bool = False) -> Change | None:
    """``pending | processing → canceled``; None when it is canceled already (idempotent).
    A running worker notices on its next progress write or stop check. With ``notice``
    (a channel whose end notice must not be lost: an API tenant's ``job.canceled``) the
    same write claims the notification, as an ending does; otherwise a cancel claims
    none (no push, no chat message)."""
    if job is None:
        raise TransitionError("No such job.")
    if job.status is JobStatus.CANCELED:
        return None
    if not allowed("cancel", job.status):
        raise TransitionError(f"This job is already {job.status.value} and cannot be canceled.")
    claim = {"notify": {"state": NOTIFY_CLAIMED, "type": "generation_canceled"}} if notice else {}
    return Change({"status": target("cancel").value, "stage": "canceled",
                   "updatedAt": SERVER_TIME, "completedAt": SERVER_TIME, **_dequeued(job)},
                  {"leaseOwner": None, "leaseExpiresAt": None, "notBefore": None,
                   "nextCheckAt": None, **claim})


def retry(job: Job | None, *, now: dt.datetime, policy: RetryPolicy) -> Change | None:
    """``failed → pending``: an explicit retry starts afresh (attempts, deadline, push).
    None when the job is already pending or processing again (idempotent)."""
    if job is None:
        raise TransitionError("No such job.")
    if job.status in (JobStatus.PENDING, JobStatus.PROCESSING):
        return None
    if not allowed("retry", job.status):
        raise TransitionError(f"Only a failed job can be retried; this one is {job.status.value}.")
    queued: dict[str, Any] = {}
    if job.server.queued_at is not None:  # it came through the fair queue: back into it
        ttl = (job.server.queue_until or job.server.queued_at) - job.server.queued_at
        queued = {"queued": True, "queuedAt": now, "queueUntil": now + ttl, "pools": []}
    # The new run's steps are numbered from 1 again: its timeline starts afresh from the
    # job's acceptance and the retry, the run before kept beside it (one run: bounded).
    earlier = dict(job.server.timeline or {})
    runs = {"timeline": {**({"accepted": earlier["accepted"]} if "accepted" in earlier else {}),
                         "retried": now},
            "earlierRun": earlier} if earlier else {}
    return Change({"status": target("retry").value, "stage": "queued", "progress": 0,
                   "attempts": 0, "error": None, "result": None, "completedAt": None,
                   "updatedAt": SERVER_TIME, **({"queueReason": "running_limit"} if queued else {})},
                  {"deadlineAt": policy.deadline(now), "notBefore": None,
                   "providerTaskId": None, "remoteCanceled": False, "taskLeft": False,
                   "checks": 0, "wake": False, "notify": None, "retries": Increment(1),
                   **queued, **runs})


# --- the sweeper's view -------------------------------------------------------------


def sweep_action(job: Job, *, now: dt.datetime, stale_after: float) -> SweepAction:
    """Pending too long (publish lost?), lease expired, a waiting job's check overdue, or
    past the deadline."""
    srv = job.server
    if job.terminal:
        return SweepAction.LEAVE
    if srv.past_deadline(now) or queue_expired(job, now):
        return SweepAction.EXPIRE
    if srv.queued and job.status is JobStatus.PENDING and job.queue_reason is not None:
        return SweepAction.LEAVE  # the fair queue starts it (runtime/dispatch.py)
    # (An arrival, queued with no reason yet, waits for its first delivery to place it:
    # re-published below if that message is lost.)
    stale = now - dt.timedelta(seconds=stale_after)
    if srv.waiting:
        assert srv.next_check_at is not None
        return SweepAction.RECHECK if srv.next_check_at <= stale else SweepAction.LEAVE
    if srv.republished_at is not None and srv.republished_at > stale:
        return SweepAction.LEAVE  # re-published recently: that message is on its way
    if job.status is JobStatus.PROCESSING:
        return SweepAction.LEAVE if srv.lease_live(now) else SweepAction.REPUBLISH
    if srv.not_before is not None:
        return SweepAction.REPUBLISH if now >= srv.not_before else SweepAction.LEAVE
    updated = job.updated_at
    return SweepAction.REPUBLISH if updated is None or updated <= stale else SweepAction.LEAVE


def expire(job: Job | None, *, now: dt.datetime) -> Change | None:
    """Fail a job past its deadline, or one that waited past its queue TTL (``expired``);
    None when it ended or is no longer late."""
    if job is None or job.terminal:
        return None
    if queue_expired(job, now):
        return fail(job, code="expired", message=QUEUE_EXPIRED_MESSAGE)
    if not job.server.past_deadline(now):
        return None
    return fail(job, code=DEADLINE_EXCEEDED, message=DEADLINE_MESSAGE)


# --- the fair queue -------------------------------------------------------------------


def queue_expired(job: Job, now: dt.datetime) -> bool:
    """Still waiting to start at its queue TTL."""
    srv = job.server
    return (srv.queued and job.status is JobStatus.PENDING and srv.queue_until is not None
            and now >= srv.queue_until)


def start(job: Job | None, *, pools: list[str]) -> Change | None:
    """A queued job got its places (``pools``): it leaves the queue and may be claimed.
    None when it is no longer waiting (started by another dispatcher, ended)."""
    if job is None or job.status is not JobStatus.PENDING or not job.server.queued:
        return None
    return Change({"queueReason": None, "queuePosition": None, "updatedAt": SERVER_TIME},
                  {"queued": False, "pools": list(pools), "notBefore": None})


def queue_reason(job: Job, reason: str, position: int | None) -> Change | None:
    """What a waiting job waits for, when that changed (written at most once per pass).
    Only a pending job waits: one canceled meanwhile keeps no reason."""
    if not job.server.queued or job.status is not JobStatus.PENDING \
            or (job.queue_reason, job.queue_position) == (reason, position):
        return None
    return Change({"queueReason": reason, "queuePosition": position}, {})


def may_requeue(job: Job, now: dt.datetime, ttl: float) -> bool:
    """Whether a provider's 429 may send the job back to the queue without spending its
    attempt: only within a queue's wait (``ttl`` seconds) of when it first queued. A job
    turned away for longer spends attempts like any retryable error, so a limit that
    never clears does not keep it queued until its maximum age."""
    queued_at = job.server.queued_at
    return queued_at is not None and now - queued_at < dt.timedelta(seconds=ttl)


def requeue(job: Job | None, *, worker_id: str, now: dt.datetime, delay: float) -> Change:
    """The provider refused the task for capacity (429) before it began: back to the
    queue, not started again for ``delay`` seconds, without spending the attempt; its
    places are given back by the caller. It keeps its seniority (``queuedAt``) but its
    time to wait starts again: the wait before its start was not spent on this turn, so
    a job that waited most of its time and then met a 429 does not expire at once."""
    job = check_owner(job, worker_id)
    srv = job.server
    again = {"queueUntil": now + (srv.queue_until - srv.queued_at)} \
        if srv.queue_until is not None and srv.queued_at is not None else {}
    return Change({"status": target("release").value, "stage": "queued",
                   "attempts": Increment(-1), "queueReason": "provider_capacity",
                   "queuePosition": None, "updatedAt": SERVER_TIME},
                  {"leaseOwner": None, "leaseExpiresAt": None, "claimToken": None,
                   "queued": True, "pools": [], "requeues": Increment(1),
                   "notBefore": now + dt.timedelta(seconds=delay), **again})


def republished(now: dt.datetime) -> Change:
    """Remembered, so a backlog is not re-published again every pass."""
    return Change({}, {"republishedAt": now})


# --- bookkeeping (server state only: no listener wakes) --------------------------------


def notified(state: str, report: Mapping[str, Any]) -> Change:
    """What the notification of an ended job did (``sent`` or ``error``)."""
    return Change({}, {"notify.state": state, "notify.at": SERVER_TIME,
                       "notify.report": dict(report)})


def remote_task_left(job: Job) -> bool:
    """A job that ended without waiting for its paid provider task, which may still be
    running: canceled, failed past its maximum age (nobody will fetch its result), or
    failed out of attempts while its task ran (``taskLeft``: its workers died)."""
    ended_early = job.status is JobStatus.CANCELED or _expired(job) or (
        job.status is JobStatus.FAILED and job.server.task_left)
    return ended_early and bool(job.server.provider_task_id) and not job.server.remote_canceled


def _expired(job: Job) -> bool:
    return job.status is JobStatus.FAILED and (job.error or {}).get("code") == DEADLINE_EXCEEDED


def remote_canceled() -> Change:
    return Change({}, {"remoteCanceled": True})


def channel_state(channel: str, fields: Mapping[str, Any]) -> Change:
    """A channel's own bookkeeping (e.g. the Telegram status message id), server-side."""
    return Change({}, {f"{channel}.{name}": value for name, value in fields.items()})
