"""The Meshy stand-in's wire format: Meshy API v2, as it is once v1 stops (March 15, 2027).

Its paths, what a create call must hold, its task object's fixed parts and its errors,
checked here so that a Kiln request the real service would refuse is refused. From
docs.meshy.ai: "Migrate to API v2" (/en/api/migrate-to-v2 and its Reference), v2
"Text to 3D" (/api/v2/text-to-3d), "Image to 3D" (/api/v2/image-to-3d), "Tasks"
(/en/api/v2/tasks), "Errors" (/api/v2/errors), "Rate limits" (/en/api/v2/rate-limits)
and "Deprecations" (/en/api/deprecations):

- everything is under ``/openapi/v2/``. ``POST /openapi/v2/text-to-3d`` makes a model in
  one call (requests with ``mode`` preview/refine stop working on March 15, 2027);
  ``POST /openapi/v2/image-to-3d``; every task, whatever made it, is read with
  ``GET /openapi/v2/tasks/{id}`` and deleted with ``DELETE /openapi/v2/tasks/{id}``
  ("Routes such as GET /openapi/v2/image-to-3d/{id} don't exist"), and v1 is gone: any
  other route answers 404 ``route_not_found``;
- a create call returns the task object (:data:`TASKS_PATH`'s answer): results in
  ``output`` (``output.model_urls.glb``), the request echoed in ``input``; ``status``,
  ``progress``, ``consumed_credits``, ``task_error`` at the top; epoch milliseconds;
- v2 answers 400 for a parameter the endpoint does not define (so ``mode``,
  ``art_style``, ``preview_task_id``, image-to-3D's ``model_type``); sending both
  ``texture_prompt`` and ``texture_image_url`` is 400 ``parameters_conflict``; a textured
  request (``should_texture`` defaults to true) needs ``texture_model``; image-to-3D needs
  ``image_url`` unless it names an ``input_task_id``; a prompt is at most 600 characters
  (the limit Meshy's text-to-3D docs give);
- ``ai_model`` is one of the active generation models (meshy-7.1, meshy-6, meshy-6-lite,
  ``latest``): meshy-7 retires for 3D generation on Dec 31, 2026 (it stays a texture
  model), meshy-5 and meshy-4 are retired, and "requests that use a retired model ...
  return an error";
- every error is the flat ``{"type", "code", "message", "doc_url"}``, and a failed task's
  ``task_error`` is the same object. ``parameters_conflict``, ``route_not_found``,
  ``moderation_blocked_nsfw`` (403, type ``invalid_input``), ``rate_limit_exceeded``
  (429, the only one with ``Retry-After``) and ``pending_task_limit_reached`` (429) are
  Meshy's own codes.

The stand-in's own choices, where Meshy's docs are silent: a create answers 202 (v1's
status; v2's is not given); the codes ``unknown_parameter``, ``missing_parameter``,
``invalid_parameter``, ``task_in_progress``, ``not_found`` (an unknown task id),
``generation_failed``, ``invalid_image``, ``invalid_json`` and ``http_NNN`` (a status
with no documented code), with a type for their status; and DELETE's semantics, taken
from the description of Meshy's MCP tool ``meshy_cancel_task`` rather than the API docs:
a PENDING task is deleted, an IN_PROGRESS one is refused (400 ``task_in_progress``, it
keeps running), an ended one is deleted with its files; a deletion answers 200 ``{}``.
``input_task_id`` is taken as given (not looked up). The parameters each create takes
(:data:`ALLOWED_KEYS`) are v2's where its pages name them (``should_texture``,
``texture_model``, ``texture_prompt``, ``texture_image_url``, ``ai_model``, ``image_url``,
``target_formats``) and otherwise those of Meshy's v1 docs (``enable_pbr``, ``seed``,
``should_remesh``, ``topology``, …), which v2's full list may not keep.
"""

from __future__ import annotations

from typing import Any

#: every Meshy route is under it (v1's too, which answer ``route_not_found``)
ROOT = "/openapi/"
TEXT_PATH = "/openapi/v2/text-to-3d"
IMAGE_PATH = "/openapi/v2/image-to-3d"
TASKS_PATH = "/openapi/v2/tasks"
#: create path → the ``type`` of the tasks it makes
TASK_TYPES = {TEXT_PATH: "text-to-3d", IMAGE_PATH: "image-to-3d"}
_TEXTURE_KEYS = frozenset({"ai_model", "should_texture", "texture_model", "texture_prompt",
                           "texture_image_url", "enable_pbr", "should_remesh", "topology",
                           "target_polycount", "symmetry_mode", "moderation", "target_formats"})
#: create path → the body keys it defines (any other is a 400)
ALLOWED_KEYS = {TEXT_PATH: _TEXTURE_KEYS | {"prompt", "seed"},
                IMAGE_PATH: _TEXTURE_KEYS | {"image_url", "input_task_id"}}
ACTIVE_MODELS = ("meshy-7.1", "meshy-6", "meshy-6-lite", "latest")
#: generation models that answer an error, and since when (Deprecations)
RETIRED_MODELS = {"meshy-7": "2026-12-31", "meshy-5": "2026-10-10", "meshy-4": "2026-03-20"}
PROMPT_MAX = 600
#: a SUCCEEDED task's ``consumed_credits`` by type (the docs' image example: 30)
CREDITS = {"text-to-3d": 20, "image-to-3d": 30}
#: a result's lifetime after the task ends (the docs' example: ``expires_at`` 3 days on)
EXPIRES_MS = 3 * 24 * 3600 * 1000
#: What an error's status means, as its ``type`` (status → type).
_TYPES = {400: "invalid_input", 401: "unauthorized", 402: "payment_required",
          403: "forbidden", 404: "not_found", 429: "rate_limited"}

Failure = tuple[int, dict[str, Any], dict[str, str]]  # status, body, headers


def error(type_: str, code: str, message: str, doc_url: str | None = None) -> dict[str, Any]:
    """A Meshy v2 error object (a request's answer, or a failed task's ``task_error``)."""
    return {"type": type_, "code": code, "message": message, "doc_url": doc_url}


MODERATION = error(
    "invalid_input", "moderation_blocked_nsfw",
    "This content can't be generated because it may not comply with our Acceptable Use "
    "Policy regarding NSFW.", "https://docs.meshy.ai/en/api/v2/errors#moderation-blocked")


def status_error(status: int, message: str) -> Failure:
    """An error Meshy's docs give no code for: ``http_NNN``, typed by its status."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_input")
    return status, error(kind, f"http_{status}", message), {}


def forced(token: str) -> Failure | None:
    """The answer a ``[fail:TOKEN]`` asks of a create call (None: not a create failure)."""
    if token == "moderation":
        return 403, MODERATION, {}
    if token == "429":
        return 429, error("rate_limited", "rate_limit_exceeded",
                          "Too many requests; slow down."), {"Retry-After": "7"}
    if token == "pending-limit":
        return 429, error("rate_limited", "pending_task_limit_reached",
                          "You have reached the limit of tasks running at once.",
                          "https://docs.meshy.ai/en/api/v2/rate-limits"), {}
    if not token.isdigit():
        return None
    return status_error(int(token), f"Forced failure {token}.")


def task_error(token: str) -> dict[str, Any]:
    """A failed task's ``task_error`` for its ``[fail:…]`` token: ``refused`` is moderation,
    ``input`` an input Meshy cannot use; ``task`` a pipeline failure (``server_error``),
    which a new task may not repeat."""
    if token == "refused":
        return MODERATION
    if token == "input":
        return error("invalid_input", "invalid_image", "The input image could not be processed.")
    return error("server_error", "generation_failed",
                 "The model could not be generated; please try again.")


def check_create(path: str, body: dict[str, Any]) -> Failure | None:
    """A create body refused as Meshy v2 would (None: acceptable). ``path`` is
    :data:`TEXT_PATH` or :data:`IMAGE_PATH`."""
    for key in body:
        if key not in ALLOWED_KEYS[path]:
            return 400, error("invalid_input", "unknown_parameter",
                              f"{key} is not a parameter of this endpoint."), {}
    refused = _check_text(body) if path == TEXT_PATH else _check_image(body)
    return refused or _check_texture(body) or _check_model(body)


def _check_text(body: dict[str, Any]) -> Failure | None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return invalid("prompt is required.")
    if len(prompt) > PROMPT_MAX:
        return invalid(f"prompt must be at most {PROMPT_MAX} characters.")
    return None


def _check_image(body: dict[str, Any]) -> Failure | None:
    if _text(body.get("image_url")) or _text(body.get("input_task_id")):
        return None
    return invalid("image_url is required unless input_task_id is given.")


def _check_texture(body: dict[str, Any]) -> Failure | None:
    if "texture_prompt" in body and "texture_image_url" in body:
        return 400, error("invalid_input", "parameters_conflict",
                          "texture_prompt and texture_image_url are mutually exclusive"), {}
    textured = body.get("should_texture", True)
    if not isinstance(textured, bool):
        return invalid("should_texture must be a boolean.")
    if textured and not _text(body.get("texture_model")):
        return 400, error("invalid_input", "missing_parameter",
                          "texture_model is required when should_texture is true."), {}
    return None


def _check_model(body: dict[str, Any]) -> Failure | None:
    if "ai_model" not in body or body["ai_model"] in ACTIVE_MODELS:
        return None
    model = body["ai_model"]
    retired = RETIRED_MODELS.get(model) if isinstance(model, str) else None
    why = f" was retired for 3D generation on {retired}" if retired else " is not a model"
    return invalid(f"ai_model {model}{why}; use one of {', '.join(ACTIVE_MODELS)}.")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def token_source(path: str, body: dict[str, Any]) -> str:
    """The text a create body's stand-in tokens (``[fail:…]``, ``[slow:…]``) are read
    from: the prompt, or the image URL (or the input task's id)."""
    if path == TEXT_PATH:
        return str(body["prompt"])
    return str(body.get("image_url") or body.get("input_task_id"))


def task_path(path: str) -> str | None:
    """The task id a ``/openapi/v2/tasks/{id}`` path names (None: another route)."""
    base, _, task_id = path.rpartition("/")
    return task_id if base == TASKS_PATH and task_id else None


def not_found() -> Failure:
    """No task has that id (or it was deleted)."""
    return 404, error("not_found", "not_found", "Task not found."), {}


def route_not_found() -> Failure:
    """No such route in v2 (every v1 route, and v2 routes that do not exist)."""
    return 404, error("not_found", "route_not_found",
                      "NoMatchingRoute: Please double check the path and method"), {}


def task_in_progress() -> Failure:
    """A DELETE of a task that is running: refused, and the task keeps running."""
    return 400, error("invalid_input", "task_in_progress",
                      "A task that is in progress cannot be deleted."), {}


def invalid_json() -> Failure:
    return 400, error("invalid_input", "invalid_json", "The body must be a JSON object."), {}


def invalid(message: str) -> Failure:
    return 400, error("invalid_input", "invalid_parameter", message), {}
