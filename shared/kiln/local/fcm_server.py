"""An FCM HTTP v1 compatible server on 127.0.0.1 that records what it receives.

Speaks ``POST /v1/projects/{project}/messages:send`` as FCM does: 200 with
``{"name": "projects/{p}/messages/{id}"}``, or FCM's error body (status, and an
``FcmError`` detail with the ``errorCode`` firebase-admin maps to its exceptions).

A message targets exactly one of ``fid`` (Firebase Installation ID), ``token`` (legacy
registration token), ``topic`` or ``condition``, as FCM requires.

Control endpoints for tests: ``GET /_kiln/messages`` (what was received),
``DELETE /_kiln/messages`` (forget), ``PUT /_kiln/tokens/{address}`` with
``{"error": "UNREGISTERED" | "INVALID_ARGUMENT" | "QUOTA_EXCEEDED" | "UNAVAILABLE" |
"INTERNAL" | null}`` (how to answer for that FID or token). Addresses that start with
``dead-`` answer UNREGISTERED without setup.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kiln.local.background import BackgroundServer

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


class FcmServer(BackgroundServer):
    """Run with ``start()``; ``url`` is the base to give ``KILN_FCM_ENDPOINT``."""

    thread_name = "fcm-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.messages: list[dict[str, Any]] = []
        #: How to answer for an FID or token (an error code of ``_ERRORS``).
        self.token_errors: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        httpd = ThreadingHTTPServer((host, port), self._handler())
        httpd.daemon_threads = True
        super().__init__(httpd)

    def _answer(self, path: str, body: dict[str, Any], auth: str) -> tuple[int, dict[str, Any]]:
        parts = path.split("/")
        if len(parts) != 5 or parts[1] != "v1" or parts[4] != "messages:send":
            return 404, _error(404, "NOT_FOUND", "Unknown method.", None)
        if not auth.startswith("Bearer "):
            return 401, _error(401, "UNAUTHENTICATED", "Missing credentials.", None)
        message = body.get("message")
        if not isinstance(message, dict):
            return 400, _error(400, "INVALID_ARGUMENT", "message is required.", None)
        targets = [key for key in _TARGETS if message.get(key)]
        if len(targets) != 1:
            return 400, _error(400, "INVALID_ARGUMENT", "Exactly one of message.fid, message.token, "
                               "message.topic or message.condition is required.", None)
        address = str(message[targets[0]])
        with self._lock:
            code = self.token_errors.get(address) or ("UNREGISTERED" if address.startswith("dead-")
                                                      else None)
            if code:
                status, name, text = _ERRORS[code]
                return status, _error(status, name, text, code)
            message_id = next(self._ids)
            self.messages.append({"project": parts[3], "message": message,
                                  "validateOnly": bool(body.get("validate_only"))})
        return 200, {"name": f"projects/{parts[3]}/messages/{message_id}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
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
                    with server._lock:
                        server.messages.clear()
                        server.token_errors.clear()
                    self._send(200, {})
                else:
                    self._send(404, {})

            def do_PUT(self) -> None:
                prefix = "/_kiln/tokens/"
                if not self.path.startswith(prefix):
                    self._send(404, {})
                    return
                error = self._body().get("error")
                token = self.path[len(prefix):]
                with server._lock:
                    if error:
                        server.token_errors[token] = str(error)
                    else:
                        server.token_errors.pop(token, None)
                self._send(200, {})

            def do_POST(self) -> None:
                try:
                    body = self._body()
                except ValueError:
                    self._send(400, _error(400, "INVALID_ARGUMENT", "Invalid JSON.", None))
                    return
                status, payload = server._answer(self.path, body,
                                                 self.headers.get("Authorization", ""))
                self._send(status, payload)

        return Handler


def _error(status: int, name: str, message: str, fcm_code: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if fcm_code:
        error["details"] = [{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": fcm_code,
        }]
    return {"error": error}
