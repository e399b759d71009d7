"""The generic async task server protocol (``docs/taskserver-protocol.md``) as a TaskProvider.

``POST /v1/tasks`` ``{kind, prompt, options}`` (with ``Idempotency-Key: <jobId>``) →
``202 {task_id}``; ``GET /v1/tasks/{id}`` → ``{status, progress, stage, error, result}``;
``POST /v1/tasks/{id}:cancel``; with ``KILN_PUBLIC_URL`` and
``KILN_TASKSERVER_WEBHOOK_SECRET`` set, the create body carries ``callback_url`` (the
server posts signed events there, ``kiln.providers.callbacks``); the result is
downloaded from ``result.url`` through :mod:`kiln.providers.fetch` (the server's own host,
plus ``KILN_ALLOWED_FETCH_HOSTS``), its declared ``bytes`` and ``sha256`` checked while it
streams.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from kiln.core.errors import ConfigError, PermanentError, RetryableError
from kiln.core.policy import PollCadence
from kiln.providers.base import CONTENT_TYPES, Artifact, GenerationRequest, TaskState, TaskStatus
from kiln.providers.callbacks import callback_url
from kiln.providers.fetch import FetchPolicy, Resolver, check_user_url, open_stream, system_resolve
from kiln.providers.http import SAFE_CODE, JsonApi, percent, short
from kiln.settings import Settings

LABEL = "generation service"
_STATES = {"queued": TaskState.PENDING, "running": TaskState.RUNNING,
           "succeeded": TaskState.SUCCEEDED, "failed": TaskState.FAILED,
           "canceled": TaskState.CANCELED}


class TaskServerProvider:
    """Any server that speaks Kiln's async task protocol, for images and models."""

    name = "taskserver"

    def __init__(self, settings: Settings, *, cadence: PollCadence | None = None,
                 timeout: float = 30.0,
                 client: httpx.Client | None = None, resolve: Resolver = system_resolve,
                 fetch_read_timeout: float = 60.0) -> None:
        if not settings.taskserver_url:
            raise ConfigError("KILN_TASKSERVER_URL must be set to use the taskserver provider")
        self.settings = settings
        self.cadence = cadence or settings.poll_cadence(PollCadence(first=2.0, max=30.0))
        self._api = JsonApi(settings.taskserver_url, settings.taskserver_api_key, LABEL,
                            timeout=timeout, client=client)
        host = urllib.parse.urlsplit(settings.taskserver_url).hostname or ""
        self._policy = FetchPolicy.for_provider(settings, (host,), read_timeout=fetch_read_timeout)
        self._resolve = resolve
        # Callbacks are asked for only where they can be verified (a secret is set).
        self._callback_url = (callback_url(settings, self.name)
                              if settings.taskserver_webhook_secret else "")

    def submit(self, request: GenerationRequest) -> str:
        options = dict(request.options)
        if options.get("imageUrl"):
            check_user_url(str(options["imageUrl"]), self.settings, self._resolve)
        body: dict[str, Any] = {"kind": request.kind, "prompt": request.prompt,
                                "options": options}
        if self._callback_url:
            body["callback_url"] = self._callback_url
        answer = self._api.call("POST", "/v1/tasks", json=body,
                                headers={"Idempotency-Key": request.job_id})
        task_id = answer.get("task_id") if isinstance(answer, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise PermanentError("The generation service did not start a task.",
                                 code="provider_rejected")
        return task_id

    def poll(self, task_id: str) -> TaskStatus:
        try:
            task = self._get(task_id)
        except PermanentError as exc:
            if exc.code != "provider_not_found":
                raise
            return TaskStatus(TaskState.FAILED, error_code="provider_task_lost", retryable=True,
                              error_message="The generation service lost the task; retrying.")
        state = _STATES.get(str(task.get("status")))
        if state is None:  # a blip (an error object, a status of its own): asked again
            raise RetryableError("The generation service sent an unknown task status.",
                                 code="provider_unavailable")
        progress = percent(task.get("progress")) * 90 // 100
        stage = self._api.shown(task.get("stage"), 40)
        if state is TaskState.FAILED:
            raw = task.get("error")
            error: dict[str, Any] = raw if isinstance(raw, dict) else {}
            code = str(error.get("code") or "")
            return TaskStatus(
                state, progress=progress,
                error_code=code if SAFE_CODE.match(code) else "provider_failed",
                error_message=self._api.shown(error.get("message"), 300) or
                "The generation service could not make this.",
                retryable=error.get("retryable") is True)
        if state is TaskState.SUCCEEDED:
            return TaskStatus(state, progress=90, stage="downloading")
        return TaskStatus(state, progress=progress,
                          stage=stage or ("queued" if state is TaskState.PENDING else "generating"))

    def fetch(self, task_id: str, request: GenerationRequest) -> Artifact:
        task = self._get(task_id)
        result = task.get("result")
        if not isinstance(result, dict) or not result.get("url"):
            raise PermanentError("The generation service finished without a result.",
                                 code="invalid_artifact")
        expected = CONTENT_TYPES[request.kind]
        declared = str(result.get("content_type") or expected).split(";", 1)[0].strip().lower()
        if declared != expected:
            raise PermanentError(f"The generation service returned {short(declared, 60)!r}, "
                                 f"not {expected}.", code="invalid_artifact")
        size = result.get("bytes")
        size = size if isinstance(size, int) and size >= 0 else None
        if size is not None and size > self._policy.max_bytes:
            raise PermanentError("The result is larger than this service accepts.",
                                 code="artifact_too_large")
        url = urllib.parse.urljoin(f"{self._api.base_url}/", str(result["url"]))
        download = open_stream(url, self._policy, resolve=self._resolve)
        sha256 = result.get("sha256")
        chunks = _checked(download.chunks, size, sha256 if isinstance(sha256, str) else None)
        provenance: dict[str, Any] = {"provider": self.name, "taskId": task_id,
                                      "model": str(task.get("model") or result.get("model") or "")}
        usage = task.get("usage")
        if isinstance(usage, dict):
            for key in ("credits", "cost_usd"):
                if isinstance(usage.get(key), int | float):
                    provenance["credits" if key == "credits" else "costUsd"] = usage[key]
        return Artifact(kind=request.kind, content_type=expected, chunks=chunks,
                        size=size if size is not None else download.size,
                        provenance={k: v for k, v in provenance.items() if v != ""})

    def cancel(self, task_id: str) -> None:
        self._api.call("POST", f"/v1/tasks/{urllib.parse.quote(task_id, safe='')}:cancel")

    def _get(self, task_id: str) -> dict[str, Any]:
        task = self._api.call("GET", f"/v1/tasks/{urllib.parse.quote(task_id, safe='')}")
        if not isinstance(task, dict):  # (empty, null, a list): a blip, asked again
            raise RetryableError("The generation service sent an unreadable task.",
                                 code="provider_unavailable")
        return task


def _checked(chunks: Iterable[bytes], size: int | None, sha256: str | None) -> Iterator[bytes]:
    """Pass chunks on; fail as soon as they pass the declared size (a result that says it
    is small is never held whole), and at the end unless the size and checksum hold. A
    result that ends short was cut off on the way (a connection closed early): fetching
    it again may succeed.

    The failure is raised while the upload is still open, so nothing is stored.
    """
    digest, total = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        total += len(chunk)
        if size is not None and total > size:
            raise PermanentError(f"The result is larger than the {size} bytes the service "
                                 "declared.", code="invalid_artifact")
        yield chunk
    if size is not None and total < size:
        raise RetryableError(f"The result ended after {total} of the {size} bytes the service "
                             "declared.", code="fetch_incomplete")
    if sha256 and digest.hexdigest() != sha256.lower():
        raise PermanentError("The result does not match its declared checksum.",
                             code="invalid_artifact")
