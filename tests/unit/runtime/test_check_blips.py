"""A provider's blips during the checks of a healthy remote task (5xx, timeout, 429 from
``poll`` or ``fetch``) park the job again in the same attempt: checks spend no attempt
(docs/reliability.md), only the job's deadline bounds them."""

from __future__ import annotations

import datetime as dt

from rig import TaskFake, build_rig

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
    # five failed polls and a failed fetch: more blips than the job has attempts
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
