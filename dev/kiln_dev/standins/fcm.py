"""An FCM HTTP v1 compatible server on 127.0.0.1 that records what it receives.

Speaks ``POST /v1/projects/{project}/messages:send`` as FCM does: 200 with
``{"name": "projects/{p}/messages/{id}"}``, or FCM's error body (status, and an
``FcmError`` detail with the ``errorCode`` firebase-admin maps to its exceptions).

A message targets exactly one of ``fid`` (Firebase Installation ID), ``token`` (legacy
registration token), ``topic`` or ``condition``, as FCM requires.

Control endpoints for tests: ``GET /_kiln/messages`` (what was received),
``DELETE /_kiln/messages`` (forget), ``PUT /_kiln/tokens/{address}`` with
``{"error": "UNREGISTERED" | "INVALID_ARGUMENT" | "QUOTA_EXCEEDED" | "UNAVAILABLE" |
"INTERNAL" | null, "times": N, "repeat": bool, "retryAfter": S}`` (how to answer for that
FID or token: always, only the next N sends, or ``repeat``: N failures then one success, over
and over — FCM's transient errors; ``retryAfter`` adds a Retry-After header). Addresses
that start with ``dead-`` answer UNREGISTERED without setup. ``attempts`` lists every
send (address, error code or None, time), failed ones included.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kiln_dev.background import BackgroundServer

_ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT",
                         "The registration token is not a valid FCM registration token"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
}


_TARGETS = ("fid", "token", "topic", "condition")


@dataclass
class _Plan:
    """How to answer one address: ``answers`` first (error codes; None = success), then
    ``then`` over and over (empty: success)."""

    answers: list[str | None] = field(default_factory=list)
    then: list[str | None] = field(default_factory=list)
    retry_after: int | None = None  # seconds, sent with the error answers

    def next_answer(self) -> str | None:
        if not self.answers:
            self.answers = list(self.then)
        return self.answers.pop(0) if self.answers else None


class FcmServer(BackgroundServer):
    """Run with ``start()``; ``url`` is the base to give ``KILN_FCM_ENDPOINT``."""

    thread_name = "fcm-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.messages: list[dict[str, Any]] = []
        #: How to answer for an FID or token (set by ``fail``, cleared by ``heal``).
        self.plans: dict[str, _Plan] = {}
        self.attempts: list[tuple[str, str | None, float]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        httpd = ThreadingHTTPServer((host, port), self._handler())
        httpd.daemon_threads = True
        super().__init__(httpd)

    def _answer(self, path: str, body: dict[str, Any],
                auth: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = path.split("/")
        if len(parts) != 5 or parts[1] != "v1" or parts[4] != "messages:send":
            return 404, _error(404, "NOT_FOUND", "Unknown method.", None), {}
        if not auth.startswith("Bearer "):
            return 401, _error(401, "UNAUTHENTICATED", "Missing credentials.", None), {}
        message = body.get("message")
        if not isinstance(message, dict):
            return 400, _error(400, "INVALID_ARGUMENT", "message is required.", None), {}
        targets = [key for key in _TARGETS if message.get(key)]
        if len(targets) != 1:
            return 400, _error(400, "INVALID_ARGUMENT", "Exactly one of message.fid, message.token, "
                               "message.topic or message.condition is required.", None), {}
        address = str(message[targets[0]])
        with self._lock:
            plan = self.plans.get(address)
            code = plan.next_answer() if plan else ("UNREGISTERED" if address.startswith("dead-")
                                                     else None)
            self.attempts.append((address, code, time.monotonic()))
            if code:
                status, name, text = _ERRORS[code]
                headers = ({"Retry-After": str(plan.retry_after)}
                           if plan and plan.retry_after is not None else {})
                return status, _error(status, name, text, code), headers
            message_id = next(self._ids)
            self.messages.append({"project": parts[3], "message": message,
                                  "validateOnly": bool(body.get("validate_only"))})
        return 200, {"name": f"projects/{parts[3]}/messages/{message_id}"}, {}

    def fail(self, address: str, error: str, *, times: int | None = None, repeat: bool = False,
             retry_after: int | None = None) -> None:
        """Answer ``error`` for ``address``: always, for the next ``times`` sends, or
        (``repeat``) ``times`` failures then one success, over and over."""
        if times is None:
            plan = _Plan(then=[error], retry_after=retry_after)
        elif repeat:
            plan = _Plan(then=[error] * times + [None], retry_after=retry_after)
        else:
            plan = _Plan(answers=[error] * times, retry_after=retry_after)
        with self._lock:
            self.plans[address] = plan

    def heal(self, address: str) -> None:
        """Answer success for ``address`` again."""
        with self._lock:
            self.plans.pop(address, None)

    def forget(self) -> None:
        """Drop the recorded messages and attempts and every planted failure."""
        with self._lock:
            self.messages.clear()
            self.attempts.clear()
            self.plans.clear()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                return json.loads(raw) if raw else {}

            def do_GET(self) -> None:
                if self.path == "/_kiln/messages":
                    with server._lock:
                        self._send(200, list(server.messages))
                else:
                    self._send(404, {})

            def do_DELETE(self) -> None:
                if self.path == "/_kiln/messages":
                    server.forget()
                    self._send(200, {})
                else:
                    self._send(404, {})

            def do_PUT(self) -> None:
                prefix = "/_kiln/tokens/"
                if not self.path.startswith(prefix):
                    self._send(404, {})
                    return
                body = self._body()
                address = self.path[len(prefix):]
                if body.get("error"):
                    server.fail(address, str(body["error"]), times=body.get("times"),
                                repeat=bool(body.get("repeat")), retry_after=body.get("retryAfter"))
                else:
                    server.heal(address)
                self._send(200, {})

            def do_POST(self) -> None:
                try:
                    body = self._body()
                except ValueError:
                    self._send(400, _error(400, "INVALID_ARGUMENT", "Invalid JSON.", None))
                    return
                status, payload, headers = server._answer(self.path, body,
                                                          self.headers.get("Authorization", ""))
                self._send(status, payload, headers)

        return Handler


def _error(status: int, name: str, message: str, fcm_code: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if fcm_code:
        error["details"] = [{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": fcm_code,
        }]
    return {"error": error}
