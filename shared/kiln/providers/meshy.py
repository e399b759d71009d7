"""Meshy-style text-to-3D and image-to-3D, as a :class:`~kiln.providers.base.TaskProvider`.

One Kiln task may be two remote tasks, so Kiln's task id names the stage it is in:

- ``preview:<id>`` — text-to-3D preview (the untextured mesh); when it succeeds, ``poll``
  submits the refine (texturing) and answers with ``task_id="refine:<new id>"``, which
  the worker checkpoints before anything else happens;
- ``refine:<id>`` — the refine; its GLB is the result;
- ``mesh:<id>`` — a preview that is the result (``options.texture`` is false);
- ``image:<id>`` — image-to-3D (``options.imageUrl``), one remote task.

Progress: preview 0–45, refine 45–90 (a preview-only or image task 0–90); the worker
reports 90 ``downloading`` and 95 ``uploading`` after that. Stages: ``queued``,
``modeling``, ``texturing``.

Calls: ``POST /openapi/v2/text-to-3d`` (``mode: preview | refine``) and
``POST /openapi/v1/image-to-3d`` answer ``{result: id}``; ``GET`` on ``.../{id}`` gives
``status`` (PENDING, IN_PROGRESS, SUCCEEDED, FAILED, CANCELED), ``progress``,
``art_style``, ``model_urls.glb``, ``thumbnail_url``, ``task_error``; ``DELETE .../{id}``
cancels.

What Meshy takes: a prompt of at most :data:`PROMPT_MAX` characters (a longer one fails
the job before any call, ``prompt_too_long``); ``art_style`` only from :data:`ART_STYLES`
(``options.style`` is sent when it is one of them, else left out and provenance says
``styleIgnored``); a sculpture's refine with ``enable_pbr: false``.

Errors map as in :mod:`kiln.providers.http`, but read Meshy's own ``code`` and ``type``
first: a moderation code, or a 403 of type ``invalid_input``, is ``content_refused``. A
task that ends FAILED is retried with a new task (Meshy refunds a failed task, and most
failures are passing) unless its ``task_error`` is moderation (``content_refused``) or of
type ``invalid_input`` (``provider_rejected``).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from kiln import log
from kiln.core.errors import KilnError, PermanentError
from kiln.core.job import PROVIDER_PROMPT_MAX
from kiln.core.policy import PollCadence
from kiln.providers.base import CONTENT_TYPES, Artifact, GenerationRequest, TaskState, TaskStatus
from kiln.providers.fetch import (
    FetchPolicy,
    Resolver,
    check_user_url,
    fetch_small,
    open_stream,
    system_resolve,
)
from kiln.providers.http import ErrorBody, JsonApi, as_png, short
from kiln.settings import Settings

logger = log.get("providers.meshy")

LABEL = "3D generation service"
RESULT_HOSTS = ("assets.meshy.ai", "*.meshy.ai")
THUMBNAIL_MAX_BYTES = 5 * 1024 * 1024
#: The art styles Meshy's text-to-3D preview takes, and its longest prompt (characters).
ART_STYLES = ("realistic", "sculpture")
PROMPT_MAX = PROVIDER_PROMPT_MAX["meshy"]  # (also refused at submit: Settings.prompt_max)
_PATHS = {"preview": "/openapi/v2/text-to-3d", "refine": "/openapi/v2/text-to-3d",
          "mesh": "/openapi/v2/text-to-3d", "image": "/openapi/v1/image-to-3d"}
#: stage → (first percent, span, stage name while running)
_SPANS = {"preview": (0, 45, "modeling"), "refine": (45, 45, "texturing"),
          "mesh": (0, 90, "modeling"), "image": (0, 90, "modeling")}
_STATES = {"PENDING": TaskState.PENDING, "IN_PROGRESS": TaskState.RUNNING,
           "SUCCEEDED": TaskState.SUCCEEDED, "FAILED": TaskState.FAILED,
           "CANCELED": TaskState.CANCELED, "EXPIRED": TaskState.FAILED}


class MeshyProvider:
    """Text-to-3D (preview → refine) and image-to-3D against a Meshy-compatible API."""

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
        image_url = options.get("imageUrl")
        if image_url:
            check_user_url(str(image_url), self.settings, self._resolve)
            body: dict[str, Any] = {"image_url": image_url, "enable_pbr": True,
                                    "should_texture": options.get("texture", True) is not False}
            return f"image:{self._created(self._api.call('POST', _PATHS['image'], json=body))}"
        if len(request.prompt) > PROMPT_MAX:
            raise PermanentError(
                f"The {LABEL} takes prompts of up to {PROMPT_MAX} characters; this one "
                f"has {len(request.prompt)}. Shorten it and try again.", code="prompt_too_long")
        body = {"mode": "preview", "prompt": request.prompt}
        style = _art_style(options.get("style"))
        if style:
            body["art_style"] = style
        elif options.get("style"):
            log.event(logger, "style not sent: Meshy takes only " + " or ".join(ART_STYLES))
        if isinstance(options.get("seed"), int):
            body["seed"] = options["seed"]
        stage = "mesh" if options.get("texture") is False else "preview"
        return f"{stage}:{self._created(self._api.call('POST', _PATHS['preview'], json=body))}"

    def poll(self, task_id: str) -> TaskStatus:
        stage, remote = _split(task_id)
        try:
            task = self._get(stage, remote)
        except PermanentError as exc:
            if exc.code != "provider_not_found":
                raise
            # The task is gone (expired or deleted): a fresh attempt starts a new one.
            return TaskStatus(TaskState.FAILED, error_code="provider_task_lost", retryable=True,
                              error_message="The 3D generation service lost the task; retrying.")
        state = _STATES.get(str(task.get("status")), TaskState.RUNNING)
        start, span, running = _SPANS[stage]
        progress = start + span * _percent(task.get("progress")) // 100
        if state is TaskState.SUCCEEDED and stage == "preview":
            # Meshy makes a sculpture's own PBR maps and refuses enable_pbr with it.
            refine = self._api.call("POST", _PATHS["refine"], json={
                "mode": "refine", "preview_task_id": remote,
                "enable_pbr": task.get("art_style") != "sculpture"})
            log.event(logger, "meshy preview done; refine submitted")
            return TaskStatus(TaskState.RUNNING, progress=start + span, stage="texturing",
                              task_id=f"refine:{self._created(refine)}")
        if state is TaskState.SUCCEEDED:
            return TaskStatus(state, progress=start + span, stage="downloading")
        if state is TaskState.FAILED:
            return _failed(stage, task.get("task_error"))
        if state is TaskState.PENDING:
            return TaskStatus(state, progress=start, stage="queued")
        return TaskStatus(state, progress=progress, stage=running)

    def fetch(self, task_id: str, request: GenerationRequest) -> Artifact:
        stage, remote = _split(task_id)
        task = self._get(stage, remote)
        urls = task.get("model_urls") or {}
        glb = urls.get("glb") if isinstance(urls, dict) else None
        if not glb:
            raise PermanentError("The 3D generation service finished without a GLB file.",
                                 code="invalid_artifact")
        download = open_stream(str(glb), self._policy, resolve=self._resolve)
        provenance: dict[str, Any] = {
            "provider": self.name, "model": str(task.get("ai_model") or task.get("model") or "meshy"),
            "taskId": remote, "mode": "image-to-3d" if stage == "image" else "text-to-3d",
        }
        if stage == "refine" and task.get("preview_task_id"):
            provenance["previewTaskId"] = str(task["preview_task_id"])
        style = _art_style(request.options.get("style")) if stage != "image" else ""
        if style:
            provenance["artStyle"] = style
        elif request.options.get("style"):
            provenance["styleIgnored"] = True
        for key in ("credits", "consumed_credits", "cost"):
            if isinstance(task.get(key), int | float):
                provenance["credits" if "credit" in key else "cost"] = task[key]
        return Artifact(kind="model", content_type=CONTENT_TYPES["model"], chunks=download.chunks,
                        size=download.size, thumbnail=self._thumbnail(task.get("thumbnail_url")),
                        provenance=provenance)

    def cancel(self, task_id: str) -> None:
        stage, remote = _split(task_id)
        self._api.call("DELETE", f"{_PATHS[stage]}/{urllib.parse.quote(remote, safe='')}")

    def _get(self, stage: str, remote: str) -> dict[str, Any]:
        task = self._api.call("GET", f"{_PATHS[stage]}/{urllib.parse.quote(remote, safe='')}")
        if not isinstance(task, dict):
            raise PermanentError("The 3D generation service sent an unreadable task.",
                                 code="provider_rejected")
        return task

    def _thumbnail(self, url: Any) -> bytes | None:
        """The provider's preview picture as PNG, when it has one (best effort)."""
        if not url:
            return None
        try:
            return as_png(fetch_small(str(url), self._policy, THUMBNAIL_MAX_BYTES,
                                      resolve=self._resolve), "thumbnail")
        except KilnError as exc:
            log.event(logger, "thumbnail skipped", logging.WARNING, code=exc.code)
            return None

    @staticmethod
    def _created(answer: Any) -> str:
        task_id = answer.get("result") if isinstance(answer, dict) else None
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


def _failed(stage: str, error: Any) -> TaskStatus:
    """A FAILED task: retried with a new task, unless Meshy says its input is at fault, or
    it is a refine (a new attempt starts from a new, paid preview)."""
    error = error if isinstance(error, dict) else {}
    detail = short(error.get("message"), 200)
    code, kind = str(error.get("code") or ""), str(error.get("type") or "")
    if _moderated(code):
        return TaskStatus(TaskState.FAILED, error_code="content_refused", error_message=_refused(
            detail, "image" if stage == "image" else "prompt"))
    if kind == "invalid_input":
        return TaskStatus(TaskState.FAILED, error_code="provider_rejected", error_message=(
            f"The 3D generation service could not use this request: {detail}" if detail
            else "The 3D generation service could not use this request."))
    if stage == "refine":  # a new attempt would buy a new preview (refunds cover the refine)
        return TaskStatus(TaskState.FAILED, error_code="provider_failed", error_message=(
            "The 3D generation service could not finish this model's textures"
            f"{': ' + detail if detail else '.'} Please try again."))
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


def _art_style(style: Any) -> str:
    """``options.style`` as an art style Meshy takes, or ``""``."""
    wanted = str(style or "").strip().lower()
    return wanted if wanted in ART_STYLES else ""


def _split(task_id: str) -> tuple[str, str]:
    stage, _, remote = task_id.partition(":")
    if stage not in _SPANS or not remote:
        raise PermanentError("The saved 3D task id is not one this service made.",
                             code="provider_task_lost")
    return stage, remote


def _percent(value: Any) -> int:
    return max(0, min(100, int(value))) if isinstance(value, int | float) else 0
