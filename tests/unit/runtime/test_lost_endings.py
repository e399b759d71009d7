"""Endings that must not be lost: an ending write whose answer never came is still
notified by its own delivery, the sweeper sends an end notification nobody sent, and a
cancel during a check whose poll fails still cancels the paid remote task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rig import Killed, Rig, TaskFake, build_rig

from kiln.core.errors import KilnError, LeaseLostError, PermanentError, RetryableError
from kiln.core.job import Job, JobStatus
from kiln.providers.base import TaskState, TaskStatus
from kiln.providers.http import error_for_status
from kiln.runtime import actions
from kiln.runtime.sweeper import UNSENT_GRACE_SECONDS, sweep
from kiln.runtime.worker import RunOutcome, run_job

RUNNING = TaskStatus(TaskState.RUNNING, 40, "meshing")


def lose_answer(rig: Rig, status: JobStatus, error: KilnError) -> list[int]:
    """Make the store's next write that ends the job in ``status`` land, then answer with
    ``error`` as if its reply was lost (once); the list counts the answers lost."""
    real = rig.store.transact
    lost: list[int] = []

    def transact(job_id: str, decide: Callable[[Job | None], Any], *,
                 seen: Job | None = None) -> Any:
        value = real(job_id, decide, seen=seen)
        if not lost and rig.job(job_id).status is status:
            lost.append(1)
            raise error
        return value

    rig.store.transact = transact  # type: ignore[method-assign]
    return lost


# The SDK's own retry of a committed write fails its precondition; decided again in a
# transaction, the completion finds the job completed: LeaseLostError. Or the call times out.
ANSWERS = [LeaseLostError("Another worker owns this job now."),
           RetryableError("Firestore did not answer.", code="store_unavailable")]


@pytest.mark.parametrize("error", ANSWERS, ids=["lease_lost", "timeout"])
def test_a_completion_whose_answer_was_lost_is_notified_by_its_worker(error: KilnError) -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit()
    lost = lose_answer(rig, JobStatus.COMPLETED, error)
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    job = rig.job(job_id)
    assert lost == [1] and job.status is JobStatus.COMPLETED
    assert [p.data["type"] for p in rig.push.sent] == ["generation_completed"]
    assert job.server.notify is not None and job.server.notify["state"] == "sent"


@pytest.mark.parametrize("error", ANSWERS, ids=["lease_lost", "timeout"])
def test_a_failure_whose_answer_was_lost_is_notified_by_its_worker(error: KilnError) -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")

    class Refuses:
        name = "refuses"

        def generate(self, *_args: Any) -> Any:
            raise PermanentError("No.", code="content_refused")

    rig.providers["image"] = Refuses()
    job_id = rig.submit()
    lost = lose_answer(rig, JobStatus.FAILED, error)
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    assert lost == [1] and rig.job(job_id).error["code"] == "content_refused"  # type: ignore[index]
    assert [p.data["type"] for p in rig.push.sent] == ["generation_failed"]


def test_a_completion_that_did_not_land_sends_nothing_and_releases_the_job() -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit()
    real = rig.store.transact

    def transact(job_id: str, decide: Callable[[Job | None], Any], *,
                 seen: Job | None = None) -> Any:
        if seen is not None and rig.job(job_id).status is JobStatus.PROCESSING:
            # the completion, written on a read of the claimed job: it times out unwritten
            raise RetryableError("Firestore did not answer.", code="store_unavailable")
        return real(job_id, decide, seen=seen)

    rig.store.transact = transact  # type: ignore[method-assign]
    with pytest.raises(RetryableError):
        run_job(job_id, rig.services)
    job = rig.job(job_id)
    assert job.status is JobStatus.PENDING and job.stage == "retrying"
    assert rig.push.sent == [] and job.server.notify is None


def test_the_sweeper_sends_an_end_notification_its_dead_worker_never_sent(
        killed_after_ending: Callable[[], None]) -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit()
    with pytest.raises(Killed):
        run_job(job_id, rig.services)
    killed_after_ending()
    job = rig.job(job_id)
    assert job.status is JobStatus.COMPLETED and job.server.notify["state"] == "claimed"  # type: ignore[index]
    rig.clock.advance(UNSENT_GRACE_SECONDS - 1)  # a worker may still be sending it
    assert "renotified" not in sweep(rig.services) and rig.push.sent == []
    rig.clock.advance(2)
    assert sweep(rig.services)["renotified"] == 1
    assert [p.data["type"] for p in rig.push.sent] == ["generation_completed"]
    assert rig.job(job_id).server.notify["state"] == "sent"  # type: ignore[index]
    rig.clock.advance(UNSENT_GRACE_SECONDS)
    assert "renotified" not in sweep(rig.services)  # sent once
    assert len(rig.push.sent) == 1


def test_a_lost_failure_notification_is_sent_once_by_overlapping_sweeps(
        killed_after_ending: Callable[[], None]) -> None:
    """Two passes that found the same job: the first to take it from ``claimed`` sends."""
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit()
    rig.clock.advance(4000)  # past its maximum age: the claim fails it
    with pytest.raises(Killed):
        run_job(job_id, rig.services)
    killed_after_ending()
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    found = rig.store.unnotified(10)
    real = rig.store.unnotified
    rig.store.unnotified = lambda limit: found  # type: ignore[method-assign]
    assert sweep(rig.services)["renotified"] == 1
    assert "renotified" not in sweep(rig.services)  # the second pass read it as claimed too
    rig.store.unnotified = real  # type: ignore[method-assign]
    assert [p.data["type"] for p in rig.push.sent] == ["generation_failed"]
    assert rig.job(job_id).error["code"] == "deadline_exceeded"  # type: ignore[index]


# --- a cancel during a check whose poll fails -------------------------------------------

POLL_ERRORS = [error_for_status(503, "3D generation service"),
               error_for_status(429, "3D generation service"),
               PermanentError("The task's answer could not be read.", code="provider_bad_response")]


@pytest.mark.parametrize("error", POLL_ERRORS, ids=["unavailable", "rate_limited", "unreadable"])
def test_a_cancel_during_a_check_whose_poll_fails_cancels_the_remote_task(
        error: KilnError) -> None:
    """Given a job whose check is polling (the lease is live, so the cancel publishes no
    wake-up), when the user cancels meanwhile and the poll then fails, then the check
    itself cancels the paid task and records it."""
    rig = build_rig()
    provider = TaskFake(rig.clock, statuses=[RUNNING])
    rig.providers["model"] = provider
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING

    def cancel_then_fail() -> None:
        actions.cancel(rig.services, job_id, by="test")
        raise error

    provider.during_call = cancel_then_fail
    rig.cursor = len(rig.queue.deliveries)
    assert rig.deliver_next() is RunOutcome.CANCELED
    job = rig.job(job_id)
    assert provider.canceled == ["task-1"] and job.server.remote_canceled
    assert job.status is JobStatus.CANCELED and rig.push.sent == []
    provider.during_call = None
    while rig.deliver_next() is not None:  # whatever is left finds nothing to do
        pass
    assert provider.canceled == ["task-1"] and provider.polled == ["task-1"]
