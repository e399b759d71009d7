"""Meshy text-to-3D and image-to-3D on its API v2, as a :class:`~kiln.providers.base.TaskProvider`.

Meshy's API v2 (docs.meshy.ai: "Migrate to API v2", Text to 3D, Image to 3D, Tasks):
one call makes a model. ``POST /openapi/v2/text-to-3d`` or ``POST /openapi/v2/image-to-3d``
answers the new task object; ``GET /openapi/v2/tasks/{id}`` reads a task of either kind,
its results under ``output`` (``output.model_urls.glb``, ``output.thumbnail_url``) and
``status``, ``progress``, ``task_error``, ``consumed_credits`` at the top;
``DELETE /openapi/v2/tasks/{id}`` deletes one (a pending task is refunded; one in progress
is refused and runs on). The preview/refine ``mode`` requests and every v1 route stop
working on 15 March 2027; Kiln uses neither.

Kiln's task id names its kind: ``text:<id>`` or ``image:<id>`` (``options.imageUrl``).
Ids saved before the move (``preview:``, ``refine:``, ``mesh:``) are read through the same
route; a ``preview:`` that succeeded is an untextured mesh whose refine Kiln no longer
makes, so its job starts over with one call (``provider_task_lost``, retryable).

What Kiln sends: the prompt (at most :data:`PROMPT_MAX` characters, else the job fails
before any call, ``prompt_too_long``), ``ai_model`` (``KILN_MESHY_MODEL``, pinned to
``meshy-7.1`` as Meshy advises), ``should_texture`` (``options.texture``, default true)
and, for a textured model, ``texture_model`` (``KILN_MESHY_TEXTURE_MODEL``) and
``enable_pbr``; ``seed`` when given. ``options.style`` is not sent: ``art_style`` is
deprecated and ignored since Meshy 6, and v2 refuses parameters an endpoint does not
define; provenance says ``styleIgnored``.

Progress: ``queued`` while pending, then ``modeling`` 0–90; the worker reports 90
``downloading`` and 95 ``uploading`` after that.

Errors map as in :mod:`kiln.providers.http`, but read Meshy's own ``code`` and ``type``
first: a moderation code, or a 403 of type ``invalid_input``, is ``content_refused``. A
task that ends FAILED is retried with a new task (Meshy refunds a failed task, and most
failures are passing) unless its ``task_error`` is moderation (``content_refused``) or of
type ``invalid_input`` (``provider_rejected``).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from kiln import log
from kiln.core.errors import KilnError, PermanentError, RetryableError
from kiln.core.job import PROVIDER_PROMPT_MAX
from kiln.core.policy import PollCadence
from kiln.paced import ending_by
from kiln.providers.base import CONTENT_TYPES, Artifact, GenerationRequest, TaskState, TaskStatus
from kiln.providers.fetch import (
    FetchPolicy,
    Resolver,
    check_user_url,
    fetch_small,
    open_stream,
    system_resolve,
)
from kiln.providers.http import ErrorBody, JsonApi, as_png, percent
from kiln.settings import Settings

logger = log.get("providers.meshy")

LABEL = "3D generation service"
RESULT_HOSTS = ("assets.meshy.ai", "*.meshy.ai")
THUMBNAIL_MAX_BYTES = 5 * 1024 * 1024
THUMBNAIL_SECONDS = 20.0
PROMPT_MAX = PROVIDER_PROMPT_MAX["meshy"]  # (also refused at submit: Settings.prompt_max)
CREATE_PATHS = {"text": "/openapi/v2/text-to-3d", "image": "/openapi/v2/image-to-3d"}
TASKS_PATH = "/openapi/v2/tasks"
#: Kiln's task kind → (first percent, span, stage name while running); the last three
#: are ids saved before API v2 (a preview, then its refine; a preview that was the result).
_SPANS = {"text": (0, 90, "modeling"), "image": (0, 90, "modeling"),
          "preview": (0, 45, "modeling"), "refine": (45, 45, "texturing"),
          "mesh": (0, 90, "modeling")}
_STATES = {"PENDING": TaskState.PENDING, "IN_PROGRESS": TaskState.RUNNING,
           "SUCCEEDED": TaskState.SUCCEEDED, "FAILED": TaskState.FAILED,
           "CANCELED": TaskState.CANCELED, "EXPIRED": TaskState.FAILED}


class MeshyProvider:
    """Text-to-3D and image-to-3D against a Meshy-compatible API v2."""

    name = "meshy"

    def __init__(self, settings: Settings, *, cadence: PollCadence | None = None,
                 timeout: float = 30.0,
                 client: httpx.Client | None = None, resolve: Resolver = system_resolve,
                 fetch_read_timeout: float = 60.0) -> None:
        self.settings = settings
        self.cadence = cadence or settings.poll_cadence(PollCadence(first=5.0, max=30.0))
        self._api = _MeshyApi(settings.meshy_base_url, settings.meshy_api_key, LABEL,
                              timeout=timeout, client=client)
        own_host = urllib.parse.urlsplit(settings.meshy_base_url).hostname or ""
        self._policy = FetchPolicy.for_provider(settings, (own_host, *RESULT_HOSTS),
                                                read_timeout=fetch_read_timeout)
        self._resolve = resolve

    def submit(self, request: GenerationRequest) -> str:
        options = request.options
        textured = options.get("texture", True) is not False
        body: dict[str, Any] = {"ai_model": self.settings.meshy_model, "should_texture": textured}
        if textured:
            body |= {"texture_model": self.settings.meshy_texture_model, "enable_pbr": True}
        if options.get("style"):
            log.event(logger, "style not sent: Meshy's art_style is deprecated")
        image_url = options.get("imageUrl")
        if image_url:
            check_user_url(str(image_url), self.settings, self._resolve)
            kind, body["image_url"] = "image", image_url
        else:
            if len(request.prompt) > PROMPT_MAX:
                raise PermanentError(
                    f"The {LABEL} takes prompts of up to {PROMPT_MAX} characters; this one "
                    f"has {len(request.prompt)}. Shorten it and try again.",
                    code="prompt_too_long")
            kind, body["prompt"] = "text", request.prompt
            if isinstance(options.get("seed"), int):
                body["seed"] = options["seed"]
        return f"{kind}:{self._created(self._api.call('POST', CREATE_PATHS[kind], json=body))}"

    def poll(self, task_id: str) -> TaskStatus:
        stage, remote = _split(task_id)
        try:
            task = self._get(remote)
        except PermanentError as exc:
            if exc.code != "provider_not_found":
                raise
            # The task is gone (expired or deleted): a fresh attempt starts a new one.
            return _lost("The 3D generation service lost the task; retrying.")
        state = _STATES.get(str(task.get("status")), TaskState.RUNNING)
        start, span, running = _SPANS[stage]
        if state is TaskState.SUCCEEDED and stage == "preview":
            return _lost("This model was begun with the 3D generation service's older "
                         "two-step method, which is no longer finished.")
        if state is TaskState.SUCCEEDED:
            return TaskStatus(state, progress=start + span, stage="downloading")
        if state is TaskState.FAILED:
            return _failed(stage, task.get("task_error"), self._api.shown)
        if state is TaskState.PENDING:
            return TaskStatus(state, progress=start, stage="queued")
        return TaskStatus(state, progress=start + span * percent(task.get("progress")) // 100,
                          stage=running)

    def fetch(self, task_id: str, request: GenerationRequest) -> Artifact:
        stage, remote = _split(task_id)
        task = self._get(remote)
        output = _object(task.get("output"))
        glb = _object(output.get("model_urls")).get("glb")
        if not glb:
            raise PermanentError("The 3D generation service finished without a GLB file.",
                                 code="invalid_artifact")
        download = open_stream(str(glb), self._policy, resolve=self._resolve)
        sent = _object(task.get("input"))
        provenance: dict[str, Any] = {
            "provider": self.name, "model": str(sent.get("ai_model") or "meshy"),  # as sent
            "taskId": remote, "mode": "image-to-3d" if stage == "image" else "text-to-3d",
        }
        if sent.get("texture_model"):
            provenance["textureModel"] = str(sent["texture_model"])
        if request.options.get("style"):
            provenance["styleIgnored"] = True
        if isinstance(task.get("consumed_credits"), int | float):
            provenance["credits"] = task["consumed_credits"]
        return Artifact(kind="model", content_type=CONTENT_TYPES["model"], chunks=download.chunks,
                        size=download.size, thumbnail=self._thumbnail(output.get("thumbnail_url")),
                        provenance=provenance)

    def cancel(self, task_id: str) -> None:
        _, remote = _split(task_id)
        self._api.call("DELETE", f"{TASKS_PATH}/{urllib.parse.quote(remote, safe='')}")

    def _get(self, remote: str) -> dict[str, Any]:
        task = self._api.call("GET", f"{TASKS_PATH}/{urllib.parse.quote(remote, safe='')}")
        if not isinstance(task, dict):  # (empty, null, a list): a blip, asked again
            raise RetryableError("The 3D generation service sent an unreadable task.",
                                 code="provider_unavailable")
        return task

    def _thumbnail(self, url: Any) -> bytes | None:
        """The provider's preview picture as PNG, when it has one (best effort, within
        ``THUMBNAIL_SECONDS``: nothing renews the job's lease while it downloads)."""
        if not url:
            return None
        try:
            with ending_by(time.monotonic() + THUMBNAIL_SECONDS):
                data = fetch_small(str(url), self._policy, THUMBNAIL_MAX_BYTES,
                                   resolve=self._resolve)
            return as_png(data, "thumbnail")
        except KilnError as exc:
            log.event(logger, "thumbnail skipped", logging.WARNING, code=exc.code)
            return None

    @staticmethod
    def _created(answer: Any) -> str:
        """The new task's id: v2 answers the task object (``id``); v1 answered
        ``{result: id}``, taken too, so a paid task is never left untracked."""
        answer = answer if isinstance(answer, dict) else {}
        task_id = answer.get("id") or answer.get("result")
        if not isinstance(task_id, str) or not task_id:
            raise PermanentError("The 3D generation service did not start a task.",
                                 code="provider_rejected")
        return task_id


class _MeshyApi(JsonApi):
    """Meshy's JSON API: its v2 error bodies name a ``code`` and a ``type`` to branch on."""

    def error(self, status: int, body: ErrorBody, headers: Mapping[str, str]) -> KilnError:
        if _moderated(body.code) or (status == 403 and body.type == "invalid_input"):
            return PermanentError(_refused(body.message, "request"), code="content_refused")
        return super().error(status, body, headers)


def _failed(stage: str, error: Any, shown: Callable[[Any, int], str]) -> TaskStatus:
    """A FAILED task: retried with a new task (Meshy refunds it), unless Meshy says its
    input is at fault. ``shown``: Meshy's text as a user may read it (no key)."""
    error = error if isinstance(error, dict) else {}
    detail = shown(error.get("message"), 200)
    code, kind = str(error.get("code") or ""), str(error.get("type") or "")
    if _moderated(code):
        return TaskStatus(TaskState.FAILED, error_code="content_refused", error_message=_refused(
            detail, "image" if stage == "image" else "prompt"))
    if kind == "invalid_input":
        return TaskStatus(TaskState.FAILED, error_code="provider_rejected", error_message=(
            f"The 3D generation service could not use this request: {detail}" if detail
            else "The 3D generation service could not use this request."))
    return TaskStatus(TaskState.FAILED, error_code="provider_failed", retryable=True, error_message=(
        f"The 3D generation service could not make this model: {detail}" if detail
        else "The 3D generation service could not make this model."))


def _moderated(code: str) -> bool:
    return code.startswith("moderation")


def _refused(detail: str, what: str) -> str:
    """The message of a moderation refusal: Meshy's reason, and what the user can do."""
    change = ("use another image" if what == "image" else
              "rephrase the prompt" if what == "prompt" else "rephrase the prompt or use another image")
    reason = f" {detail}" if detail else ""
    return (f"The 3D generation service refused this {what} under its content policy.{reason} "
            f"Please {change} and try again.")


def _lost(message: str) -> TaskStatus:
    """A task that cannot give this job its model: a fresh attempt starts a new one."""
    return TaskStatus(TaskState.FAILED, error_code="provider_task_lost", retryable=True,
                      error_message=message)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _split(task_id: str) -> tuple[str, str]:
    stage, _, remote = task_id.partition(":")
    if stage not in _SPANS or not remote:
        raise PermanentError("The saved 3D task id is not one this service made.",
                             code="provider_task_lost")
    return stage, remote

