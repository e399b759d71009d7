"""The job lifecycle, written once: each named transition as a pure function.

Every function here takes the job document as it is (a dict read inside a Firestore
transaction) and returns the field updates to write in that same transaction, or raises
when the transition is not allowed. ``kiln.adapters.firestore.JobStore.transact`` applies them. No I/O
happens here, so the rules are unit-tested on plain dicts.

Server-only state lives under ``_server`` (clients must not rely on it):
``leaseOwner``/``leaseExpiresAt`` (who runs the job, until when), ``notBefore`` (retry
backoff), ``deadlineAt`` (the job's maximum age), ``providerTaskId`` (a remote task to
resume, never to pay for twice), ``notify`` (the completion notification claim).
An expired lease is derived from ``leaseExpiresAt``, never stored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore import DELETE_FIELD, SERVER_TIMESTAMP, Increment

from kiln.core.errors import CanceledError, LeaseLostError, TransitionError
from kiln.core.job import TERMINAL, JobStatus, allowed, target
from kiln.core.requests import JobRequest

Updates = dict[str, Any]

#: Job documents are kept this long (a TTL policy on ``expireAt``), like their results.
RETENTION_DAYS = 90

#: A job is pending too long (publish lost?) or its lease expired: the sweeper acts.
NOTIFY_CLAIMED = "claimed"


def new_job(
    *,
    uid: str,
    channel: str,
    request: JobRequest,
    now: dt.datetime,
    max_age_seconds: float,
    idempotency_key: str | None = None,
    extra_server: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The document of a new ``pending`` job."""
    server: dict[str, Any] = {
        "deadlineAt": now + dt.timedelta(seconds=max_age_seconds),
        "fingerprint": request.fingerprint(),
        "leaseOwner": None,
        "leaseExpiresAt": None,
        "notBefore": None,
        "providerTaskId": None,
        "notify": None,
        "handoffs": 0,
    }
    if idempotency_key is not None:
        server["idempotencyKey"] = idempotency_key
    server.update(extra_server or {})
    return {
        "uid": uid,
        "channel": channel,
        "kind": request.kind,
        "prompt": request.prompt,
        "options": dict(request.options),
        "status": JobStatus.PENDING.value,
        "stage": "queued",
        "progress": 0,
        "attempts": 0,
        "error": None,
        "result": None,
        "createdAt": SERVER_TIMESTAMP,
        "updatedAt": SERVER_TIMESTAMP,
        "startedAt": None,
        "completedAt": None,
        # Firestore's TTL policy deletes the document after this (infra: jobs.expireAt).
        "expireAt": now + dt.timedelta(days=RETENTION_DAYS),
        "_server": server,
    }


def server(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("_server") or {}


def status(job: dict[str, Any]) -> JobStatus:
    return JobStatus(job["status"])


def lease_live(job: dict[str, Any], now: dt.datetime) -> bool:
    """Whether someone holds an unexpired lease on the job."""
    expires = server(job).get("leaseExpiresAt")
    return bool(server(job).get("leaseOwner")) and expires is not None and expires > now


# --- claim --------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a worker delivery should do with a job.

    ``outcome`` is one of: ``claimed`` (run it), ``terminal`` (already ended: ack),
    ``busy`` (another worker holds a live lease: ack), ``not_yet`` (in retry backoff:
    nack so Pub/Sub redelivers later), ``exhausted`` / ``expired`` (fail it now).
    """

    outcome: str
    updates: Updates | None = None
    resume_task_id: str | None = None


def claim(
    job: dict[str, Any],
    *,
    worker_id: str,
    now: dt.datetime,
    lease_seconds: float,
    max_attempts: int,
    claim_token: str | None = None,
) -> Claim:
    """Decide a delivery; on ``claimed`` the updates take the lease and count an attempt.

    A job whose lease expired mid-run (worker killed, instance recycled) is claimed
    again; if its provider task id was checkpointed the run resumes that task.
    """
    current = status(job)
    srv = server(job)
    if current in TERMINAL:
        return Claim("terminal")
    if current is JobStatus.PROCESSING and lease_live(job, now):
        if claim_token is not None and srv.get("claimToken") == claim_token:
            # Our own claim committed, but the SDK retried the transaction (its answer was
            # lost under contention): it is ours, nothing more to write.
            return Claim("claimed", None, resume_task_id=srv.get("providerTaskId"))
        return Claim("busy")
    deadline = srv.get("deadlineAt")
    if deadline is not None and now >= deadline:
        return Claim("expired")
    handoff = bool(srv.get("handoff"))
    if not handoff and job.get("attempts", 0) >= max_attempts:
        return Claim("exhausted")
    not_before = srv.get("notBefore")
    if not_before is not None and now < not_before:
        return Claim("not_yet")
    assert allowed("claim", current)
    updates: Updates = {
        "status": target("claim").value,
        "updatedAt": SERVER_TIMESTAMP,
        "_server.leaseOwner": worker_id,
        "_server.leaseExpiresAt": now + dt.timedelta(seconds=lease_seconds),
        "_server.notBefore": None,
        "_server.handoff": DELETE_FIELD,
        "_server.claimToken": claim_token,
    }
    if handoff:
        # A hand-off continues the same attempt in a fresh invocation.
        updates["_server.handoffs"] = Increment(1)
    else:
        updates["attempts"] = Increment(1)
        updates["stage"] = "starting"
    if job.get("startedAt") is None:
        updates["startedAt"] = SERVER_TIMESTAMP
    return Claim("claimed", updates, resume_task_id=srv.get("providerTaskId"))


def _check_owner(job: dict[str, Any], worker_id: str) -> None:
    """Raise unless the job is still processing under our lease."""
    current = status(job)
    if current is JobStatus.CANCELED:
        raise CanceledError("The job was canceled.")
    if current is not JobStatus.PROCESSING or server(job).get("leaseOwner") != worker_id:
        raise LeaseLostError("Another worker owns this job now.")


# --- while running ------------------------------------------------------------------


def report_progress(
    job: dict[str, Any],
    *,
    worker_id: str,
    now: dt.datetime,
    lease_seconds: float,
    progress: int | None = None,
    stage: str | None = None,
) -> Updates:
    """Progress (never backwards within an attempt) and a lease heartbeat."""
    _check_owner(job, worker_id)
    updates: Updates = {
        "updatedAt": SERVER_TIMESTAMP,
        "_server.leaseExpiresAt": now + dt.timedelta(seconds=lease_seconds),
    }
    if progress is not None:
        updates["progress"] = max(int(job.get("progress") or 0), min(100, max(0, int(progress))))
    if stage:
        updates["stage"] = stage
    return updates


def checkpoint(
    job: dict[str, Any], *, worker_id: str, now: dt.datetime, lease_seconds: float,
    provider: str, task_id: str,
) -> Updates:
    """Record the provider's task id so no later run pays for a second task."""
    updates = report_progress(job, worker_id=worker_id, now=now, lease_seconds=lease_seconds)
    updates["_server.providerTaskId"] = task_id
    updates["_server.provider"] = provider
    return updates


def hand_off(job: dict[str, Any], *, worker_id: str) -> Updates:
    """Give up the lease near the invocation deadline; a fresh one continues the task."""
    _check_owner(job, worker_id)
    return {
        "updatedAt": SERVER_TIMESTAMP,
        "_server.leaseOwner": None,
        "_server.leaseExpiresAt": None,
        "_server.handoff": True,
    }


def release(
    job: dict[str, Any], *, worker_id: str, now: dt.datetime, backoff_seconds: float,
    error: dict[str, Any],
) -> Updates:
    """A retryable failure: back to ``pending`` after a backoff (the attempt is spent)."""
    _check_owner(job, worker_id)
    return {
        "status": target("release").value,
        "stage": "retrying",
        "error": error,
        "updatedAt": SERVER_TIMESTAMP,
        "_server.leaseOwner": None,
        "_server.leaseExpiresAt": None,
        "_server.notBefore": now + dt.timedelta(seconds=backoff_seconds),
    }


# --- endings ------------------------------------------------------------------------


def complete(job: dict[str, Any], *, worker_id: str, result: dict[str, Any]) -> Updates:
    """``processing → completed``, claiming the completion notification in the same write."""
    _check_owner(job, worker_id)
    return {
        "status": target("complete").value,
        "stage": "done",
        "progress": 100,
        "error": None,
        "result": result,
        "updatedAt": SERVER_TIMESTAMP,
        "completedAt": SERVER_TIMESTAMP,
        "_server.leaseOwner": None,
        "_server.leaseExpiresAt": None,
        "_server.notify": {"state": NOTIFY_CLAIMED, "type": "generation_completed"},
    }


def fail(
    job: dict[str, Any], *, code: str, message: str, worker_id: str | None = None,
) -> Updates:
    """``pending | processing → failed`` with a user-readable reason; claims the push.

    With ``worker_id`` the caller must still own the job (a worker's own failure);
    without it (the sweeper, an exhausted or expired claim) any non-terminal job fails.
    """
    if worker_id is not None:
        _check_owner(job, worker_id)
    elif not allowed("fail", status(job)):
        raise TransitionError(f"A {job['status']} job cannot fail.")
    return {
        "status": target("fail").value,
        "stage": "failed",
        "error": {"code": code, "message": message, "retryable": False},
        "updatedAt": SERVER_TIMESTAMP,
        "completedAt": SERVER_TIMESTAMP,
        "_server.leaseOwner": None,
        "_server.leaseExpiresAt": None,
        "_server.notify": {"state": NOTIFY_CLAIMED, "type": "generation_failed"},
    }


def cancel(job: dict[str, Any]) -> Updates | None:
    """``pending | processing → canceled``; None when it is canceled already (idempotent).

    A running worker notices on its next progress write or stop check.
    """
    current = status(job)
    if current is JobStatus.CANCELED:
        return None
    if not allowed("cancel", current):
        raise TransitionError(f"This job is already {current.value} and cannot be canceled.")
    return {
        "status": target("cancel").value,
        "stage": "canceled",
        "updatedAt": SERVER_TIMESTAMP,
        "completedAt": SERVER_TIMESTAMP,
        "_server.leaseOwner": None,
        "_server.leaseExpiresAt": None,
        "_server.notBefore": None,
    }


def retry(job: dict[str, Any], *, now: dt.datetime, max_age_seconds: float) -> Updates | None:
    """``failed → pending``: an explicit retry starts afresh (attempts, deadline, push).

    None when the job is already pending or processing again (idempotent).
    """
    current = status(job)
    if current in (JobStatus.PENDING, JobStatus.PROCESSING):
        return None
    if not allowed("retry", current):
        raise TransitionError(f"Only a failed job can be retried; this one is {current.value}.")
    return {
        "status": target("retry").value,
        "stage": "queued",
        "progress": 0,
        "attempts": 0,
        "error": None,
        "result": None,
        "completedAt": None,
        "updatedAt": SERVER_TIMESTAMP,
        "_server.deadlineAt": now + dt.timedelta(seconds=max_age_seconds),
        "_server.notBefore": None,
        "_server.providerTaskId": None,
        "_server.notify": None,
        "_server.retries": Increment(1),
    }


def public_view(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """The client-facing fields of a job (the contract), JSON-ready."""
    out: dict[str, Any] = {"jobId": job_id}
    for name in ("uid", "channel", "kind", "prompt", "options", "status", "stage", "progress",
                 "attempts", "error", "result"):
        out[name] = job.get(name)
    for name in ("createdAt", "updatedAt", "startedAt", "completedAt"):
        value = job.get(name)
        out[name] = value.isoformat() if isinstance(value, dt.datetime) else None
    return out
