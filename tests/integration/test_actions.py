"""Cancel and retry as the API, the chat and the operator CLI share them (kiln.runtime.actions):
the transition, and the messages they publish, observed on a topic of this test's own."""

from __future__ import annotations

import datetime as dt
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from kiln.adapters.firestore import utcnow
from kiln.core.errors import TransitionError
from kiln.runtime import actions
from support import create_job


@pytest.fixture(scope="module")
def topic(stack: Any) -> Iterator[tuple[str, Any, str]]:
    """(topic name, subscriber, subscription path) for a topic nobody else publishes to."""
    name = f"t-actions-{uuid.uuid4().hex[:8]}"
    publisher = pubsub_v1.PublisherClient()
    topic_path = publisher.topic_path(stack.config.project, name)
    publisher.create_topic(name=topic_path)
    subscriber = pubsub_v1.SubscriberClient()
    sub = subscriber.subscription_path(stack.config.project, name)
    subscriber.create_subscription(name=sub, topic=topic_path)
    yield name, subscriber, sub
    subscriber.delete_subscription(subscription=sub)
    publisher.delete_topic(topic=topic_path)


@pytest.fixture(scope="module")
def svc(stack: Any, topic: tuple[str, Any, str]) -> Any:
    return stack.services(jobs_topic=topic[0])


def published(topic: tuple[str, Any, str]) -> list[tuple[str, str]]:
    """(jobId, reason) of every message on the topic since the last call (acked)."""
    _name, subscriber, sub = topic
    out = []
    while True:
        with warnings.catch_warnings():  # deprecated, but the emulator honours it: no waiting
            warnings.simplefilter("ignore", DeprecationWarning)
            response = subscriber.pull(subscription=sub, max_messages=10, timeout=5,
                                       return_immediately=True)
        if not response.received_messages:
            return out
        for received in response.received_messages:
            attrs = received.message.attributes
            out.append((attrs["jobId"], attrs["reason"]))
        subscriber.acknowledge(subscription=sub,
                               ack_ids=[r.ack_id for r in response.received_messages])


@pytest.mark.parametrize("by", ["owner", "chat", "operator"])
def test_canceling_an_unheld_job_with_a_provider_task_wakes_a_worker(
        svc: Any, topic: Any, by: str) -> None:
    """Given a processing job whose worker died (lease expired) and whose provider task is
    running, when anyone cancels it, then it is canceled and one wake-up is published so a
    worker cancels the provider's task; a second cancel changes and publishes nothing."""
    published(topic)
    expired = utcnow() - dt.timedelta(seconds=30)
    job_id = create_job(svc, "processing", providerTaskId="task-1", leaseOwner="gone",
                        leaseExpiresAt=expired)
    outcome = actions.cancel(svc, job_id, by=by)
    assert (outcome.changed, outcome.status) == (True, "canceled")
    assert svc.store.get(job_id)["status"] == "canceled"
    assert published(topic) == [(job_id, "cancel")]
    assert actions.cancel(svc, job_id, by=by).changed is False
    assert published(topic) == []


@pytest.mark.parametrize(("status", "server"), [
    ("processing", {"providerTaskId": "task-1", "leaseOwner": "w1"}),  # held: it notices
    ("pending", {}),  # no task anywhere: nothing to cancel remotely
])
def test_canceling_publishes_nothing_when_no_wake_up_is_needed(
        svc: Any, topic: Any, status: str, server: dict[str, Any]) -> None:
    published(topic)
    if "leaseOwner" in server:
        server["leaseExpiresAt"] = utcnow() + dt.timedelta(seconds=60)
    job_id = create_job(svc, status, **server)
    assert actions.cancel(svc, job_id, by="owner").changed is True
    assert published(topic) == []


def test_retry_publishes_once_and_refuses_what_it_cannot_retry(svc: Any, topic: Any) -> None:
    """Given a failed job, when it is retried twice, then it is pending with one message
    (reason retry); a completed job and a missing one are refused with a readable message."""
    published(topic)
    job_id = create_job(svc, "failed")
    first = actions.retry(svc, job_id, by="operator")
    again = actions.retry(svc, job_id, by="operator")
    assert (first.changed, first.status) == (True, "pending")
    assert (again.changed, again.status) == (False, "pending")
    assert published(topic) == [(job_id, "retry")]
    with pytest.raises(TransitionError, match="Only a failed job can be retried"):
        actions.retry(svc, create_job(svc, "completed"), by="owner")
    with pytest.raises(TransitionError, match="No such job"):
        actions.cancel(svc, "nosuchjob-123456", by="operator")
    assert published(topic) == []
