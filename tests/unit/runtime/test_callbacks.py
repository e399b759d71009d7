"""A provider callback on fakes: an end wakes its job at once (one check, however many
times it is sent), progress costs nothing, and an end that beats the worker's link is
remembered so the link checks the job at once."""

from __future__ import annotations

import json

import pytest
from rig import Rig, TaskFake, build_rig
from standardwebhooks.webhooks import Webhook

from kiln.core.errors import RetryableError
from kiln.core.job import JobStatus
from kiln.providers.base import TaskState, TaskStatus
from kiln.providers.callbacks import CallbackUnauthenticated
from kiln.runtime.callbacks import Received, receive
from kiln.runtime.worker import RunOutcome, run_job

SECRET = "whsec_" + "dW5pdC10ZXN0LXNlY3JldC1ub3QtYS1yZWFsLW9uZQ=="
RUNNING = TaskStatus(TaskState.RUNNING, 40, "meshing")
DONE = TaskStatus(TaskState.SUCCEEDED, 90)


def callback_rig() -> tuple[Rig, TaskFake]:
    rig = build_rig(taskserver_webhook_secret=SECRET, meshy_webhook_secret="meshy-token")
    provider = TaskFake(rig.clock, statuses=[DONE], name="taskserver")
    rig.providers["model"] = provider
    return rig, provider


def send(rig: Rig, task_id: str, status: str = "succeeded", msg_id: str = "msg-1") -> Received:
    body = json.dumps({"type": "task.ended" if status == "succeeded" else "task.progress",
                       "task_id": task_id, "status": status}).encode()
    now = rig.clock.now()
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign(msg_id, now, body)}
    return receive(rig.services, "taskserver", headers, body, {})


def test_an_end_wakes_the_waiting_job_at_once_and_a_replay_does_not() -> None:
    rig, provider = callback_rig()
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING  # submitted, check scheduled
    published = len(rig.queue.deliveries)
    assert send(rig, "task-1") is Received.ACCEPTED
    assert len(rig.queue.deliveries) == published + 1  # a check due now, through the queue
    assert send(rig, "task-1") is Received.DUPLICATE
    assert len(rig.queue.deliveries) == published + 1
    assert rig.deliver_next() is RunOutcome.COMPLETED
    assert provider.polled == ["task-1"] and rig.job(job_id).status is JobStatus.COMPLETED


def test_two_ends_of_one_job_cost_one_check() -> None:
    rig, _provider = callback_rig()
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    published = len(rig.queue.deliveries)
    assert send(rig, "task-1", msg_id="a") is Received.ACCEPTED
    assert send(rig, "task-1", msg_id="b") is Received.ACCEPTED
    assert len(rig.queue.deliveries) == published + 1


def test_progress_is_acknowledged_without_a_check_or_a_write() -> None:
    rig, _provider = callback_rig()
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    published = len(rig.queue.deliveries)
    assert send(rig, "task-1", status="running") is Received.IGNORED
    assert len(rig.queue.deliveries) == published and rig.task_index.events == set()


def test_an_end_before_the_link_is_remembered_and_the_link_checks_at_once() -> None:
    rig, provider = callback_rig()
    assert send(rig, "task-1") is Received.ACCEPTED  # the task server answered fast
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    assert rig.scheduler.pending == {}  # not scheduled later: checked now
    assert rig.deliver_next() is RunOutcome.COMPLETED
    assert provider.polled == ["task-1"]


def test_meshy_calls_back_with_the_bare_id_of_a_staged_task() -> None:
    rig, provider = callback_rig()
    provider.name = "meshy"
    provider.submit = lambda request: "text:m-1"  # type: ignore[method-assign]
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    assert rig.task_index.jobs == {("meshy", "m-1"): job_id}
    body = json.dumps({"id": "m-1", "status": "SUCCEEDED", "progress": 100}).encode()
    published = len(rig.queue.deliveries)
    assert receive(rig.services, "meshy", {}, body, {"token": "meshy-token"}) is Received.ACCEPTED
    assert len(rig.queue.deliveries) == published + 1


def test_a_forged_callback_changes_nothing() -> None:
    rig, _provider = callback_rig()
    body = json.dumps({"task_id": "task-1", "status": "succeeded"}).encode()
    headers = {"webhook-id": "x", "webhook-timestamp": str(int(rig.clock.now().timestamp())),
               "webhook-signature": "v1,AAAA"}
    with pytest.raises(CallbackUnauthenticated):
        receive(rig.services, "taskserver", headers, body, {})
    assert rig.task_index.events == set() and rig.task_index.early == set()


def test_an_unavailable_index_is_retryable_for_the_provider() -> None:
    rig, _provider = callback_rig()

    def down(provider: str, event_id: str) -> bool:
        raise RetryableError("Firestore is unavailable.", code="store_unavailable")

    rig.task_index.first_seen = down  # type: ignore[method-assign]
    with pytest.raises(RetryableError):
        send(rig, "task-1")


@pytest.mark.parametrize("failure", [
    RetryableError("Firestore is unavailable.", code="store_unavailable"),
    ValueError("a key the store refuses"),
], ids=["store down", "unexpected"])
def test_an_end_whose_wake_failed_is_handled_when_the_provider_sends_it_again(
        failure: Exception) -> None:
    """Recorded as seen, then the wake fails (the job store down: a 503; or any other
    error): the event is unseen again, so the provider's retry of it wakes the job instead
    of being answered duplicate."""
    rig, _provider = callback_rig()
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    published = len(rig.queue.deliveries)
    job_for = rig.task_index.job_for

    def down(provider: str, task_id: str) -> str | None:
        raise failure

    rig.task_index.job_for = down  # type: ignore[method-assign]
    with pytest.raises(type(failure)):
        send(rig, "task-1")
    rig.task_index.job_for = job_for  # type: ignore[method-assign]
    assert send(rig, "task-1") is Received.ACCEPTED
    assert len(rig.queue.deliveries) == published + 1


def test_the_route_answers_503_with_retry_after_when_firestore_is_down() -> None:
    """A provider retries a 5xx: Firestore unavailable is a 503 with Retry-After, not 500."""
    import flask

    from kiln.http.api import handle

    rig, _provider = callback_rig()

    def down(provider: str, event_id: str) -> bool:
        raise RetryableError("Firestore is unavailable.", code="store_unavailable")

    rig.task_index.first_seen = down  # type: ignore[method-assign]
    body = json.dumps({"task_id": "task-1", "status": "succeeded"}).encode()
    now = rig.clock.now()
    headers = {"webhook-id": "m", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign("m", now, body)}
    with flask.Flask(__name__).test_request_context(
            "/v1/providers/taskserver/events", method="POST", data=body, headers=headers):
        response = handle(flask.request, rig.services)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert json.loads(response.get_data())["error"]["code"] == "store_unavailable"


def test_a_chat_job_woken_by_callbacks_and_duplicates_replies_once() -> None:
    """Given a Telegram job waiting on a remote task, when its end arrives twice (two ids),
    every delivery is redelivered and the scheduled check fires too, then the chat gets one
    reply and the task was polled only by the live checks."""
    rig, provider = callback_rig()
    provider.statuses = [RUNNING, DONE]
    job_id = rig.submit(kind="model", channel="telegram")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    assert rig.deliver_next() is RunOutcome.WAITING  # check 1: still running
    assert send(rig, "task-1", msg_id="a") is Received.ACCEPTED
    assert send(rig, "task-1", msg_id="b") is Received.ACCEPTED
    outcomes = []
    while (outcome := rig.deliver_next()) is not None:
        outcomes.append(outcome)
        outcomes.append(run_job(job_id, rig.services))  # Pub/Sub's duplicate of each
    assert outcomes.count(RunOutcome.COMPLETED) == 1
    assert rig.channel.finished == [job_id]
    assert rig.job(job_id).status is JobStatus.COMPLETED and provider.polled == ["task-1"] * 2
