"""No paid remote task is left running by a job that ended without it, and no retried
batch job gets a second notice: cases a review found (each failed before its fix).

- a cancel while a dead worker's lease still looks live (no wake-up was published);
- a retried job that kept the last run's ``remoteCanceled`` (its new task was never stopped);
- a submit that outlived the job's maximum age, or lost its lease, while it ran;
- a job out of attempts while its task ran (its workers died);
- a check whose poll the provider refused for good (the job failed, its task ran on);
- a checkpoint of a new task id that the store failed (the next run paid for another);
- a retried batch job that ended before the batch's announcement but notified after it.
"""

from __future__ import annotations

from typing import Any

import pytest
from rig import Killed, Rig, TaskFake, api_call, build_rig

from kiln.core.errors import LeaseLostError, PermanentError, RetryableError
from kiln.core.job import Change, JobStatus
from kiln.providers.base import TaskState, TaskStatus
from kiln.runtime import actions, notify
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import RunOutcome, run_job
from kiln.settings import ConfigError

RUNNING = TaskStatus(TaskState.RUNNING, 40, "meshing")


def task_rig(**settings: Any) -> tuple[Rig, TaskFake]:
    rig = build_rig(**settings)
    provider = TaskFake(rig.clock, statuses=[RUNNING])
    rig.providers["model"] = provider
    return rig, provider


def drain(rig: Rig, limit: int = 20) -> list[Any]:
    """Run every published delivery (a nack is recorded by its error's name)."""
    outcomes: list[Any] = []
    while rig.cursor < len(rig.queue.deliveries) and len(outcomes) < limit:
        delivery = rig.queue.deliveries[rig.cursor]
        rig.cursor += 1
        try:
            outcomes.append(run_job(delivery.job_id, rig.services, check=delivery.check))
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def minutes_pass(rig: Rig, minutes: int = 5) -> None:
    """Minutes pass: the sweeper runs each minute and every message is delivered."""
    for _ in range(minutes):
        rig.clock.advance(60)
        sweep(rig.services)
        drain(rig)


def kill_a_check(rig: Rig, provider: TaskFake) -> None:
    """The next check's worker is killed while it polls: its lease stays live a while."""
    def die() -> None:
        raise Killed()

    provider.during_call = die
    rig.cursor = len(rig.queue.deliveries)
    with pytest.raises(Killed):
        rig.deliver_next()
    provider.during_call = None


def test_a_cancel_while_a_dead_workers_lease_looks_live_stops_the_task() -> None:
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    kill_a_check(rig, provider)
    assert rig.job(job_id).server.lease_live(rig.clock.now())
    assert actions.cancel(rig.services, job_id, by="owner").changed
    minutes_pass(rig)
    assert rig.job(job_id).status is JobStatus.CANCELED
    assert provider.canceled == ["task-1"]


def test_a_retried_job_forgets_the_last_runs_remote_cancel() -> None:
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    rig.scheduler.pending.clear()
    rig.cursor = len(rig.queue.deliveries)
    rig.clock.advance(3601)  # past its maximum age: failed, its task stopped
    assert sweep(rig.services).get("failed_expired") == 1
    drain(rig)
    assert provider.canceled == ["task-1"] and rig.job(job_id).server.remote_canceled
    assert actions.retry(rig.services, job_id, by="owner").changed
    retried = rig.job(job_id).server
    assert (retried.remote_canceled, retried.checks, retried.wake) == (False, 0, False)
    drain(rig)  # the new run submits task-2 and waits on it
    assert provider.submitted == ["task-1", "task-2"] and rig.job(job_id).server.waiting
    assert actions.cancel(rig.services, job_id, by="owner").changed
    drain(rig)
    assert provider.canceled == ["task-1", "task-2"]


def test_a_submit_that_outlives_the_jobs_maximum_age_stops_its_task() -> None:
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")

    def slow_submit() -> None:  # the provider answers late; the sweeper expires the job
        provider.during_call = None
        rig.clock.advance(3601)
        assert sweep(rig.services).get("failed_expired") == 1

    provider.during_call = slow_submit
    assert run_job(job_id, rig.services) is RunOutcome.LEASE_LOST
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["code"] == "deadline_exceeded"
    assert (provider.canceled, job.server.provider_task_id, job.server.remote_canceled) == (
        ["task-1"], "task-1", True)


def test_a_passing_cancel_failure_after_a_late_submit_is_tried_again() -> None:
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")

    def slow_submit() -> None:
        provider.during_call = None
        provider.cancel_error = RetryableError("busy", code="provider_unavailable")
        rig.clock.advance(3601)
        sweep(rig.services)

    provider.during_call = slow_submit
    assert run_job(job_id, rig.services) is RunOutcome.LEASE_LOST
    assert provider.canceled == []
    provider.cancel_error = None
    drain(rig)  # the wake-up it published: its delivery finds the task left
    assert provider.canceled == ["task-1"] and rig.job(job_id).server.remote_canceled


def test_a_submit_whose_lease_was_taken_meanwhile_stops_the_task_nobody_knows() -> None:
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")

    def taken() -> None:  # another delivery holds the job now
        provider.during_call = None
        rig.store.apply(job_id, Change({}, {"leaseOwner": "another-worker"}))

    provider.during_call = taken
    assert run_job(job_id, rig.services) is RunOutcome.LEASE_LOST
    assert provider.canceled == ["task-1"]
    assert rig.job(job_id).server.provider_task_id is None


@pytest.mark.parametrize("landed", [False, True])
def test_a_checkpoint_the_store_failed_stops_the_task_unless_it_landed(landed: bool) -> None:
    """Given a model job whose task was submitted, when the store fails the checkpoint
    that records the task id (or loses its answer after it landed), then a task no run
    knows is canceled before the delivery nacks, and the next run submits one task and
    waits on it; a checkpoint that landed keeps its task and waits on it."""
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")
    transact = rig.store.transact

    def failing(job_id: str, decide: Any, **kw: Any) -> Any:
        rig.store.transact = transact  # type: ignore[method-assign]
        if landed:
            transact(job_id, decide, **kw)
        raise RetryableError("The job store is unavailable.", code="store_unavailable")

    def submitting() -> None:  # the next write is the task's checkpoint
        if not provider.submitted[1:]:
            rig.store.transact = failing  # type: ignore[method-assign]

    provider.during_call = submitting
    if landed:
        assert run_job(job_id, rig.services) is RunOutcome.WAITING
        assert provider.canceled == [] and rig.job(job_id).server.provider_task_id == "task-1"
        return
    with pytest.raises(RetryableError):  # nacked
        run_job(job_id, rig.services)
    assert provider.canceled == ["task-1"]
    minutes_pass(rig)
    job = rig.job(job_id)
    assert provider.submitted == ["task-1", "task-2"] and provider.canceled == ["task-1"]
    assert job.status is JobStatus.PROCESSING and job.server.provider_task_id == "task-2"


def test_a_redeploy_that_changes_the_provider_leaves_waiting_jobs_on_theirs() -> None:
    """Given two model jobs waiting on tasks of one provider, when a redeploy configures
    another for model jobs, then one job's checks still poll the first provider (which
    finishes it; the new one never hears the old task's id), the other's cancel stops its
    task at the first, and a new job goes to the new one."""
    before = build_rig()
    first = TaskFake(before.clock, name="first")
    second = TaskFake(before.clock, name="second")

    def deployed(model_provider: str) -> Rig:
        return build_rig(factories={"image": lambda _s: before.providers["image"],
                                    "first": lambda _s: first, "second": lambda _s: second},
                         store=before.store, model_provider=model_provider)

    rig = deployed("first")
    waiting, canceled = rig.submit(kind="model"), rig.submit(kind="model", prompt="other")
    assert run_job(waiting, rig.services) is RunOutcome.WAITING
    assert run_job(canceled, rig.services) is RunOutcome.WAITING
    rig = deployed("second")
    actions.cancel(rig.services, canceled, by="owner")
    run_job(canceled, rig.services)  # its wake-up: the task left is stopped
    assert first.canceled == ["task-2"]
    while (job := rig.job(waiting)).status is JobStatus.PROCESSING:
        rig.clock.advance(30)
        assert run_job(waiting, rig.services, check=job.server.check_seq) is not None
    assert rig.job(waiting).status is JobStatus.COMPLETED
    assert set(first.polled) == {"task-1"} and second.polled == []
    fresh = rig.submit(kind="model", prompt="new")
    assert run_job(fresh, rig.services) is RunOutcome.WAITING
    assert second.submitted == ["task-1"] and rig.job(fresh).server.provider == "second"


def test_a_redeploy_to_a_provider_that_cannot_be_built_still_finishes_waiting_jobs() -> None:
    """Given a model job waiting on a task of one provider, when a redeploy names another
    for model jobs that cannot be built (no key), then the waiting job's checks still
    reach the first provider and the job completes."""
    before = build_rig()
    first = TaskFake(before.clock, name="first")

    def unbuildable(_settings: Any) -> Any:
        raise ConfigError("KILN_SECOND_API_KEY is not set")

    factories = {"image": lambda _s: before.providers["image"], "first": lambda _s: first,
                 "second": unbuildable}
    rig = build_rig(factories=factories, store=before.store, model_provider="first")
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    rig = build_rig(factories=factories, store=before.store, model_provider="second")
    while (job := rig.job(job_id)).status is JobStatus.PROCESSING:
        rig.clock.advance(30)
        assert run_job(job_id, rig.services, check=job.server.check_seq) is not None
    assert rig.job(job_id).status is JobStatus.COMPLETED and first.polled


def test_a_job_out_of_attempts_while_its_task_ran_stops_the_task() -> None:
    rig, provider = task_rig(max_attempts=1)
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    kill_a_check(rig, provider)
    minutes_pass(rig)
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.server.task_left
    assert provider.canceled == ["task-1"]


def refuse_polls(provider: TaskFake) -> None:
    """The provider refuses, for good, to say how the task is doing (a 4xx on its poll)."""
    def refused(_task_id: str) -> TaskStatus:
        raise PermanentError("The provider refused this request.", code="provider_rejected")

    provider.poll = refused  # type: ignore[method-assign]


def test_a_check_whose_poll_is_refused_fails_the_job_and_stops_its_task() -> None:
    """Given a model job waiting on its task, when its check's poll is refused for good,
    then the job fails with the provider's reason and its task (which may still run) is
    canceled, once."""
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    refuse_polls(provider)
    assert rig.deliver_next() is RunOutcome.FAILED
    job = rig.job(job_id)
    assert (job.status, (job.error or {}).get("code")) == (JobStatus.FAILED, "provider_rejected")
    assert provider.canceled == ["task-1"] and job.server.remote_canceled
    minutes_pass(rig)
    assert provider.canceled == ["task-1"]


def test_a_refused_poll_whose_cancel_fails_for_a_moment_is_stopped_on_redelivery() -> None:
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    refuse_polls(provider)
    provider.cancel_error = RetryableError("busy", code="provider_unavailable")
    with pytest.raises(RetryableError):
        rig.deliver_next()
    assert rig.job(job_id).status is JobStatus.FAILED and provider.canceled == []
    provider.cancel_error = None
    run_job(job_id, rig.services)  # the redelivery: the job failed, its task left
    assert provider.canceled == ["task-1"]


def out_of_attempts_with_a_failing_cancel() -> tuple[Rig, TaskFake, str]:
    """A job failed out of attempts (its check's worker died) whose task's cancel failed
    for a moment: the delivery that tried it nacked; the cancel still fails."""
    rig, provider = task_rig(max_attempts=1)
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    kill_a_check(rig, provider)
    provider.cancel_error = RetryableError("busy", code="provider_unavailable")
    rig.clock.advance(120)
    sweep(rig.services)
    assert drain(rig) == [RetryableError.__name__]  # nacked: Pub/Sub brings it back
    return rig, provider, job_id


def test_a_failed_cancel_of_a_job_out_of_attempts_is_tried_again_on_redelivery() -> None:
    rig, provider, job_id = out_of_attempts_with_a_failing_cancel()
    provider.cancel_error = None
    run_job(job_id, rig.services)  # the redelivery: the job ended, its task left
    assert provider.canceled == ["task-1"]


def app_batch(rig: Rig, size: int) -> list[str]:
    """An app user's batch of ``size`` images (its device registered): its job ids."""
    rig.devices.register("alice", "phone", fid="f")
    status, answer, _ = api_call(rig, "Bearer uid:alice", "POST", "/v1/batches",
                                 {"items": [{"kind": "image", "prompt": f"tile {i}"}
                                            for i in range(size)]})
    assert status == 202, answer
    return list(answer["jobIds"])


def test_a_retried_batch_job_that_ended_before_the_announcement_rides_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a batch of two whose first job failed and was retried, when the retried job
    completes, then the last job ends and announces the batch, and only then the retried
    job's own notice runs (its worker was slower), then the batch's push is the only one."""
    rig = build_rig()
    retried, last = app_batch(rig, 2)
    rig.providers["image"].error = PermanentError("No.", code="content_refused")
    run_job(retried, rig.services)
    rig.providers["image"].error = None
    assert actions.retry(rig.services, retried, by="owner").changed
    real, held = notify.deliver, list[str]()

    def slower(services: Any, job_id: str) -> None:
        if job_id == retried and not held:
            held.append(job_id)
            return
        real(services, job_id)

    monkeypatch.setattr(notify, "deliver", slower)
    drain(rig)
    assert rig.job(retried).status is JobStatus.COMPLETED and held == [retried]
    rig.clock.advance(1)
    run_job(last, rig.services)  # the last job ends: the batch's push covers both
    real(rig.services, retried)  # the retried job's own notice, a moment later
    assert [p.data["type"] for p in rig.push.sent] == ["batch_completed"]


def test_a_batch_job_retried_after_the_announcement_is_notified_alone() -> None:
    rig = build_rig()
    (job_id,) = app_batch(rig, 1)
    rig.providers["image"].error = PermanentError("No.", code="content_refused")
    run_job(job_id, rig.services)  # failed: the batch of one is announced
    rig.providers["image"].error = None
    rig.clock.advance(1)
    assert actions.retry(rig.services, job_id, by="owner").changed
    drain(rig)
    assert [p.data["type"] for p in rig.push.sent] == ["batch_completed", "generation_completed"]


def test_an_unreadable_end_marker_notifies_a_retried_job_alone() -> None:
    rig = build_rig()
    first, _other = app_batch(rig, 2)
    rig.providers["image"].error = PermanentError("No.", code="content_refused")
    run_job(first, rig.services)
    rig.providers["image"].error = None
    assert actions.retry(rig.services, first, by="owner").changed

    def unreadable(batch_id: str) -> None:
        raise LeaseLostError("not this")  # any error: a second notice rather than none

    rig.services.batches.ended_at = unreadable  # type: ignore[method-assign]
    drain(rig)  # both jobs run: the retried one is pushed alone, then the batch
    first_push = rig.push.sent[0].data
    assert (first_push["type"], first_push.get("jobId")) == ("generation_completed", first)


def test_a_retry_stops_the_task_the_failed_run_left_before_forgetting_it() -> None:
    """Given a job failed out of attempts whose task's cancel failed for a moment (its
    redelivery not yet run), when the owner retries it, then the retry stops that task
    first (the new run forgets its id); while the cancel still fails, the retry is
    refused for now and changes nothing."""
    rig, provider, job_id = out_of_attempts_with_a_failing_cancel()
    assert rig.job(job_id).server.task_left and provider.canceled == []
    with pytest.raises(RetryableError):
        actions.retry(rig.services, job_id, by="owner")
    assert rig.job(job_id).status is JobStatus.FAILED
    provider.cancel_error = None
    assert actions.retry(rig.services, job_id, by="owner").changed
    assert provider.canceled == ["task-1"]
    assert rig.job(job_id).server.provider_task_id is None
