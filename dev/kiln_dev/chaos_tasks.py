"""A slow remote-task server for reliability tests (a local stack companion).

Real 3D providers run a paid remote task for minutes: create it, poll it, fetch the
result. The worker hands such a job on near its invocation budget and resumes the *same*
task in a fresh invocation. :class:`SlowTaskServer` lets tests show that on the local
stack: it speaks the generic task protocol of ``kiln.providers.taskserver``
(``POST /v1/tasks`` → ``{task_id}``, ``GET /v1/tasks/{id}``, ``POST /v1/tasks/{id}:cancel``,
a result URL with ``bytes`` and ``sha256``), so the real ``taskserver`` provider drives
it (``KILN_MODEL_PROVIDER=taskserver``; ``env()`` sets ``KILN_TASKSERVER_URL``). Its tasks
take ``seconds`` (or ``[task:N]`` in the prompt) and produce the offline generator's real
PNG/GLB. It counts task creations per ``Idempotency-Key`` (the job id) without
deduplicating them, so a test sees any job that paid for a second task.

Callbacks: given ``callback_secret`` (a ``whsec_`` secret), a task created with a
``callback_url`` gets a Standard-Webhooks-signed ``task.ended`` event posted there when it
ends, from a background thread over real HTTP (``kiln_dev.standins.callbacks``, with
``faults`` for chaos runs); ``callback_times()`` says when each job's end was delivered.

Prompt tokens: ``[task:N]`` (N seconds), ``[fail:permanent]`` / ``[fail:retryable]``
(the task fails half-way, permanent or retryable).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kiln.providers.base import GenerationRequest
from kiln_dev.standins.callbacks import CallbackFaults, CallbackSender

API_KEY = "slowtask-local-key"  # not a secret: a local stand-in checks it like a real one
_SECONDS = re.compile(r"\[task:(\d+(?:\.\d+)?)\]")


class SlowTaskServer:
    """An HTTP task server on 127.0.0.1 (``start``/``stop``/``env`` like any companion)."""

    def __init__(self, seconds: float = 8.0, host: str = "127.0.0.1", port: int = 0, *,
                 callback_secret: str | None = "", faults: CallbackFaults | None = None) -> None:
        self.seconds = seconds
        self.callbacks = (CallbackSender(callback_secret, faults or CallbackFaults())
                          if callback_secret else None)
        self.tasks: dict[str, dict[str, Any]] = {}
        self.submissions: Counter[str] = Counter()  # jobId → tasks created for it
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        return {"KILN_TASKSERVER_URL": self.url, "KILN_TASKSERVER_API_KEY": API_KEY}

    def start(self) -> SlowTaskServer:
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True,
                         name="slowtask-server").start()
        return self

    def stop(self) -> None:
        if self.callbacks is not None:
            self.callbacks.close()
        self._httpd.shutdown()
        self._httpd.server_close()

    def callback_times(self) -> dict[str, float]:
        """Job id → when (``time.time()``) its task's end callback was first accepted."""
        times: dict[str, float] = {}
        for sent in self.callbacks.ended() if self.callbacks is not None else []:
            task = self.tasks.get(sent.task_id)
            if task is not None:
                times.setdefault(str(task["jobId"]), sent.at)
        return times

    def create(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        prompt = str(body.get("prompt", ""))
        match = _SECONDS.search(prompt)
        with self._lock:
            task_id = f"task-{next(self._ids)}"
            self.submissions[key] += 1
            self.tasks[task_id] = {
                "id": task_id, "jobId": key, "kind": body.get("kind", "model"),
                "prompt": prompt, "options": body.get("options") or {},
                "seconds": float(match[1]) if match else self.seconds,
                "started": time.monotonic(), "canceled": False, "polls": 0,
            }
        url = body.get("callback_url")
        if self.callbacks is not None and isinstance(url, str) and url:
            task = self.tasks[task_id]
            fails = "[fail:" in prompt.lower()
            self.callbacks.schedule(task_id, url, task["seconds"] * (0.5 if fails else 1.0),
                                    end=lambda: self._end_event(task_id),
                                    progress=lambda pct: {"type": "task.progress",
                                                          "task_id": task_id,
                                                          "status": "running", "progress": pct})
        return {"task_id": task_id}

    def _end_event(self, task_id: str) -> dict[str, Any]:
        task = self.tasks[task_id]
        prompt = str(task["prompt"]).lower()
        status = ("canceled" if task["canceled"] else
                  "failed" if "[fail:" in prompt else "succeeded")
        return {"type": "task.ended", "task_id": task_id, "status": status, "progress": 100}

    def status(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            task["polls"] += 1
        elapsed = time.monotonic() - task["started"]
        fraction = min(1.0, elapsed / max(task["seconds"], 0.001))
        out: dict[str, Any] = {"task_id": task_id, "progress": int(fraction * 100),
                               "stage": "generating", "model": "slowtask-v1"}
        prompt = task["prompt"].lower()
        if task["canceled"]:
            out["status"] = "canceled"
        elif fraction >= 0.5 and ("[fail:permanent]" in prompt or "[fail:retryable]" in prompt):
            out["status"] = "failed"
            out["error"] = {"code": "task_failed", "message": "The task failed.",
                            "retryable": "[fail:retryable]" in prompt}
        elif fraction >= 1.0:
            content_type, data = self.result(task_id) or ("", b"")
            out["status"] = "succeeded"
            out["result"] = {"url": f"/v1/tasks/{task_id}/result", "content_type": content_type,
                             "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        else:
            out["status"] = "running" if elapsed > 0.2 else "queued"
        return out

    def result(self, task_id: str) -> tuple[str, bytes] | None:
        """The finished task's file: the offline generator's output for its prompt."""
        from kiln.providers.offline import OfflineProvider

        task = self.tasks.get(task_id)
        if task is None:
            return None
        if "data" not in task:
            request = GenerationRequest(
                job_id=str(task["jobId"]), kind=task["kind"],
                prompt=_SECONDS.sub("", task["prompt"]).strip() or "sphere",
                options=task["options"])
            artifact = OfflineProvider(0.0, 0.0, sleep=lambda _s: None).generate(
                request, lambda _p, _s: None, lambda: False)
            task["data"] = (artifact.content_type, b"".join(artifact.chunks))
        return task["data"]  # type: ignore[no-any-return]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, content_type: str = "") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {API_KEY}":
                    return True
                self._send(401, {"error": {"code": "unauthenticated", "message": "Bad key."}})
                return False

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/v1/tasks":
                    self._send(202, server.create(body, self.headers.get("Idempotency-Key", "")))
                elif self.path.startswith("/v1/tasks/") and self.path.endswith(":cancel"):
                    task = server.tasks.get(self.path[len("/v1/tasks/"):-len(":cancel")])
                    if task is not None:
                        task["canceled"] = True
                    self._send(200 if task else 404, {})
                else:
                    self._send(404, {})

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[:2] == ["v1", "tasks"] and len(parts) == 3 and not self._authorized():
                    return
                if parts == ["_kiln", "tasks"]:
                    tasks = [{k: v for k, v in t.items() if k != "data"}
                             for t in list(server.tasks.values())]
                    self._send(200, {"tasks": tasks, "submissions": dict(server.submissions)})
                elif len(parts) == 3 and parts[:2] == ["v1", "tasks"]:
                    status = server.status(parts[2])
                    self._send(200 if status else 404, status or {"error": {"code": "not_found"}})
                elif len(parts) == 4 and parts[:2] == ["v1", "tasks"] and parts[3] == "result":
                    result = server.result(parts[2])
                    if result is None:
                        self._send(404, {})
                    else:
                        self._send(200, result[1], result[0])
                else:
                    self._send(404, {})

        return Handler
