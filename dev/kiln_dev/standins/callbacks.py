"""Provider callbacks as the stand-ins send them: real HTTP, signed, with faults on demand.

:class:`CallbackSender` posts one task's events from a background thread: progress events
while it runs (``faults.progress``), then its end. Two schemes, as the providers do:

- ``standard-webhooks`` (Kiln's task protocol): ``webhook-id`` / ``webhook-timestamp`` /
  ``webhook-signature`` from the ``standardwebhooks`` library;
- ``token`` (Meshy): the secret rides in the URL as ``?token=``.

:class:`CallbackFaults` makes the sender misbehave the way real providers do, so chaos
runs show the callback is only a hint: ``drop`` (the end is never sent), ``duplicate``
(sent twice, the same id), ``delay`` + ``jitter`` (late), ``forge`` (a copy signed with
another secret arrives first), ``early`` (an end is claimed as soon as the task is
created, before the worker links it and before it ended), ``progress`` (that many
progress events before the end), ``reorder`` (the last progress event is held back and
arrives after the end, as a provider's retried deliveries do). Probabilities are drawn
from ``seed``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

FORGED_SECRET = "whsec_" + "Zm9yZ2VkLWNhbGxiYWNrLXNlY3JldC1ub3QtcmVhbA=="

#: An event's body, made when it is sent; None: nothing to send any more (the task is gone).
Payload = Callable[[], dict[str, Any] | None]


@dataclass(frozen=True)
class CallbackFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    forge: float = 0.0
    early: float = 0.0
    progress: int = 0
    reorder: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Sent:
    """One delivery attempt: what, when (wall clock), and the receiver's status."""

    task_id: str
    kind: str  # "end" | "progress" | "early" | "forged" | "duplicate" | "reordered"
    at: float
    status: int


@dataclass
class CallbackSender:
    secret: str
    faults: CallbackFaults = field(default_factory=CallbackFaults)
    scheme: str = "standard-webhooks"
    timeout: float = 10.0

    def __post_init__(self) -> None:
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._random = random.Random(self.faults.seed)
        self._stopping = threading.Event()
        self._client = httpx.Client(timeout=self.timeout)

    def close(self) -> None:
        self._stopping.set()
        self._client.close()

    def ended(self) -> list[Sent]:
        """The genuine end deliveries the receiver accepted (2xx)."""
        with self._lock:
            return [s for s in self.sent if s.kind in ("end", "duplicate") and s.status < 300]

    def schedule(self, task_id: str, url: str, ends_in: float, end: Payload,
                 progress: Callable[[int], dict[str, Any] | None] | None = None) -> None:
        """Send ``task_id``'s events to ``url`` in a thread: the end ``ends_in`` seconds from
        now (plus the faults' delay)."""
        threading.Thread(target=self._run, args=(task_id, url, ends_in, end, progress),
                         daemon=True, name=f"callbacks-{task_id}").start()

    def send(self, task_id: str, url: str, payload: dict[str, Any], *, kind: str = "end",
             msg_id: str | None = None, forged: bool = False) -> int:
        """POST one event now; the receiver's status (0 when it could not be reached)."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.scheme == "token":
            token = "forged-token" if forged else self.secret
            url = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode({'token': token})}"
        else:
            msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
            now = dt.datetime.now(dt.UTC)
            signer = Webhook(FORGED_SECRET if forged else self.secret)
            headers.update({"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                            "webhook-signature": signer.sign(msg_id, now, body)})
        try:
            status = self._client.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError:
            status = 0
        with self._lock:
            self.sent.append(Sent(task_id, kind, time.time(), status))
        return status

    def _chance(self, probability: float) -> bool:
        with self._lock:
            return probability > 0 and self._random.random() < probability

    def _run(self, task_id: str, url: str, ends_in: float, end: Payload,
             progress: Callable[[int], dict[str, Any] | None] | None) -> None:
        faults, started = self.faults, time.monotonic()
        early = end() if self._chance(faults.early) else None
        if early is not None:
            self.send(task_id, url, early, kind="early")
        steps = faults.progress if progress is not None else 0
        held: dict[str, Any] | None = None
        for step in range(1, steps + 1):
            if self._stopping.wait(max(0.0, started + ends_in * step / (steps + 1)
                                       - time.monotonic())):
                return
            assert progress is not None
            event = progress(100 * step // (steps + 1))
            if event is None:
                return
            if step == steps and self._chance(faults.reorder):
                held = event  # overtaken by the end: sent after it
                continue
            self.send(task_id, url, event, kind="progress")
        with self._lock:
            extra = faults.delay + (self._random.uniform(0, faults.jitter) if faults.jitter else 0)
        if self._stopping.wait(max(0.0, started + ends_in + extra - time.monotonic())):
            return
        if self._chance(faults.drop):
            return
        payload = end()
        if payload is None:
            return
        if self._chance(faults.forge):
            self.send(task_id, url, payload, kind="forged", forged=True)
        msg_id = f"msg_{uuid.uuid4().hex}"
        self.send(task_id, url, payload, kind="end", msg_id=msg_id)
        if self._chance(faults.duplicate):
            self.send(task_id, url, payload, kind="duplicate", msg_id=msg_id)
        if held is not None:
            self.send(task_id, url, held, kind="reordered")
