"""A webhook receiver on 127.0.0.1 that misbehaves on demand (tests and the benchmark).

Each path is its own receiver with a :class:`Behavior`: answer ``status`` (2xx, 5xx,
410), fail every ``fail_every``-th request of each event (``webhook-id``) or its first
one (``fail_first``), be down (answer 503) until a time, answer only after ``delay``
seconds or once the test releases ``hold`` (a slow receiver), or ``reset`` the connection
without an answer. Every request is recorded (:class:`Received`: headers, body, wall time, whether
the Standard Webhooks signature verified with the path's secret) and announced through
a condition, so tests wait on arrivals instead of sleeping.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Behavior:
    status: int = 200
    fail_every: int = 0  # every n-th request of each webhook-id (1-based) answers 500
    fail_first: bool = False  # the first request of each webhook-id answers 500
    down_until: float = 0.0  # time.time() before which every request answers 503
    delay: float = 0.0  # seconds before answering
    hold: threading.Event | None = None  # answer only once it is set (at most 10 s)
    reset: bool = False  # close the connection with RST, no answer
    secret: str | None = None  # verify signatures with it
    seen: int = 0
    seen_ids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int  # the status sent (0: reset)
    verified: bool | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """``with WebhookReceiver() as r: r.behave("/a", Behavior(...)); r.url("/a")``."""

    host: str = "127.0.0.1"
    behaviors: dict[str, Behavior] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="webhook-receiver")

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def behave(self, path: str, behavior: Behavior) -> str:
        self.behaviors[path] = behavior
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        with self._cond:
            return [r for r in self.received if r.path == path]

    def wait(self, predicate: Any, timeout: float = 10.0) -> list[Received]:
        """Wait until ``predicate(received)`` is true; the requests so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s; received {len(self.received)}")
                self._cond.wait(left)
            return list(self.received)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._cond:
            behavior = self.behaviors.setdefault(path, Behavior())
            behavior.seen += 1
            webhook_id = headers.get("webhook-id", "")
            n = behavior.seen_ids[webhook_id] = behavior.seen_ids.get(webhook_id, 0) + 1
        verified = None
        if behavior.secret:
            try:
                Webhook(behavior.secret).verify(body, headers, json_parse=False)
                verified = True
            except WebhookVerificationError:
                verified = False
        if behavior.delay:
            time.sleep(behavior.delay)
        if behavior.hold is not None:
            behavior.hold.wait(10)
        if behavior.reset:
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
            handler.close_connection = True
            status = 0
        elif time.time() < behavior.down_until:
            status = 503
        elif (behavior.fail_every and n % behavior.fail_every == 0) or \
                (behavior.fail_first and n == 1):
            status = 500
        else:
            status = behavior.status
        with self._cond:
            self.received.append(Received(path, headers, body, time.time(), status, verified))
            self._cond.notify_all()
        if status:
            handler.send_response(status)
            handler.send_header("content-length", "0")
            handler.end_headers()
