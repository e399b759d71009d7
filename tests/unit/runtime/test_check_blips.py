"""A provider's blips during the checks of a healthy remote task (5xx, timeout, 429 from
its ``poll``) park the job again in the same attempt: checks spend no attempt
(docs/reliability.md), only the job's deadline bounds them. A failing ``fetch`` of a task
that succeeded is not a check's blip: it spends an attempt, and the job ends with the
provider's error when none are left (not "took too long" at its deadline)."""

from __future__ import annotations

import datetime as dt

import pytest
from rig import Rig, TaskFake, build_rig

from kiln.core.errors import RetryableError
from kiln.core.job import JobStatus
from kiln.providers.base import Artifact, GenerationRequest, TaskState, TaskStatus
from kiln.providers.http import error_for_status
from kiln.runtime.worker import RunOutcome, run_job

RUNNING = TaskStatus(TaskState.RUNNING, 40, "meshing")
DONE = TaskStatus(TaskState.SUCCEEDED, 90)


class Blips(TaskFake):
    """Polls and fetches that fail with ``errors`` in turn (None: answer) before the task's
    own statuses."""

    errors: list[RetryableError | None]

    def poll(self, task_id: str) -> TaskStatus:
        status = super().poll(task_id)
        self._blip()
        return status

    def fetch(self, task_id: str, request: GenerationRequest) -> Artifact:
        self._blip()
        return super().fetch(task_id, request)

    def _blip(self) -> None:
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error


def test_blips_during_checks_spend_no_attempt_and_the_job_completes() -> None:
    rig = build_rig(max_attempts=3)
    rig.devices.register("alice", "phone", fid="f")
    provider = Blips(rig.clock, statuses=[RUNNING] * 5 + [DONE])
    # six failed polls: more blips than the job has attempts
    provider.errors = [error_for_status(502, "3D generation service"),
                       RetryableError("slow", code="provider_timeout"),
                       error_for_status(503, "3D generation service"), None,
                       error_for_status(500, "3D generation service"),
                       error_for_status(502, "3D generation service"),
                       error_for_status(503, "3D generation service")]
    rig.providers["model"] = provider
    job_id = rig.submit(kind="model")
    outcomes = rig.drive(job_id)
    assert outcomes[-1] is RunOutcome.COMPLETED
    assert set(outcomes[:-1]) == {RunOutcome.WAITING}
    job = rig.job(job_id)
    assert job.status is JobStatus.COMPLETED and job.attempts == 1 and job.error is None
    assert provider.submitted == ["task-1"]  # never a second paid task
    assert [p.data["type"] for p in rig.push.sent] == ["generation_completed"]


def test_a_rate_limited_check_waits_at_least_what_the_provider_asked() -> None:
    rig = build_rig()
    provider = Blips(rig.clock, statuses=[RUNNING, DONE])
    provider.errors = [error_for_status(429, "3D generation service",
                                        headers={"retry-after": "120"})]  # httpx: lower case
    rig.providers["model"] = provider
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    rig.cursor = len(rig.queue.deliveries)
    assert rig.deliver_next() is RunOutcome.WAITING  # the 429: parked again
    checked_at = rig.clock.now()
    [check] = rig.scheduler.pending.values()
    assert check.at >= checked_at + dt.timedelta(seconds=120)
    assert rig.job(job_id).attempts == 1 and rig.job(job_id).status is JobStatus.PROCESSING


def test_a_provider_that_never_answers_fails_the_job_at_its_deadline() -> None:
    rig = build_rig(job_max_age_seconds=600.0)
    provider = Blips(rig.clock, statuses=[RUNNING])
    provider.errors = [error_for_status(503, "3D generation service")] * 1000
    rig.providers["model"] = provider
    job_id = rig.submit(kind="model")
    outcomes = rig.drive(job_id, limit=200)
    assert outcomes[-1] is RunOutcome.EXPIRED
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["code"] == "deadline_exceeded" and job.attempts == 1
    assert job.created_at is not None
    assert rig.clock.now() >= job.created_at + dt.timedelta(seconds=600)


class FetchFails(TaskFake):
    """A task that succeeds, whose result's fetch fails with ``error`` ``times`` times."""

    error: RetryableError
    times: int
    fetched: int = 0

    def fetch(self, task_id: str, request: GenerationRequest) -> Artifact:
        self.fetched += 1
        if self.fetched <= self.times:
            raise self.error
        return super().fetch(task_id, request)


def fetch_fails(times: int) -> tuple[FetchFails, str, Rig]:
    """A model job on a rig whose provider's fetch fails ``times`` times; (provider, job
    id, rig) after its first delivery submitted the task."""
    rig = build_rig(max_attempts=3)
    provider = FetchFails(rig.clock, statuses=[DONE])
    provider.error, provider.times = error_for_status(503, "3D generation service"), times
    rig.providers["model"] = provider
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    return provider, job_id, rig


def test_a_failing_fetch_spends_an_attempt_and_the_next_one_fetches_the_same_task() -> None:
    provider, job_id, rig = fetch_fails(1)
    rig.cursor = len(rig.queue.deliveries)
    with pytest.raises(RetryableError):  # released for another attempt (nack)
        rig.deliver_next()
    job = rig.job(job_id)
    assert job.status is JobStatus.PENDING and job.attempts == 1
    rig.clock.advance(600)  # past the backoff: Pub/Sub redelivers
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert provider.submitted == ["task-1"] and rig.job(job_id).attempts == 2


def test_a_fetch_that_keeps_failing_ends_the_job_with_the_providers_error() -> None:
    """Before, each failing fetch parked the job again until its deadline, holding its
    places, and it ended "took too long"."""
    provider, job_id, rig = fetch_fails(1000)
    rig.cursor = len(rig.queue.deliveries)
    with pytest.raises(RetryableError):
        rig.deliver_next()
    outcome = None
    for _ in range(5):
        rig.clock.advance(300)
        try:
            outcome = run_job(job_id, rig.services)
            break
        except RetryableError:
            continue
    job = rig.job(job_id)
    assert outcome is RunOutcome.FAILED and job.status is JobStatus.FAILED
    assert job.error is not None and job.error["code"] == provider.error.code
    assert job.attempts == 3 and provider.submitted == ["task-1"]


def test_a_scheduler_outage_does_not_make_a_waiting_job_poll_in_a_loop() -> None:
    """Given Cloud Tasks refusing every check (a deleted queue, a lost permission), when
    a long task is waited on, then the first refusal checks at once (a blip costs one
    early poll) and later ones within a minute are left to the sweeper: a handful of
    polls, not one per delivery in a loop until the job's maximum age."""
    rig = build_rig()
    provider = rig.providers["model"]
    provider.statuses = [TaskStatus(TaskState.RUNNING, 40, "meshing")]

    def refused(*_: object) -> None:
        raise RetryableError("Cloud Tasks refused the check.", code="scheduler_refused")

    rig.scheduler.schedule = refused  # type: ignore[method-assign]
    rig.drive(rig.submit(kind="model"), limit=200)
    assert 1 <= len(provider.polled) <= 2
