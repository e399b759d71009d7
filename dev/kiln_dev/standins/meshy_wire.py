"""The Meshy stand-in's wire format: its paths, what a create call must hold, its errors.

As Meshy's API docs describe it (docs.meshy.ai: Text to 3D, Image to 3D, v2 Errors,
Rate limits), checked here so a Kiln request the real service would refuse is refused:

- text-to-3D lives under ``/openapi/v2/text-to-3d``, image-to-3D under
  ``/openapi/v1/image-to-3d``; a task is found only under its own path;
- a create call answers ``202 {"result": id}``;
- a preview's ``prompt`` is at most 600 characters; ``art_style`` is ``realistic`` or
  ``sculpture``; a sculpture's refine needs ``enable_pbr: false``;
- every error is ``{"type", "code", "message", "doc_url"}``. ``moderation_blocked_nsfw``
  (403, type ``invalid_input``), ``rate_limit_exceeded`` (429, the only one with
  ``Retry-After``) and ``pending_task_limit_reached`` (429) are Meshy's own codes; the
  others here (``http_401``, ``invalid_parameter``, …) stand in for codes its docs do
  not list, with a type for their status.
"""

from __future__ import annotations

from typing import Any

TEXT_PATH = "/openapi/v2/text-to-3d"
IMAGE_PATH = "/openapi/v1/image-to-3d"
#: path → the stand-in's protocol name of the tasks created there
PROTOCOLS = {TEXT_PATH: "meshy", IMAGE_PATH: "meshy-image"}
ART_STYLES = ("realistic", "sculpture")
PROMPT_MAX = 600
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
    status = int(token)
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_input")
    return status, error(kind, f"http_{status}", f"Forced failure {status}."), {}


def task_error(token: str) -> dict[str, Any]:
    """A failed task's ``task_error`` for its ``[fail:…]`` token: ``refused`` is moderation,
    ``input`` an input Meshy cannot use; ``task`` a pipeline failure, described only by a
    message (as Meshy's v1 task object does), which a new task may not repeat."""
    if token == "refused":
        return MODERATION
    if token == "input":
        return error("invalid_input", "invalid_image", "The input image could not be processed.")
    return {"message": "The model could not be generated; please try again."}


def check_create(path: str, body: dict[str, Any]) -> Failure | None:
    """A create body (not a refine) refused as Meshy would (None: acceptable)."""
    if path == IMAGE_PATH:
        return None if body.get("image_url") else invalid("image_url is required.")
    prompt = body.get("prompt")
    if body.get("mode") != "preview" or not isinstance(prompt, str) or not prompt:
        return invalid("mode must be preview or refine; prompt is required.")
    if len(prompt) > PROMPT_MAX:
        return invalid(f"prompt must be at most {PROMPT_MAX} characters.")
    if "art_style" in body and body["art_style"] not in ART_STYLES:
        return invalid(f"art_style must be one of {', '.join(ART_STYLES)}.")
    return None


def check_refine(body: dict[str, Any], preview_style: str) -> Failure | None:
    """A refine's create body refused as Meshy would, given its preview's art style."""
    if preview_style == "sculpture" and body.get("enable_pbr", False) is not False:
        return 400, error("invalid_input", "parameters_conflict",
                          "enable_pbr must be false for the sculpture art style."), {}
    return None


def not_found() -> Failure:
    """No task of this kind has that id (a text task asked for under the image path too)."""
    return 404, error("not_found", "http_404", "Task not found."), {}


def invalid(message: str) -> Failure:
    return 400, error("invalid_input", "invalid_parameter", message), {}
