"""The client contract as pydantic models: the job document ``jobs/{jobId}`` clients read,
the HTTP API's answers, a device document and the completion push.

Kiln does not validate its own writes with these; they exist so that the JSON Schema,
TypeScript and OpenAPI in docs/ are generated from one description
(``python -m kiln_dev.schema --write``) and checked against the code by the tests. Field
names are the wire names (camelCase). A field ``= ABSENT`` may be absent but is never null.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from typing_extensions import TypeAliasType

from kiln.core.batches import BATCH_MAX
from kiln.core.job import PROMPT_MAX, TRANSITIONS
from kiln.core.lifecycle import RETENTION_DAYS
from kiln.core.requests import ABSENT, OPTION_MODELS, CreateJobRequest, ImageOptions, ModelOptions


def _status_description() -> str:
    moves = "; ".join(f"{name}: {'|'.join(sorted(s.value for s in sources))} → {to.value}"
                      for name, (sources, to) in TRANSITIONS.items())
    return ("Job status. Terminal: completed, failed, canceled (failed → pending only by an "
            f"explicit retry). Transitions: {moves}.")


#: The values of ``kiln.core.job.JobStatus`` (a test holds them equal).
JobStatus = TypeAliasType("JobStatus", Annotated[
    Literal["pending", "processing", "completed", "failed", "canceled"],
    Field(description=_status_description())])
Kind = TypeAliasType("Kind", Annotated[Literal["image", "model"], Field(
    description="image = a PNG; model = a GLB (binary glTF 2.0) 3D model.")])
Channel = TypeAliasType("Channel", Annotated[Literal["app", "telegram", "api"], Field(
    description="Where the request came from.")])
Timestamp = TypeAliasType("Timestamp", Annotated[dt.datetime, WithJsonSchema({
    "type": "string", "format": "date-time", "x-typescript": "FirestoreTimestamp",
    "description": "A Firestore Timestamp (server time). JSON renders it as ISO 8601."})])

# The fields a job document and the HTTP API's view share, described once.
Uid = Annotated[str, Field(min_length=1, description="Owner: the Firebase Auth uid "
                                                     "(`telegram:<chatId>` for bot users).")]
JobPrompt = Annotated[str, Field(min_length=1, max_length=PROMPT_MAX,
                                 description="What to generate; whitespace collapsed.")]
Options = Annotated[ImageOptions | ModelOptions, Field(
    description="Per kind: ImageOptions or ModelOptions.")]
Stage = Annotated[str, Field(description="Short human step: queued, starting, generating, "
                             "meshing, texturing, uploading, packaging, retrying, done, failed, "
                             "canceled. Show it; do not branch on it.")]
Progress = Annotated[int, Field(ge=0, le=100, description="0–100; never goes backwards within an "
                                "attempt (a retry restarts at 0).")]
Attempts = Annotated[int, Field(ge=0, description="Worker attempts so far.")]
QueueReason = TypeAliasType("QueueReason", Annotated[
    Literal["running_limit", "provider_capacity"] | None, Field(
        description="Why a pending job (stage queued) waits to start: running_limit = the "
        "owner already runs as many jobs as its plan allows; provider_capacity = the "
        "generator's account is at capacity (or asked us to slow down). null (or absent) "
        "once it started, and on jobs that never waited.")])
QueuePosition = Annotated[int | None, Field(ge=1, description=(
    "An estimate of the jobs that start before this one (1 = next), refreshed about once "
    "a minute; null when unknown or not waiting. Show it as a hint, not a promise."))]


def _options_follow_kind(schema: dict[str, Any]) -> None:
    """``options`` must match ``kind``: one if/then per kind."""
    schema["allOf"] = [
        {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
         "then": {"properties": {"options": {"$ref": f"#/$defs/{model.__name__}"}}}}
        for kind, model in OPTION_MODELS.items()]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobError(_Model):
    """Why the job failed (or why the last attempt failed)."""

    code: str = Field(description="Stable machine code, e.g. content_refused, timed_out, "
                      "attempts_exhausted.")
    message: str = Field(description="Safe to show to the user as is.")
    retryable: bool = Field(description="true while Kiln still retries by itself (status "
                            "pending, stage retrying); false once failed.")


class JobResult(_Model):
    """The stored result; present when status is completed."""

    path: str = Field(description="Object path in the bucket: "
                      "generations/{uid}/{jobId}/result.png or result.glb.")
    contentType: Literal["image/png", "model/gltf-binary"]
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    downloadUrl: str = Field(description="Firebase download URL (token-bearing, no expiry); or "
                             "getDownloadURL(ref(storage, path)).")
    thumbnailPath: str = Field(ABSENT, description="generations/{uid}/{jobId}/thumb.png "
                               "(PNG, up to 256 px).")
    thumbnailUrl: str = Field(ABSENT, description="Download URL of the thumbnail.")


class Provenance(BaseModel):
    """What the provider reported (provider, model, taskId, credits…), set on completion.
    Informational; keys vary by provider."""

    model_config = ConfigDict(extra="allow")

    provider: str = ABSENT


class Job(_Model):
    """The job document `jobs/{jobId}` as clients read it."""

    model_config = ConfigDict(json_schema_extra=_options_follow_kind)

    uid: Uid
    channel: Channel
    kind: Kind
    prompt: JobPrompt
    options: Options
    status: JobStatus
    stage: Stage
    progress: Progress
    attempts: Attempts
    error: JobError | None
    result: JobResult | None
    provenance: Provenance = ABSENT
    queueReason: QueueReason = None
    queuePosition: QueuePosition = None
    createdAt: Timestamp = Field(description="When the job was accepted (server time).")
    updatedAt: Timestamp = Field(description="Last write (server time).")
    startedAt: Timestamp | None = Field(description="First claim by a worker.")
    completedAt: Timestamp | None = Field(description="When it ended (completed, failed or "
                                          "canceled); null again after a retry.")
    expireAt: Timestamp = Field(description="When Firestore's TTL policy deletes the job "
                                f"(about {RETENTION_DAYS} days after creation, like its files).")
    batchId: str = Field(ABSENT, description="The batch this job belongs to (POST "
                         "/v1/batches); absent for a job submitted alone.")


class JobView(_Model):
    """A job as the HTTP API returns it: the document's client fields, timestamps as ISO
    8601 strings."""

    model_config = ConfigDict(json_schema_extra=_options_follow_kind)

    jobId: str
    uid: Uid
    channel: Channel
    kind: Kind
    prompt: JobPrompt
    options: Options
    status: JobStatus
    stage: Stage
    progress: Progress
    attempts: Attempts
    error: JobError | None
    result: JobResult | None
    queueReason: QueueReason = None
    queuePosition: QueuePosition = None
    createdAt: dt.datetime | None
    updatedAt: dt.datetime | None
    startedAt: dt.datetime | None
    completedAt: dt.datetime | None
    batchId: str = ABSENT


class Device(_Model):
    """users/{uid}/devices/{deviceId}: one of the user's devices, written by the app: exactly
    one of fid and token."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["fid"]},
                                                           {"required": ["token"]}]})

    fid: str = Field(ABSENT, min_length=1, max_length=4096, description="The Firebase "
                     "Installation ID FCM registered (onRegistered); give this or token, not both.")
    token: str = Field(ABSENT, min_length=1, max_length=4096, description="Legacy FCM "
                       "registration token (getToken), for apps not yet on FIDs; give this or "
                       "fid, not both.")
    platform: Literal["android", "ios", "web"]
    updatedAt: Timestamp = Field(description="serverTimestamp() (the rules require it).")


class PushData(_Model):
    """The data of a completion push (all values are strings)."""

    type: Literal["generation_completed", "generation_failed"]
    jobId: str
    kind: Kind
    link: str = Field(description="KILN_LINK_TEMPLATE with the job id (default /jobs/{jobId}): "
                      "where a tap should go.")


class CreateJobResponse(_Model):
    """202: accepted (or replayed, see Idempotent-Replayed)."""

    jobId: str
    status: JobStatus


class JobActionResponse(_Model):
    """Answer of :cancel (200) and :retry (202)."""

    jobId: str
    status: JobStatus


class CreateBatchRequest(_Model):
    """POST /v1/batches: 1–100 jobs accepted together (all or none)."""

    items: list[CreateJobRequest] = Field(min_length=1, max_length=BATCH_MAX, description=
                                          "Each item is a POST /v1/jobs body; a refused item "
                                          "is named in the error (items[3].prompt …).")


class CreateBatchResponse(_Model):
    """202: the batch and all its jobs were accepted (or replayed, see Idempotent-Replayed)."""

    batchId: str
    jobIds: list[str] = Field(description="One job per item, in the items' order.")


class BatchCounts(_Model):
    """How many of the batch's jobs are in each status."""

    pending: int = Field(ge=0)
    processing: int = Field(ge=0)
    completed: int = Field(ge=0)
    failed: int = Field(ge=0)
    canceled: int = Field(ge=0)


class BatchView(_Model):
    """GET /v1/batches/{batchId}: counted from the jobs themselves."""

    batchId: str
    uid: Uid
    channel: Channel
    total: int = Field(ge=1, le=BATCH_MAX)
    counts: BatchCounts
    done: bool = Field(description="Every job has ended (completed, failed or canceled).")
    jobIds: list[str]
    createdAt: dt.datetime | None


class CancelBatchResponse(_Model):
    """POST /v1/batches/{batchId}:cancel: every job not yet ended is canceled."""

    batchId: str
    canceled: int = Field(ge=0, description="Jobs this call canceled.")
    counts: BatchCounts


class BatchPushData(_Model):
    """The data of the one push an app user gets when a whole batch has ended."""

    type: Literal["batch_completed"]
    batchId: str
    total: str
    completed: str


class JobList(_Model):
    """GET /v1/jobs: newest first, a page at a time."""

    jobs: list[JobView]
    nextPageToken: str | None = Field(
        default=None, description="Present when more jobs follow: pass it as `pageToken` "
        "for the next page (with the same `limit` or another).")


class TimelineStep(_Model):
    """One step of a job's way, as recorded in its server state (docs/timeline.md)."""

    step: str = Field(description="accepted, published, delivered, claimed, check_N, "
                      "submitted, generated, stored, completed | failed | canceled, released, "
                      "notified; a later attempt's steps end in its number (claimed_2).")
    at: dt.datetime = Field(description="When it happened (UTC), by the clock of the process "
                            "that recorded it (Pub/Sub's for published).")
    sinceAcceptedMs: float = Field(ge=0, description="Milliseconds since the first step "
                                   "(accepted).")
    gapMs: float = Field(ge=0, description="Milliseconds since the step before (0 for the "
                         "first).")


class JobTimeline(_Model):
    """GET /v1/jobs/{jobId}/timeline: when each step of the job happened (owner only), the
    rows `kiln trace` draws. Step names and times only; nothing else of the server state."""

    jobId: str
    kind: Kind
    status: JobStatus
    attempts: Attempts
    totalMs: float = Field(ge=0, description="From the first step to the last (0 with no steps).")
    steps: list[TimelineStep] = Field(description="Oldest first; empty for a job that recorded "
                                      "none (accepted before timelines existed).")


class ApiErrorBody(_Model):
    """What went wrong."""

    code: str = Field(description="Machine code, e.g. invalid_prompt, not_found.")
    message: str = Field(description="Readable; names the bad field.")


class ApiError(_Model):
    """Every error answer of the HTTP API."""

    error: ApiErrorBody


#: Everything the generated files describe, in their order (``Job`` first: the document).
CONTRACT: tuple[Any, ...] = (Job, JobStatus, Kind, Channel, ImageOptions, ModelOptions, JobError,
                             JobResult, Provenance, Timestamp, JobView, Device, PushData,
                             CreateJobRequest, CreateJobResponse, JobActionResponse, JobList,
                             ApiError, CreateBatchRequest, CreateBatchResponse, BatchCounts,
                             BatchView, CancelBatchResponse, BatchPushData, JobTimeline,
                             TimelineStep)
