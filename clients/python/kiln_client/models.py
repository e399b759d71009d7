"""What the API answers, typed (the wire names are camelCase; these are snake_case)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"completed", "failed", "canceled"})


@dataclass(frozen=True)
class JobResult:
    path: str
    content_type: str
    bytes: int
    sha256: str
    download_url: str
    thumbnail_url: str | None = None


@dataclass(frozen=True)
class Job:
    job_id: str
    status: str
    kind: str
    prompt: str
    progress: int
    stage: str
    attempts: int
    options: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    result: JobResult | None = None
    batch_id: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    #: Why a pending job waits (``running_limit``, ``provider_capacity``) and its place.
    queue_reason: str | None = None
    queue_position: int | None = None
    started_at: str | None = None
    updated_at: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Job:
        raw = data.get("result")
        result = None if not raw else JobResult(
            raw["path"], raw["contentType"], int(raw["bytes"]), raw["sha256"],
            raw["downloadUrl"], raw.get("thumbnailUrl"))
        return cls(job_id=data["jobId"], status=data["status"], kind=data.get("kind", ""),
                   prompt=data.get("prompt", ""), progress=int(data.get("progress") or 0),
                   stage=data.get("stage") or "", attempts=int(data.get("attempts") or 0),
                   options=dict(data.get("options") or {}), error=data.get("error"),
                   result=result, batch_id=data.get("batchId"),
                   created_at=data.get("createdAt"), completed_at=data.get("completedAt"),
                   queue_reason=data.get("queueReason"),
                   queue_position=(None if data.get("queuePosition") is None
                                   else int(data["queuePosition"])),
                   started_at=data.get("startedAt"), updated_at=data.get("updatedAt"))


@dataclass(frozen=True)
class Submitted:
    """A job accepted (``replayed``: the same Idempotency-Key was seen before)."""

    job_id: str
    status: str
    replayed: bool


@dataclass(frozen=True)
class SubmittedBatch:
    batch_id: str
    job_ids: list[str]
    replayed: bool


@dataclass(frozen=True)
class Batch:
    batch_id: str
    total: int
    counts: dict[str, int]
    done: bool
    job_ids: list[str]

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Batch:
        return cls(data["batchId"], int(data["total"]), dict(data["counts"]),
                   bool(data["done"]), list(data["jobIds"]))


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook: ``id`` (the ``webhook-id``; de-duplicate on it), ``type``
    (``job.completed``, ``batch.completed``, …), ``timestamp`` and ``data``."""

    id: str
    type: str
    timestamp: str
    data: dict[str, Any]
