"""The job: its statuses and transition table, the typed job and its server-only state,
and the change a transition makes.

Pure data, no I/O. A job is two documents that change together: ``jobs/{jobId}`` holds
the contract fields clients read (:data:`PUBLIC_FIELDS`); its server state lives apart
(``jobs/{jobId}/private/server``), where the security rules deny every client. The
transitions themselves are in ``kiln.core.lifecycle``.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

PROMPT_MAX = 1000
#: The longest prompt (characters) of each provider that takes fewer than ``PROMPT_MAX``.
PROVIDER_PROMPT_MAX: Mapping[str, int] = {"meshy": 600}
KINDS = ("image", "model")
CHANNELS = ("app", "telegram", "api")
#: ``platform`` of a device document (users/{uid}/devices/{deviceId}).
PLATFORMS = ("android", "ios", "web")
ASPECT_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16")


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})

#: transition name → (statuses it may start from, status it ends in)
TRANSITIONS: dict[str, tuple[frozenset[JobStatus], JobStatus]] = {
    "claim": (frozenset({JobStatus.PENDING, JobStatus.PROCESSING}), JobStatus.PROCESSING),
    "report_progress": (frozenset({JobStatus.PROCESSING}), JobStatus.PROCESSING),
    "release": (frozenset({JobStatus.PROCESSING}), JobStatus.PENDING),
    "complete": (frozenset({JobStatus.PROCESSING}), JobStatus.COMPLETED),
    "fail": (frozenset({JobStatus.PENDING, JobStatus.PROCESSING}), JobStatus.FAILED),
    "cancel": (frozenset({JobStatus.PENDING, JobStatus.PROCESSING}), JobStatus.CANCELED),
    "retry": (frozenset({JobStatus.FAILED}), JobStatus.PENDING),
}


def allowed(transition: str, current: JobStatus | str) -> bool:
    """Whether ``transition`` may start from ``current``."""
    sources, _target = TRANSITIONS[transition]
    return JobStatus(current) in sources


def target(transition: str) -> JobStatus:
    return TRANSITIONS[transition][1]


def new_job_id(uid: str, idempotency_key: str | None = None) -> str:
    """A random id, or one derived from (uid, key) so a replayed request maps to one job.

    Ids are never sequential: sequential ids hot-spot Firestore.
    """
    if idempotency_key is None:
        return secrets.token_hex(10)
    return hashlib.sha256(f"{uid}\x00{idempotency_key}".encode()).hexdigest()[:20]


def is_valid_job_id(job_id: str) -> bool:
    """An id Kiln could have made: 8–64 ASCII letters, digits, ``-`` and ``_``, and not one
    Firestore reserves (``__…__``), which it would refuse with an error, not a miss."""
    return (8 <= len(job_id) <= 64 and job_id.isascii()
            and all(c.isalnum() or c in "-_" for c in job_id)
            and not (job_id.startswith("__") and job_id.endswith("__")))


#: The most devices of one user a push goes to: the newest registrations (a user could
#: register any number, and each costs the push a lookup and a send).
MAX_DEVICES = 10


def newest(devices: Iterable[Device]) -> list[Device]:
    """The :data:`MAX_DEVICES` newest of ``devices`` (by ``updated``), one per address (an
    app that registered again under a new device id is one app, pushed once)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for device in sorted(devices, key=lambda device: (device.updated, device.id), reverse=True):
        if device.address not in seen:
            seen.add(device.address)
            kept.append(device)
    return kept[:MAX_DEVICES]


@dataclass(frozen=True)
class Device:
    """Where one app instance receives pushes: its FID, or (legacy) its registration token."""

    id: str
    fid: str = ""
    token: str = ""
    updated: float = 0.0  # when the app registered it (Unix seconds; 0 when unknown)

    @classmethod
    def from_doc(cls, device_id: str, doc: Mapping[str, Any]) -> Device | None:
        """The device of a ``users/{uid}/devices/{deviceId}`` document (None if it has no
        usable address). The FID wins if an old document somehow carries both."""
        fid, token, at = doc.get("fid"), doc.get("token"), doc.get("updatedAt")
        updated = at.timestamp() if isinstance(at, dt.datetime) else \
            float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0.0
        if isinstance(fid, str) and fid:
            return cls(device_id, fid=fid, updated=updated)
        if isinstance(token, str) and token:
            return cls(device_id, token=token, updated=updated)
        return None

    @property
    def address(self) -> tuple[str, str]:
        """The field that addresses it and its value: ``("fid", …)`` or ``("token", …)``."""
        return ("fid", self.fid) if self.fid else ("token", self.token)

    def moved(self, elsewhere: Iterable[Device]) -> bool:
        """Whether the app instance was registered since by another user (``elsewhere``:
        other users' registrations of the same address): its app signed in as someone
        else without deleting this one, so this user's pushes must not go there."""
        return any(other.address == self.address and other.updated > self.updated
                   for other in elsewhere)


# --- the typed job ----------------------------------------------------------------------

#: The fields of ``jobs/{jobId}`` (the client contract), in document order.
PUBLIC_FIELDS = ("uid", "channel", "kind", "prompt", "options", "status", "stage", "progress",
                 "attempts", "error", "result", "provenance", "createdAt", "updatedAt",
                 "startedAt", "completedAt", "expireAt", "batchId", "queueReason",
                 "queuePosition")

#: Why a ``pending`` job waits to start (``queueReason``; null once it started).
QUEUE_REASONS = ("running_limit", "provider_capacity")


@functools.cache
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class ServerState:
    """What only Kiln reads: the lease, retry backoff, deadline, the provider's task, the
    notification claim, idempotency, a channel's reply address. Stored camelCase."""

    deadline_at: dt.datetime | None = None
    fingerprint: str = ""
    idempotency_key: str | None = None
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    claim_token: str | None = None
    not_before: dt.datetime | None = None
    provider: str | None = None
    provider_task_id: str | None = None
    remote_canceled: bool = False
    task_left: bool = False  # failed out of attempts while its task ran: cancel that task
    #: Waiting on the remote task, no lease held: the live check's number and when it is due
    #: (``next_check_at`` set ⇔ waiting). ``checks`` counts the checks made (the cadence).
    check_seq: int = 0
    next_check_at: dt.datetime | None = None
    checks: int = 0
    wake: bool = False  # woken (a callback) while a worker held it: check again at once
    retries: int = 0
    requeues: int = 0  # sent back to the queue by a provider's 429 (``lifecycle.requeue``)
    republished_at: dt.datetime | None = None
    #: The fair queue: waiting for places (``queued``) since ``queued_at``, failing
    #: ``expired`` at ``queue_until``; its plan and priority; the places it holds.
    queued: bool = False
    queued_at: dt.datetime | None = None
    queue_until: dt.datetime | None = None
    plan: str | None = None
    priority: int = 0
    pools: tuple[str, ...] | list[str] = ()
    notify: Mapping[str, Any] | None = None
    telegram: Mapping[str, Any] | None = None
    webhook: str | None = None  # an API job's own webhook URL (kiln.webhooks)
    timeline: Mapping[str, Any] | None = None  # step → when (kiln.core.timeline)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> ServerState:
        doc = doc or {}
        values = {f.name: doc[_camel(f.name)] for f in fields(cls)
                  if doc.get(_camel(f.name)) is not None}
        return cls(**values)

    def lease_live(self, now: dt.datetime) -> bool:
        """Someone holds an unexpired lease (an expired lease is derived, never stored)."""
        return bool(self.lease_owner) and self.lease_expires_at is not None \
            and self.lease_expires_at > now

    @property
    def waiting(self) -> bool:
        """Parked on a remote task until its next check (no worker holds it)."""
        return self.next_check_at is not None

    def past_deadline(self, now: dt.datetime) -> bool:
        return self.deadline_at is not None and now >= self.deadline_at


@dataclass(frozen=True)
class Job:
    """One job as read from its two documents."""

    id: str
    uid: str
    channel: str
    kind: str
    prompt: str
    status: JobStatus
    options: Mapping[str, Any] = field(default_factory=dict)
    stage: str = ""
    progress: int = 0
    attempts: int = 0
    error: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    provenance: Mapping[str, Any] | None = None
    batch_id: str | None = None
    queue_reason: str | None = None
    queue_position: int | None = None
    server: ServerState = field(default_factory=ServerState)
    #: When the store read the two documents (opaque: ``JobStore.transact``'s ``seen``).
    version: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_docs(cls, job_id: str, doc: Mapping[str, Any],
                  server: Mapping[str, Any] | None = None, version: Any = None) -> Job:
        return cls(
            id=job_id, uid=str(doc.get("uid", "")), channel=str(doc.get("channel", "")),
            kind=str(doc.get("kind", "")), prompt=str(doc.get("prompt", "")),
            status=JobStatus(doc["status"]), options=dict(doc.get("options") or {}),
            stage=str(doc.get("stage") or ""), progress=int(doc.get("progress") or 0),
            attempts=int(doc.get("attempts") or 0), error=doc.get("error"),
            result=doc.get("result"), created_at=doc.get("createdAt"),
            updated_at=doc.get("updatedAt"), started_at=doc.get("startedAt"),
            completed_at=doc.get("completedAt"), provenance=doc.get("provenance"),
            batch_id=doc.get("batchId"),
            queue_reason=doc.get("queueReason"), queue_position=doc.get("queuePosition"),
            server=ServerState.from_doc(server), version=version,
        )

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def public_view(self) -> dict[str, Any]:
        """The client-facing fields (the HTTP API's job), JSON-ready."""
        out: dict[str, Any] = {"jobId": self.id, "uid": self.uid, "channel": self.channel,
                               "kind": self.kind, "prompt": self.prompt,
                               "options": dict(self.options), "status": self.status.value,
                               "stage": self.stage, "progress": self.progress,
                               "attempts": self.attempts, "error": self.error,
                               "result": self.result, "queueReason": self.queue_reason,
                               "queuePosition": self.queue_position}
        for name in ("created_at", "updated_at", "started_at", "completed_at"):
            value = getattr(self, name)
            out[_camel(name)] = value.isoformat() if isinstance(value, dt.datetime) else None
        if self.batch_id is not None:
            out["batchId"] = self.batch_id
        return out


@dataclass(frozen=True)
class Change:
    """What a transition writes: public fields of ``jobs/{jobId}`` and server fields
    (dotted names reach into maps), values or ``kiln.core.sentinels``. A change with no
    public fields wakes no listener."""

    job: Mapping[str, Any] = field(default_factory=dict)
    server: Mapping[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.job or self.server)

    def __or__(self, other: Change) -> Change:
        return Change({**self.job, **other.job}, {**self.server, **other.server})


@dataclass(frozen=True)
class Tickets:
    """Quota tickets to take in the same commit as a job (``kiln.ports.Counters``)."""

    key: str
    numbers: tuple[int, ...]
    holder: str = ""


@dataclass(frozen=True)
class NewJob:
    """The two documents of a job about to be created (and the quota tickets it pays
    with, created in the same commit, when admission deferred them). ``key_batch``: the
    batch its caller's Idempotency-Key would name (``kiln.core.batches.new_batch_id``);
    the job is created only if no such batch exists, in the same commit, so one key
    names one request, a job or a batch, whichever came first."""

    id: str
    doc: Mapping[str, Any]
    server: Mapping[str, Any]
    tickets: Tickets | None = None
    key_batch: str | None = None
