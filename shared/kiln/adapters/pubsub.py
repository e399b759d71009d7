"""Pub/Sub adapter: wake a worker for a job.

Pub/Sub only wakes workers; Firestore is the source of truth. The message carries the
job id and nothing a worker could trust over the document. A publish is a direct
``Publish`` RPC made on a caller's thread: no commit thread, no linger, no future
(docs/benchmarks.md measures why: the batching client started a thread per message and
made the webhook wait on a future behind a batch lock). Publishes that arrive while a
call is on the wire go out together in the next one (``kiln.adapters.group``), so
concurrent webhooks share calls and a lone one sends at once. The request is built as raw
protobuf and sent on the generated client's channel (``kiln.adapters.wire``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.pubsub_v1 import PublisherClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

from kiln import tracing
from kiln.adapters import wire
from kiln.adapters.group import Group
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

Message = tuple[bytes, Mapping[str, str]]


class PubSubQueue:
    """Publishes ``{"jobId": ...}`` to the jobs topic."""

    def __init__(self, project: str, topic: str, client: PublisherClient | None = None, *,
                 timeout: float = PUBLISH_TIMEOUT, max_batch: int = MAX_BATCH) -> None:
        self.timeout = timeout
        self.client = client or PublisherClient()
        self.topic_path = self.client.topic_path(project, topic)
        self._publish: Group[Message, str] = Group(
            wire.Publish(self.client, self.topic_path, timeout=timeout), timeout=timeout,
            max_size=max_batch)

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
                return self._publish((data, attributes))
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
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error,
            RecursionError) as exc:  # (JSON nested deeper than Python's stack)
        raise PermanentError("Unreadable job message.", code="poison_message") from exc
    if not isinstance(job_id, str) or not is_valid_job_id(job_id):
        raise PermanentError("Job message has an invalid job id.", code="poison_message")
    if check is not None and (not isinstance(check, int) or isinstance(check, bool) or check < 0):
        raise PermanentError("Job message has an invalid check number.", code="poison_message")
    return Delivery(job_id, check, timeline.parse_time(message.get("publishTime")))
