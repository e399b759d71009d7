"""A stand-in for the AI providers on 127.0.0.1: Meshy API v2, async-task and Gemini REST.

One server, three protocols, as the real clients speak them:

- Meshy API v2 only, as it is once v1 and ``mode`` preview/refine stop on March 15, 2027
  (docs.meshy.ai: "Migrate to API v2", v2 "Text to 3D", "Image to 3D", "Tasks", "Errors",
  "Rate limits", "Deprecations"), Bearer key: ``POST /openapi/v2/text-to-3d`` (one call)
  and ``/openapi/v2/image-to-3d`` answer 202 with the task object; ``GET
  /openapi/v2/tasks/{id}`` reads either type: ``id``, ``type``, ``status`` (PENDING →
  IN_PROGRESS → SUCCEEDED | FAILED), ``progress``, ``*_at`` in epoch ms,
  ``preceding_tasks``, ``consumed_credits``, ``task_error``, ``input`` (the create body),
  ``output`` (``model_urls.glb``, ``thumbnail_url``, ``texture_urls``); ``DELETE`` there
  deletes a PENDING or ended task, refuses a running one (400 ``task_in_progress``); any
  other ``/openapi/`` route (all of v1) is 404 ``route_not_found``. Paths, checks, errors,
  and what is the stand-in's own choice where the docs are silent: ``meshy_wire``;
- Kiln's async task protocol (``docs/taskserver-protocol.md``): ``POST /v1/tasks``,
  ``GET /v1/tasks/{id}``, ``POST /v1/tasks/{id}:cancel`` (Bearer key);
- Gemini: ``POST /{v1beta|v1}/models/{model}:generateContent`` (``x-goog-api-key``).

Results are served from ``/files/{task}.glb|.png``; a GLB of any size (up to many GB)
is generated while it streams — header, a JSON chunk declaring one buffer, the BIN
chunk in 1 MiB pieces — so the server's memory stays flat too.

Prompt tokens steer it (case-insensitive; for a Meshy image task, in its ``image_url``):

- ``[fail:400|401|402|403|429|500|503]`` — the create call (or Gemini call) answers so;
  429 carries ``Retry-After: 7`` (Gemini: a per-minute ``QuotaFailure`` and a ``RetryInfo``
  of 7 s too); Gemini also ``[fail:quota-day]``, ``[fail:quota-zero]`` and ``[fail:404]``
  as the real API answers them (``kiln_dev.standins.gemini_errors``);
- ``[fail:task]`` — the task runs, then ends ``FAILED`` / ``failed`` (Meshy: a
  ``server_error`` ``task_error``, ``generation_failed``);
- ``[fail:refused]`` — refused content (Gemini: ``promptFeedback.blockReason: SAFETY``;
  ``[fail:image-safety]``: ``finishReason: IMAGE_SAFETY``; task server: error
  ``content_refused``; Meshy: the task fails with a moderation ``task_error``);
- Meshy only: ``[fail:input]`` — the task fails with a ``task_error`` of type
  ``invalid_input``; ``[fail:moderation]`` — the create call answers 403
  ``moderation_blocked_nsfw``; ``[fail:pending-limit]`` — 429
  ``pending_task_limit_reached`` without ``Retry-After`` (its ``[fail:429]`` is
  ``rate_limit_exceeded``, the only one with it);
- ``[hang]`` — the create call never answers (until the server stops);
- ``[size:N]`` — the result GLB is N bytes (``k``/``m``/``g`` suffixes: ``[size:50m]``);
- ``[invalid]`` — the result is not a valid GLB; ``[chunked]`` — no ``Content-Length``;
- ``[redirect]`` — the result URL redirects once (to the real file);
  ``[redirect:ADDRESS]`` — it redirects to ``http://ADDRESS/latest/meta-data/``
  (e.g. ``169.254.169.254`` or ``10.0.0.1``), which a safe fetcher must refuse;
- ``[jpeg]`` — Gemini answers with a JPEG; ``[slow:S]`` — the task takes S seconds;
  ``[queued:Q]`` — it waits queued for its first Q of them.

A task is queued (PENDING) for its first tenth (or ``[queued:Q]`` seconds), then runs
(IN_PROGRESS) until its seconds (``task_seconds``, or ``[slow:S]``) are up; a Meshy text
task is one stage.

Meshy webhooks: given ``meshy_webhook_secret`` and a ``meshy_webhook_url`` (set the
attribute once the ingress's address is known, as an operator sets it in Meshy's
dashboard, payload version v2), every Meshy task's end is posted there as Meshy does
(the v2 task object; none for a task deleted first), the secret as ``?token=``
(``kiln_dev.standins.callbacks``, ``faults`` for chaos runs).

Control: ``GET /_kiln/requests`` (what was received), ``GET /_kiln/cancels`` (the task
ids canceled, or for Meshy deleted), ``PUT /_kiln/config`` ``{"task_seconds",
"gemini_seconds", "poll_delay"}``. As a :class:`~kiln_dev.stack.Companion`, ``env()``
points Kiln's providers here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from kiln_dev.background import BackgroundServer
from kiln_dev.standins import meshy_wire
from kiln_dev.standins.callbacks import CallbackFaults, CallbackSender
from kiln_dev.standins.gemini_errors import gemini_error

API_KEY = "kiln-local-provider-key"
PIECE = 1024 * 1024
_ZEROS = bytes(PIECE)
_TOKEN = re.compile(r"\[(fail|hang|size|invalid|chunked|redirect|jpeg|slow|queued)(?::([^\]]+))?\]", re.I)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TRIANGLE = struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0)


def _tokens(text: str) -> dict[str, str]:
    """The stand-in's tokens in ``text``: name → argument (lower case, "" when none)."""
    return {m.group(1).lower(): (m.group(2) or "").strip().lower() for m in _TOKEN.finditer(text)}


@dataclass
class _Task:
    id: str
    protocol: str  # "meshy", "task"
    kind: str
    prompt: str  # where its tokens are read (a Meshy image task: its image URL)
    meshy_type: str = ""  # Meshy's task type: "text-to-3d" | "image-to-3d"
    input: dict[str, Any] = field(default_factory=dict)  # the Meshy create body
    started: float = field(default_factory=time.monotonic)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    seconds: float = 1.0
    canceled: bool = False

    def tokens(self) -> dict[str, str]:
        return _tokens(self.prompt)

    def at_ms(self, share: float) -> int:
        """The epoch milliseconds at which ``share`` of its time has passed."""
        return self.created_ms + int(share * self.seconds * 1000)

    def state(self) -> tuple[str, int]:
        """("queued" | "running" | "succeeded" | "failed" | "canceled", percent)."""
        if self.canceled:
            return "canceled", 0
        gone = time.monotonic() - self.started
        share = gone / max(self.seconds, 1e-6)
        queued = self.tokens().get("queued")
        if (gone < float(queued)) if queued else share < 0.1:
            return "queued", 0
        if share < 1:
            return "running", int(share * 100)
        failed = self.tokens().get("fail") in ("task", "refused", "input")
        return ("failed" if failed else "succeeded"), 100


class ProviderServer(BackgroundServer):
    """Run with ``start()``; ``url`` is its base; ``env()`` configures Kiln to use it."""

    thread_name = "provider-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str = API_KEY,
                 task_seconds: float = 1.0, gemini_seconds: float = 0.2,
                 hang_seconds: float = 120.0, meshy_webhook_url: str = "",
                 meshy_webhook_secret: str = "", faults: CallbackFaults | None = None) -> None:
        self.api_key = api_key
        self.meshy_webhook_url = meshy_webhook_url
        self.meshy_webhooks = (CallbackSender(meshy_webhook_secret, faults or CallbackFaults(),
                                              scheme="token") if meshy_webhook_secret else None)
        self.task_seconds = task_seconds
        self.gemini_seconds = gemini_seconds
        self.poll_delay = 0.0
        self.hang_seconds = hang_seconds
        self.tasks: dict[str, _Task] = {}
        self.requests: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self._idempotent: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        httpd = ThreadingHTTPServer((host, port), _handler(self))
        httpd.daemon_threads = True
        super().__init__(httpd)

    def stop(self) -> None:
        self._stopping.set()
        if self.meshy_webhooks is not None:
            self.meshy_webhooks.close()
        super().stop()

    def env(self) -> dict[str, str]:
        return {
            "KILN_MESHY_BASE_URL": self.url, "KILN_MESHY_API_KEY": self.api_key,
            "KILN_TASKSERVER_URL": self.url, "KILN_TASKSERVER_API_KEY": self.api_key,
            "KILN_GEMINI_API_KEY": self.api_key, "GOOGLE_GEMINI_BASE_URL": self.url,
        }

    # --- tasks --------------------------------------------------------------------------

    def _new_task(self, protocol: str, kind: str, prompt: str, **kw: Any) -> _Task:
        task = _Task(id=str(uuid.uuid4()), protocol=protocol, kind=kind, prompt=prompt,
                     seconds=self.task_seconds, **kw)
        slow = task.tokens().get("slow")
        if slow:
            task.seconds = float(slow)
        with self._lock:
            self.tasks[task.id] = task
        if protocol == "meshy" and self.meshy_webhooks is not None and self.meshy_webhook_url:
            self.meshy_webhooks.schedule(task.id, self.meshy_webhook_url, task.seconds,
                                         end=lambda: self._meshy_delivery(task),
                                         progress=lambda _pct: self._meshy_delivery(task))
        return task

    def _meshy_delivery(self, task: _Task) -> dict[str, Any] | None:
        """A webhook's body: the task object, or None once the task was deleted."""
        return self.meshy_view(task) if self.meshy_task(task.id) is task else None

    def _cancel(self, task_id: str) -> bool:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return False
            task.canceled = True
            self.cancels.append(task_id)
            return True

    def meshy_task(self, task_id: str) -> _Task | None:
        """A Meshy task by id (None: unknown, deleted, or another protocol's)."""
        with self._lock:
            task = self.tasks.get(task_id)
        return task if task is not None and task.protocol == "meshy" else None

    def _meshy_delete(self, task_id: str) -> meshy_wire.Failure:
        """Meshy's DELETE: a task that is running is refused (it keeps running); any other
        is deleted, with its files, and its id recorded in ``cancels``."""
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task.protocol != "meshy":
                return meshy_wire.not_found()
            if task.state()[0] == "running":
                return meshy_wire.task_in_progress()
            del self.tasks[task_id]
            self.cancels.append(task_id)
        return 200, {}, {}

    def result_url(self, task: _Task) -> str:
        return f"{self.url}/files/{task.id}.{'png' if task.kind == 'image' else 'glb'}"

    def meshy_view(self, task: _Task) -> dict[str, Any]:
        """The v2 task object (``GET /openapi/v2/tasks/{id}``, a create's answer, a webhook)."""
        state, progress = task.state()
        status = {"queued": "PENDING", "running": "IN_PROGRESS", "succeeded": "SUCCEEDED",
                  "failed": "FAILED", "canceled": "CANCELED"}[state]
        ended = status in ("SUCCEEDED", "FAILED")
        done = status == "SUCCEEDED"
        return {
            "id": task.id, "type": task.meshy_type, "status": status, "progress": progress,
            "created_at": task.created_ms,
            "started_at": None if status == "PENDING" else task.at_ms(0.1),
            "finished_at": task.at_ms(1) if ended else None,
            "expires_at": task.at_ms(1) + meshy_wire.EXPIRES_MS if ended else None,
            "preceding_tasks": 1 if status == "PENDING" else 0,
            "consumed_credits": meshy_wire.CREDITS[task.meshy_type] if done else 0,
            "task_error": (meshy_wire.task_error(task.tokens().get("fail", ""))
                           if status == "FAILED" else None),
            "input": dict(task.input),
            # a GLB untextured too; its textures are inside it (no separate maps)
            "output": {"model_urls": {"glb": self.result_url(task)},
                       "thumbnail_url": f"{self.url}/files/{task.id}/thumb.png",
                       "texture_urls": None if task.input.get("should_texture") is False
                       else []} if done else None,
        }

    def task_view(self, task: _Task) -> dict[str, Any]:
        state, progress = task.state()
        view: dict[str, Any] = {"task_id": task.id, "status": state, "progress": progress,
                                "stage": {"queued": "queued", "running": "generating"}.get(state, ""),
                                "error": None, "result": None, "model": "local-model-v1"}
        if state == "failed":
            refused = task.tokens().get("fail") == "refused"
            view["error"] = {
                "code": "content_refused" if refused else "generation_failed",
                "message": "This prompt was refused." if refused else "The generation failed.",
                "retryable": False}
        if state == "succeeded":
            view["result"] = {"url": self.result_url(task), "bytes": served(task)[0],
                              "content_type": "image/png" if task.kind == "image"
                              else "model/gltf-binary"}
            if task.kind == "image":
                view["result"]["sha256"] = hashlib.sha256(_png(task.prompt)).hexdigest()
            view["usage"] = {"credits": 5, "cost_usd": 0.02}
        return view


def result_size(task: _Task) -> int:
    """The size the prompt asks for (``[size:N]``), 64 KiB by default."""
    raw = task.tokens().get("size", "")
    match = re.fullmatch(r"(\d+)([kmg]?)", raw)
    return int(match.group(1)) * _UNITS[match.group(2)] if match else 64 * 1024


def served(task: _Task) -> tuple[int, Any]:
    """(exact size, pieces) of the file served as the task's result."""
    if task.kind == "image":
        data = _png(task.prompt)
        return len(data), iter([data])
    size, pieces = glb_pieces(result_size(task))
    if "invalid" in task.tokens():
        size = size // 8 * 8
        return size, iter([b"NOTAGLB!" * (size // 8)])
    return size, pieces


def glb_layout(total: int) -> tuple[bytes, int]:
    """The header + JSON chunk + BIN chunk header of a GLB of about ``total`` bytes, and
    the BIN length that follows (the file is exactly ``len(head) + bin_length``)."""
    bin_length = max(36, total - 200)
    for _ in range(4):
        doc = {
            "asset": {"version": "2.0", "generator": "kiln provider_server"},
            "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
            "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                           "min": [0, 0, 0], "max": [1, 1, 0]}],
            "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}],
            "buffers": [{"byteLength": bin_length}],
        }
        text = json.dumps(doc, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 4)
        fixed = 12 + 8 + len(text) + 8
        want = max(36, total - fixed)
        want -= want % 4
        if want == bin_length:
            break
        bin_length = want
    head = (struct.pack("<4sII", b"glTF", 2, fixed + bin_length)
            + struct.pack("<II", len(text), 0x4E4F534A) + text
            + struct.pack("<II", bin_length, 0x004E4942))
    return head, bin_length


def glb_pieces(total: int) -> tuple[int, Any]:
    """(exact size, an iterator of pieces) for a valid GLB of about ``total`` bytes."""
    head, bin_length = glb_layout(total)

    def pieces() -> Any:
        yield head + _TRIANGLE
        left = bin_length - len(_TRIANGLE)
        view = memoryview(_ZEROS)
        while left > 0:
            step = min(PIECE, left)
            yield view[:step]
            left -= step

    return len(head) + bin_length, pieces()


def _png(prompt: str, fmt: str = "PNG") -> bytes:
    seed = hashlib.sha256(prompt.encode()).digest()
    image = Image.new("RGB", (64, 64), (seed[0], seed[1], seed[2]))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _handler(server: ProviderServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        # --- plumbing ---------------------------------------------------------------

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                return None

        def _record(self, body: Any = None) -> None:
            with server._lock:
                server.requests.append({"method": self.command, "path": self.path, "body": body})

        def _bearer_ok(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return True
            self._send(401, {"message": "Invalid API key"})
            return False

        def _forced(self, prompt: str, style: str) -> bool:
            """Answer a ``[fail:NNN]`` (Gemini, task server) or ``[hang]`` token; True when
            answered. Meshy's failures: ``meshy_wire.forced``."""
            tokens = {m.group(1).lower(): (m.group(2) or "").lower() for m in _TOKEN.finditer(prompt)}
            if "hang" in tokens:
                server._stopping.wait(server.hang_seconds)
                self.close_connection = True
                return True
            code = tokens.get("fail", "")
            if not code.isdigit():
                return False
            status = int(code)
            headers = {"Retry-After": "7"} if status == 429 else {}
            if style == "gemini":
                names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                         429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
                error = {"code": status, "message": f"Forced failure {status}.",
                         "status": names.get(status, "UNKNOWN")}  # 404, 429: gemini_errors
                self._send(status, {"error": error}, headers)
            else:
                self._send(status, {"error": {"code": f"http_{status}",
                                              "message": f"Forced failure {status}."}}, headers)
            return True

        # --- routes -----------------------------------------------------------------

        def do_GET(self) -> None:
            self._record()
            path = self.path.split("?", 1)[0]
            if path == "/_kiln/requests":
                with server._lock:
                    self._send(200, list(server.requests))
                return
            if path == "/_kiln/cancels":
                with server._lock:
                    self._send(200, list(server.cancels))
                return
            if path.startswith("/files/"):
                self._file(path[len("/files/"):])
                return
            if server.poll_delay:
                time.sleep(server.poll_delay)
            if path.startswith(meshy_wire.ROOT):
                self._meshy(path)
                return
            task = self._task_for(path)
            if task is not None:
                self._send(200, server.task_view(task))

        def do_DELETE(self) -> None:
            self._record()
            path = self.path.split("?", 1)[0]
            if path.startswith(meshy_wire.ROOT):
                self._meshy(path)
                return
            task = self._task_for(path)
            if task is not None:
                server._cancel(task.id)
                self._send(200, {})

        def do_PUT(self) -> None:
            body = self._body() or {}
            self._record(body)
            if self.path != "/_kiln/config":
                self._send(404, {})
                return
            for key in ("task_seconds", "gemini_seconds", "poll_delay"):
                if key in body:
                    setattr(server, key, float(body[key]))
            self._send(200, {})

        def do_POST(self) -> None:
            body = self._body()
            self._record(body)
            path = self.path.split("?", 1)[0]
            if path.startswith(meshy_wire.ROOT):
                self._meshy(path, body)
            elif body is None:
                self._send(400, {"message": "Invalid JSON."})
            elif path.endswith(":generateContent"):
                self._gemini(path, body)
            elif path == "/v1/tasks":
                self._task_create(body)
            elif path.startswith("/v1/tasks/") and path.endswith(":cancel"):
                if self._bearer_ok():
                    task_id = path[len("/v1/tasks/"):-len(":cancel")]
                    found = server._cancel(task_id)
                    self._send(200 if found else 404, {"task_id": task_id, "status": "canceled"}
                               if found else {"error": {"code": "not_found", "message": "No such task."}})
            else:
                self._send(404, {"message": "Not found."})

        def _task_for(self, path: str) -> _Task | None:
            """The task-server task ``/v1/tasks/{id}`` names (answers 404/401 when none)."""
            base, _, task_id = path.rpartition("/")
            if not self._bearer_ok():
                return None
            with server._lock:
                task = server.tasks.get(task_id) if base == "/v1/tasks" else None
            if task is not None and task.protocol == "task":
                return task
            self._send(404, {"error": {"code": "not_found", "message": "Task not found."}})
            return None

        def _meshy(self, path: str, body: Any = None) -> None:
            """Every path under ``/openapi/``: Meshy v2's create and task routes; any other
            (all of v1 too) is ``route_not_found``."""
            if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                self._send(*meshy_wire.status_error(401, "Invalid API key"))
                return
            task_id = meshy_wire.task_path(path)
            if self.command == "POST" and path in meshy_wire.TASK_TYPES:
                self._meshy_create(path, body)
            elif self.command == "GET" and task_id:
                task = server.meshy_task(task_id)
                self._send(*((200, server.meshy_view(task), {}) if task is not None
                             else meshy_wire.not_found()))
            elif self.command == "DELETE" and task_id:
                self._send(*server._meshy_delete(task_id))
            else:
                self._send(*meshy_wire.route_not_found())

        def _meshy_create(self, path: str, body: Any) -> None:
            """A checked create: its forced failure or ``[hang]``, else 202 and the task."""
            if not isinstance(body, dict):
                self._send(*meshy_wire.invalid_json())
                return
            refused = meshy_wire.check_create(path, body)
            if refused is not None:
                self._send(*refused)
                return
            source = meshy_wire.token_source(path, body)
            failure = meshy_wire.forced(_tokens(source).get("fail", ""))
            if failure is not None:
                self._send(*failure)
            elif not self._forced(source, "meshy"):  # [hang]
                task = server._new_task("meshy", "model", source,
                                        meshy_type=meshy_wire.TASK_TYPES[path], input=dict(body))
                self._send(202, server.meshy_view(task))

        def _task_create(self, body: dict[str, Any]) -> None:
            if not self._bearer_ok():
                return
            prompt, kind = str(body.get("prompt") or ""), body.get("kind")
            if kind not in ("image", "model") or not prompt:
                self._send(400, {"error": {"code": "invalid_request",
                                           "message": "kind and prompt are required."}})
                return
            if self._forced(prompt, "task"):
                return
            key = self.headers.get("Idempotency-Key") or ""
            with server._lock:
                known = server._idempotent.get(key) if key else None
            task_id = known or server._new_task("task", str(kind), prompt).id
            if key:
                with server._lock:
                    server._idempotent[key] = task_id
            self._send(202, {"task_id": task_id})

        def _gemini(self, path: str, body: dict[str, Any]) -> None:
            key = self.headers.get("x-goog-api-key")
            if not key:
                self._send(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                           "message": "Method doesn't allow unregistered callers."}})
                return
            if key != server.api_key:
                self._send(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                           "message": "API key not valid. Please pass a valid API key."}})
                return
            try:
                prompt = str(body["contents"][0]["parts"][0]["text"])
            except (KeyError, IndexError, TypeError):
                self._send(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                           "message": "contents must hold a text part."}})
                return
            model = path.rsplit("/", 1)[-1].split(":", 1)[0]
            fail = {m.group(1).lower(): (m.group(2) or "").lower()
                    for m in _TOKEN.finditer(prompt)}.get("fail", "")
            error = gemini_error(fail, model)
            if error is not None:
                self._send(*error)
                return
            if self._forced(prompt, "gemini"):
                return
            time.sleep(server.gemini_seconds)
            answer: dict[str, Any] = {"modelVersion": model, "responseId": uuid.uuid4().hex[:16],
                                      "usageMetadata": {"promptTokenCount": 8,
                                                        "candidatesTokenCount": 1290,
                                                        "totalTokenCount": 1298}}
            if fail == "refused":
                answer["promptFeedback"] = {"blockReason": "SAFETY"}
            elif fail == "image-safety":
                answer["candidates"] = [{"finishReason": "IMAGE_SAFETY", "index": 0}]
            else:
                jpeg = "[jpeg]" in prompt.lower()
                data = _png(prompt, "JPEG" if jpeg else "PNG")
                answer["candidates"] = [{"index": 0, "finishReason": "STOP", "content": {
                    "role": "model", "parts": [{"inlineData": {
                        "mimeType": "image/jpeg" if jpeg else "image/png",
                        "data": base64.b64encode(data).decode()}}]}}]
            self._send(200, answer)

        def _file(self, name: str) -> None:
            match = re.fullmatch(r"([\w-]+)(/thumb\.png|\.glb|\.png)(?:\.(\d+))?", name)
            with server._lock:
                task = server.tasks.get(match.group(1)) if match else None
            if task is None or match is None:
                self._send(404, {"message": "No such file."})
                return
            tokens = task.tokens()
            if match.group(2) == "/thumb.png":
                self._bytes(_png(task.prompt), "image/png")
                return
            target = tokens.get("redirect")
            if "redirect" in tokens and not match.group(3):
                location = (f"http://{target}/latest/meta-data/" if target
                            else f"{server.result_url(task)}.1")
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size, pieces = served(task)
            self.send_response(200)
            self.send_header("Content-Type", "image/png" if task.kind == "image"
                             else "model/gltf-binary")
            if "chunked" in tokens:
                self.close_connection = True  # HTTP/1.0: the body ends when the connection does
            else:
                self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                for piece in pieces:
                    self.wfile.write(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (a size cap, a cancel)

        def _bytes(self, data: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
