"""``JobStore.unnotified`` (the sweeper's repair of lost end notifications), on the
in-memory fake and on the Firestore emulator: a job is found while its end notification
is claimed and not once it was sent."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from kiln.core import lifecycle
from kiln.core.job import JobStatus
from kiln.core.policy import RetryPolicy
from kiln.core.requests import parse_job_request
from kiln_dev.fakes import FakeClock, InMemoryJobStore

#: Enough to hold every claimed job the session's other tests leave on the shared emulator.
LIMIT = 5000


@pytest.fixture(params=["fake", "emulator"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC)))
    return request.getfixturevalue("services").store


def created(store: Any) -> str:
    job = lifecycle.new_job(job_id=uuid.uuid4().hex[:20], uid="contract-unnotified",
                            channel="app", now=dt.datetime.now(dt.UTC), policy=RetryPolicy(),
                            request=parse_job_request({"kind": "image", "prompt": "a cube"}))
    assert store.create(job) is True
    return job.id


def test_an_ended_job_is_found_while_its_notification_is_only_claimed(store: Any) -> None:
    ended, running = created(store), created(store)
    store.transact(ended, lambda job: (lifecycle.fail(job, code="x", message="X."), None))
    found = {job.id: job for job in store.unnotified(LIMIT)}
    assert ended in found and running not in found
    job = found[ended]
    assert job.status is JobStatus.FAILED and job.completed_at is not None
    assert job.server.notify is not None and job.server.notify["state"] == "claimed"
    store.apply(ended, lifecycle.notified("sent", {"push": {"sent": 1}}))
    assert ended not in {job.id for job in store.unnotified(LIMIT)}
