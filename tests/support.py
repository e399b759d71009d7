"""Helpers for tests (import as ``from support import ...``; tests/ is on sys.path)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kiln.adapters.clock import utcnow
from kiln.core import lifecycle
from kiln.core.job import Change, Job
from kiln.core.requests import parse_job_request

EVENTS = Path(__file__).parent / "events"

#: Fast but honest settings for the functions under test.
STACK_ENV = {
    "KILN_OFFLINE_IMAGE_SECONDS": "0.6",
    "KILN_OFFLINE_MODEL_SECONDS": "1.5",
    "KILN_PROGRESS_INTERVAL_SECONDS": "0.3",
    "KILN_LEASE_SECONDS": "6",
    "KILN_RETRY_BACKOFF_SECONDS": "0.5",
    "KILN_PENDING_REPUBLISH_SECONDS": "3",
    "KILN_MAX_ATTEMPTS": "3",
    "KILN_LOG_LEVEL": "INFO",
}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (a probe, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_terminal(services: Any, job_id: str, timeout: float = 45.0) -> Job:
    def done() -> Job | None:
        job = services.store.get(job_id)
        return job if job is not None and job.terminal else None

    return wait_for(done, timeout, what=f"job {job_id} to end")  # type: ignore[no-any-return]


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def create_job(services: Any, status: str = "pending", *, uid: str = "u", kind: str = "model",
               prompt: str = "a cube", fields: dict[str, Any] | None = None, **server: Any) -> str:
    """A job written straight to the store (never published), in ``status``, with ``fields``
    set on its public document and ``server`` on its server state; its id."""
    job_id = uuid.uuid4().hex[:20]
    new = lifecycle.new_job(job_id=job_id, uid=uid, channel="app", now=utcnow(),
                            policy=services.policy, server=server or None,
                            request=parse_job_request({"kind": kind, "prompt": prompt}))
    assert services.store.create(new)
    if status != "pending" or fields:
        services.store.apply(job_id, Change({**(fields or {}), "status": status}))
    return job_id


def publish_raw(publisher: Any, topic: str, data: bytes) -> str:
    """Publish ``data`` as is (no attributes) with a publisher of
    ``kiln_dev.stack.emulator_publisher``; the message id."""
    from google.pubsub_v1 import PubsubMessage

    answer = publisher.publish(topic=topic, messages=[PubsubMessage(data=data)], timeout=10)
    return str(answer.message_ids[0])


class Receiver:
    """Records every POST (query, headers, body) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver.arrived:
                    receiver.requests.append((query, dict(self.headers), body))
                    receiver.arrived.notify_all()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/events"

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, str], dict[str, str], bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), self.requests
            return list(self.requests)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
