"""Pub/Sub adapter: wake a worker for a job.

Pub/Sub only wakes workers; Firestore is the source of truth. The message carries the
job id and nothing a worker could trust over the document. A publish is a direct
``Publish`` RPC made on a caller's thread: no commit thread, no linger, no future
(docs/benchmarks.md measures why: the batching client started a thread per message and
made the webhook wait on a future behind a batch lock). Publishes that arrive while a
call is on the wire go out together in the next one (:class:`GroupPublish`), so
concurrent webhooks share calls and a lone one sends at once. The request is built as raw
protobuf and sent on the generated client's channel (``kiln.adapters.wire``).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.pubsub_v1 import PublisherClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

from kiln import tracing
from kiln.adapters import wire
from kiln.core import timeline
from kiln.core.errors import PermanentError, RetryableError
from kiln.core.job import is_valid_job_id
from kiln.ports import Delivery

#: How long a publish may hold its caller, retries included. A healthy publish takes
#: milliseconds; past this the job (already durable) is left to the sweeper, so an outage
#: costs the webhook 3 s, not the SDK's default 60.
PUBLISH_TIMEOUT = 3.0

#: The most messages one call carries (Pub/Sub takes up to 1,000 or 10 MB; a job's
#: message is about 100 bytes).
MAX_BATCH = 100

#: Why a publish failed without a call: the call before it held the wire its whole time.
LATE = "The publish waited its whole time for its turn."

Message = tuple[bytes, Mapping[str, str]]
#: Sends messages in one call within ``timeout`` seconds: their ids, in order.
Send = Callable[..., list[str]]


class _Batch:
    """Messages waiting to go out in one call, and what became of them."""

    __slots__ = ("deadline", "done", "error", "ids", "messages", "turn")

    def __init__(self, message: Message, deadline: float) -> None:
        self.messages = [message]
        self.deadline = deadline  # its first caller's, the earliest
        self.turn = threading.Event()  # the call before it has returned: send it
        self.done = threading.Event()
        self.ids: list[str] = []
        self.error: BaseException | None = None


class GroupPublish:
    """Group commit for publishes: one call on the wire at a time, the rest ride the next.

    A message that finds no call on the wire is sent at once, alone, on its caller's
    thread: nothing waits and nothing lingers. Messages that arrive while a call is on the
    wire join one waiting batch (up to ``max_messages``); when the call returns, the
    batch's first caller sends it for all, and each caller gets its own message id or the
    call's error. Each caller is held at most ``timeout`` seconds: a batch is sent within
    its first caller's remaining time, and fails without a call if none is left, even while
    the call before it is still on the wire.
    """

    def __init__(self, send: Send, *, timeout: float, max_messages: int = MAX_BATCH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send, self._timeout, self._max, self._clock = send, timeout, max_messages, clock
        self._lock = threading.Lock()
        self._busy = False  # a call is on the wire
        self._waiting: deque[_Batch] = deque()

    @property
    def queued(self) -> int:
        """Messages waiting for the call on the wire to return."""
        with self._lock:
            return sum(len(batch.messages) for batch in self._waiting)

    def __call__(self, data: bytes, attributes: Mapping[str, str]) -> str:
        """The message's id.

        Raises:
            Exception: the call's own error (``google.api_core`` exceptions from Pub/Sub).
        """
        message = (data, attributes)
        with self._lock:
            if not self._busy:
                self._busy = True
                batch = None
            elif self._waiting and len(self._waiting[-1].messages) < self._max:
                batch = self._waiting[-1]
                index = len(batch.messages)
                batch.messages.append(message)
            else:
                batch, index = _Batch(message, self._clock() + self._timeout), 0
                self._waiting.append(batch)
        if batch is None:  # the common case: alone on the wire
            try:
                return self._sent([message], None)[0]
            finally:
                self._next()
        if index > 0:
            batch.done.wait()
        elif batch.turn.wait(max(0.0, batch.deadline - self._clock())) \
                or not self._withdraw(batch):
            self._run(batch)
        else:  # its time ran out behind the call on the wire: it never had the wire
            batch.error = gexc.DeadlineExceeded(LATE)
            batch.done.set()
        if batch.error is not None:
            raise batch.error
        return batch.ids[index]

    def _run(self, batch: _Batch) -> None:
        """Send a batch whose turn has come, for all its callers; then hand the wire on."""
        try:
            left = batch.deadline - self._clock()
            if left <= 0:
                raise gexc.DeadlineExceeded(LATE)
            batch.ids = self._sent(batch.messages, left)
        except BaseException as exc:  # each caller of the batch raises it
            batch.error = exc
        finally:
            batch.done.set()
            self._next()

    def _sent(self, messages: list[Message], timeout: float | None) -> list[str]:
        ids = self._send(messages, timeout=timeout)
        if len(ids) != len(messages):
            raise gexc.InternalServerError(
                f"Pub/Sub answered {len(ids)} message ids for {len(messages)} messages.")
        return ids

    def _withdraw(self, batch: _Batch) -> bool:
        """Take a batch whose time ran out before its turn off the queue; False if its turn
        has just come (it is then sent, or failed, as usual)."""
        with self._lock:
            if batch in self._waiting:
                self._waiting.remove(batch)
                return True
            return False

    def _next(self) -> None:
        """The call on the wire has returned: hand the wire to the next batch, if any."""
        with self._lock:
            following = self._waiting.popleft() if self._waiting else None
            self._busy = following is not None
        if following is not None:
            following.turn.set()


class PubSubQueue:
    """Publishes ``{"jobId": ...}`` to the jobs topic."""

    def __init__(self, project: str, topic: str, client: PublisherClient | None = None, *,
                 timeout: float = PUBLISH_TIMEOUT, max_batch: int = MAX_BATCH) -> None:
        self.timeout = timeout
        self.client = client or PublisherClient()
        self.topic_path = self.client.topic_path(project, topic)
        self._publish = GroupPublish(wire.Publish(self.client, self.topic_path, timeout=timeout),
                                     timeout=timeout, max_messages=max_batch)

    @classmethod
    def connect(cls, project: str, topic: str, *, emulator_host: str = "",
                timeout: float = PUBLISH_TIMEOUT) -> PubSubQueue:
        """A queue on the real service, or on the emulator at ``emulator_host``."""
        kwargs: dict[str, Any] = {}
        if emulator_host:
            kwargs["transport"] = PublisherGrpcTransport(channel=grpc.insecure_channel(emulator_host))
        return cls(project, topic, PublisherClient(**kwargs), timeout=timeout)

    def publish(self, job_id: str, *, reason: str = "new", check: int | None = None) -> str:
        """Publish and wait for the server's message id (at most ``timeout`` seconds).

        Raises:
            RetryableError: Pub/Sub did not take the message.
        """
        with tracing.span("pubsub.publish", job_id=job_id, reason=reason, check=check):
            data, attributes = encode_message(job_id, reason=reason, check=check)
            try:
                return self._publish(data, attributes)
            except (gexc.GoogleAPIError, TimeoutError) as exc:
                raise RetryableError("The job queue is unavailable.",
                                     code="queue_unavailable") from exc


def encode_message(job_id: str, *, reason: str = "new",
                   check: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The message body (JSON) and attributes for a job; the one format every publisher
    (the ingress, the sweeper, the Cloud Tasks scheduler) sends. With tracing on, the
    attributes carry the current trace context (``traceparent``) to the worker."""
    body: dict[str, Any] = {"jobId": job_id}
    attributes = {"jobId": job_id, "reason": reason}
    if check is not None:
        body["check"] = check
        attributes["check"] = str(check)
    tracing.inject(attributes)
    return json.dumps(body, separators=(",", ":")).encode(), attributes


def decode_message(data: Any) -> Delivery:
    """The delivery in a Pub/Sub message payload (the CloudEvent's ``data``).

    Raises:
        PermanentError: a poison message (not base64 JSON with a valid ``jobId``).
    """
    try:
        message = data["message"]
        payload = json.loads(base64.b64decode(message["data"], validate=True))
        job_id = payload["jobId"]
        check = payload.get("check")
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise PermanentError("Unreadable job message.", code="poison_message") from exc
    if not isinstance(job_id, str) or not is_valid_job_id(job_id):
        raise PermanentError("Job message has an invalid job id.", code="poison_message")
    if check is not None and (not isinstance(check, int) or isinstance(check, bool) or check < 0):
        raise PermanentError("Job message has an invalid check number.", code="poison_message")
    return Delivery(job_id, check, timeline.parse_time(message.get("publishTime")))
