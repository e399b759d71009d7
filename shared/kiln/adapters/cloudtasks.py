"""Cloud Tasks adapter: a job's check, published to the jobs topic later.

A check is one Cloud Task whose HTTP target is the Pub/Sub REST ``publish`` of the jobs
topic (on the cloud with an OAuth token of the tasks service account; locally the Pub/Sub
emulator's REST endpoint, no token), carrying the message :func:`encode_message` builds.
With tracing on (``kiln.tracing``) the task's headers and the message's attributes carry
the scheduling delivery's trace context, so the check's delivery joins the job's trace.
The task is named after its (job, check), so a second schedule of one is refused by
Cloud Tasks (``AlreadyExists``) for about an hour: :meth:`CloudTasksScheduler.schedule`
returns False. Why checks go this way is in ``docs/deploy.md`` (Cloud Tasks).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable

import grpc
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2

from kiln import tracing
from kiln.adapters.clock import utcnow
from kiln.adapters.pubsub import encode_message
from kiln.core.errors import ConfigError, RetryableError
from kiln.settings import Settings

CREATE_TIMEOUT = 10.0
#: Cloud Tasks refuses a schedule time more than 30 days ahead; keep a margin for skew.
MAX_AHEAD = dt.timedelta(days=30) - dt.timedelta(minutes=5)
#: How long Cloud Tasks waits for Pub/Sub to answer one publish (its minimum is 15 s).
DISPATCH_DEADLINE = dt.timedelta(seconds=30)
PUBSUB_API = "https://pubsub.googleapis.com"
#: A passing fault of the service or the way to it: the next try may well succeed.
TRANSIENT: tuple[type[Exception], ...] = (
    gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError,
    gexc.TooManyRequests, gexc.Aborted, gexc.RetryError, grpc.RpcError, TimeoutError,
)
#: A restarted emulator is reached again within a second (gRPC's default backoff grows to 2 min).
EMULATOR_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100),
                      ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def task_id(job_id: str, check: int) -> str:
    """The task id of a (job, check): ``{job_id}-c{check}``; a job id with characters Cloud
    Tasks refuses gets them replaced and a hash of the original (distinct ids stay apart)."""
    safe = _UNSAFE.sub("_", job_id)
    if safe != job_id:
        safe += "_" + hashlib.sha256(job_id.encode()).hexdigest()[:12]
    return f"{safe}-c{check}"


def publish_body(job_id: str, check: int) -> bytes:
    """The Pub/Sub REST ``publish`` body of a check message."""
    data, attributes = encode_message(job_id, reason="check", check=check)
    message = {"data": base64.b64encode(data).decode(), "attributes": attributes}
    return json.dumps({"messages": [message]}, separators=(",", ":")).encode()


class CloudTasksScheduler:
    """``kiln.ports.Scheduler`` on one Cloud Tasks queue."""

    def __init__(
        self, client: tasks_v2.CloudTasksClient, *, queue_path: str, publish_url: str,
        service_account: str = "", timeout: float = CREATE_TIMEOUT,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.client = client
        self.queue_path = queue_path
        self.publish_url = publish_url
        self.service_account = service_account
        self.timeout = timeout
        self._now = now

    @classmethod
    def connect(cls, settings: Settings, *, timeout: float = CREATE_TIMEOUT) -> CloudTasksScheduler:
        """The scheduler on the real service, or on the emulator at ``tasks_emulator_host``
        (publishing to the Pub/Sub emulator's REST endpoint when the stack is local).

        Raises:
            ConfigError: a cloud deployment without ``KILN_TASKS_SERVICE_ACCOUNT``.
        """
        topic = f"projects/{settings.project}/topics/{settings.jobs_topic}"
        if settings.local and settings.pubsub_emulator_host:
            url, account = f"http://{settings.pubsub_emulator_host}/v1/{topic}:publish", ""
        elif settings.tasks_service_account:
            url, account = f"{PUBSUB_API}/v1/{topic}:publish", settings.tasks_service_account
        else:
            raise ConfigError("KILN_TASKS_SERVICE_ACCOUNT is not set: scheduled checks "
                              "cannot publish to Pub/Sub (see docs/deploy.md, Cloud Tasks).")
        if settings.tasks_emulator_host:
            channel = grpc.insecure_channel(settings.tasks_emulator_host, options=EMULATOR_RECONNECT)
            transport = CloudTasksGrpcTransport(credentials=AnonymousCredentials(), channel=channel)
            client = tasks_v2.CloudTasksClient(transport=transport)
        else:
            client = tasks_v2.CloudTasksClient()
        queue_path = client.queue_path(settings.project, settings.tasks_location,
                                       settings.tasks_queue)
        return cls(client, queue_path=queue_path, publish_url=url, service_account=account,
                   timeout=timeout)

    def build_task(self, job_id: str, check: int, at: dt.datetime) -> tasks_v2.Task:
        """The task of a check due at ``at`` (at most 30 days ahead)."""
        headers = {"Content-Type": "application/json"}
        tracing.inject(headers)  # the task's request continues this trace (when on)
        request = tasks_v2.HttpRequest(
            url=self.publish_url, http_method=tasks_v2.HttpMethod.POST,
            headers=headers, body=publish_body(job_id, check))
        if self.service_account:
            request.oauth_token = tasks_v2.OAuthToken(service_account_email=self.service_account)
        deadline = duration_pb2.Duration(seconds=int(DISPATCH_DEADLINE.total_seconds()))
        return tasks_v2.Task(
            name=f"{self.queue_path}/tasks/{task_id(job_id, check)}", http_request=request,
            schedule_time=min(at, self._now() + MAX_AHEAD), dispatch_deadline=deadline)

    def schedule(self, job_id: str, check: int, at: dt.datetime) -> bool:
        """Create the check's task; False when Cloud Tasks has it (or had it) already.

        Raises:
            RetryableError: Cloud Tasks did not take it (``scheduler_unavailable`` for a
                passing fault, ``scheduler_refused`` for a refusal such as a missing
                queue or permission, which needs the deployment fixed).
        """
        with tracing.span("cloudtasks.schedule", job_id=job_id, check=check):
            task = self.build_task(job_id, check, at)
            try:
                self.client.create_task(parent=self.queue_path, task=task, timeout=self.timeout)
            except gexc.AlreadyExists:
                return False
            except TRANSIENT as exc:
                raise RetryableError("The check scheduler is unavailable.",
                                     code="scheduler_unavailable") from exc
            except gexc.GoogleAPIError as exc:
                # The class name only: an SDK message may quote the request or a credential.
                raise RetryableError("The check scheduler refused the check "
                                     f"({type(exc).__name__}).", code="scheduler_refused") from exc
            return True
