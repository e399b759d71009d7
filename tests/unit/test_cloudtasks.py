"""The Cloud Tasks scheduler without a network: task names, the request it builds, the
30-day clamp, and how Cloud Tasks' answers map to Kiln's (duplicate → False, faults →
RetryableError)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import time
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc

from kiln.adapters.cloudtasks import MAX_AHEAD, CloudTasksScheduler, task_id
from kiln.adapters.pubsub import decode_message
from kiln.core.errors import ConfigError, RetryableError
from kiln.ports import Delivery
from kiln.settings import Settings

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
QUEUE = "projects/demo-kiln/locations/us-central1/queues/kiln-checks"


class StubClient:
    """Records create_task calls; raises ``error`` if given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def create_task(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return kwargs["task"]


def scheduler(client: StubClient, account: str = "") -> CloudTasksScheduler:
    return CloudTasksScheduler(client, queue_path=QUEUE, publish_url="https://pubsub/x:publish",  # type: ignore[arg-type]
                               service_account=account, now=lambda: NOW)


def test_task_ids_are_per_job_and_check_and_only_use_allowed_characters() -> None:
    """Given job ids, then the task id is {job}-c{n}; unsafe characters are replaced and
    a hash keeps ids that differ only there apart."""
    assert task_id("abc-DEF_12345678", 3) == "abc-DEF_12345678-c3"
    odd, other = task_id("jöb.12345", 1), task_id("jüb.12345", 1)
    assert odd != other
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in odd + other)


def test_the_task_publishes_the_check_message_at_its_time() -> None:
    """Given a check due in 5 minutes, then the task POSTs a Pub/Sub publish body that
    decodes to the check's delivery, at that time, with the account's OAuth token."""
    at = NOW + dt.timedelta(minutes=5)
    task = scheduler(StubClient(), account="kiln-tasks@p.iam").build_task("job-12345678", 4, at)
    assert task.name == f"{QUEUE}/tasks/job-12345678-c4"
    assert task.schedule_time == at
    request = task.http_request
    assert (request.url, request.http_method.name) == ("https://pubsub/x:publish", "POST")
    assert request.oauth_token.service_account_email == "kiln-tasks@p.iam"
    (message,) = json.loads(request.body)["messages"]
    assert message["attributes"] == {"jobId": "job-12345678", "reason": "check", "check": "4"}
    assert decode_message({"message": message}) == Delivery("job-12345678", 4)
    assert json.loads(base64.b64decode(message["data"]))["check"] == 4


def test_no_token_without_an_account_and_far_checks_are_clamped_to_30_days() -> None:
    task = scheduler(StubClient()).build_task("job-12345678", 1, NOW + dt.timedelta(days=90))
    assert task.schedule_time == NOW + MAX_AHEAD
    assert dt.timedelta(days=30) >= MAX_AHEAD
    assert not task.http_request.oauth_token.service_account_email


def test_schedule_creates_once_and_a_duplicate_is_false() -> None:
    client = StubClient()
    assert scheduler(client).schedule("job-12345678", 1, NOW) is True
    assert client.calls[0]["parent"] == QUEUE and client.calls[0]["timeout"] > 0
    assert scheduler(StubClient(gexc.AlreadyExists("task exists"))).schedule(
        "job-12345678", 1, NOW) is False


@pytest.mark.parametrize("error", [
    gexc.ServiceUnavailable("down"), gexc.DeadlineExceeded("slow"),
    gexc.InternalServerError("oops"), gexc.TooManyRequests("429"),
    gexc.ResourceExhausted("quota"), gexc.RetryError("gave up", cause=None),
    grpc.RpcError(), TimeoutError(),
], ids=type)
def test_passing_faults_are_retryable(error: Exception) -> None:
    with pytest.raises(RetryableError) as caught:
        scheduler(StubClient(error)).schedule("job-12345678", 1, NOW)
    assert caught.value.code == "scheduler_unavailable"
    assert caught.value.__cause__ is error


def test_a_refusal_is_retryable_and_does_not_repeat_the_sdk_message() -> None:
    """Given Cloud Tasks refuses (permission), then the error says so by class name only:
    an SDK message may quote a request or a token."""
    error = gexc.PermissionDenied("token ya29.secret-value denied")
    with pytest.raises(RetryableError) as caught:
        scheduler(StubClient(error)).schedule("job-12345678", 1, NOW)
    assert caught.value.code == "scheduler_refused"
    assert "secret" not in str(caught.value) and "PermissionDenied" in str(caught.value)


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_connect_targets_the_emulators_locally_and_pubsub_with_a_token_in_the_cloud() -> None:
    local = Settings(env="local", project="demo-x", pubsub_emulator_host="127.0.0.1:8085",
                     tasks_emulator_host=closed_port())
    scheduler_ = CloudTasksScheduler.connect(local)
    assert scheduler_.publish_url == "http://127.0.0.1:8085/v1/projects/demo-x/topics/kiln-jobs:publish"
    assert scheduler_.queue_path == "projects/demo-x/locations/us-central1/queues/kiln-checks"
    assert not scheduler_.service_account
    cloud = Settings(project="p", tasks_service_account="kiln-tasks@p.iam",
                     tasks_emulator_host=closed_port(), tasks_queue="q", tasks_location="eu")
    scheduler_ = CloudTasksScheduler.connect(cloud)
    assert scheduler_.publish_url == "https://pubsub.googleapis.com/v1/projects/p/topics/kiln-jobs:publish"
    assert scheduler_.queue_path == "projects/p/locations/eu/queues/q"
    assert scheduler_.service_account == "kiln-tasks@p.iam"
    with pytest.raises(ConfigError):
        CloudTasksScheduler.connect(Settings(project="p"))


def test_an_unreachable_service_is_retryable_and_quick() -> None:
    """Given nothing listens where Cloud Tasks should be, then schedule raises
    RetryableError within its call timeout instead of hanging."""
    down = Settings(env="local", project="demo-x", pubsub_emulator_host="127.0.0.1:8085",
                    tasks_emulator_host=closed_port())
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        CloudTasksScheduler.connect(down, timeout=1.0).schedule("job-12345678", 1, NOW)
    assert caught.value.code == "scheduler_unavailable"
    assert time.monotonic() - started < 3
