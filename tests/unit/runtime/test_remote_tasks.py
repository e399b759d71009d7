"""Remote tasks on fakes: no delivery waits on a provider. The first delivery submits and
parks the job; each scheduled check polls once; a callback wakes it; the sweeper repairs
a lost check; cancel and the deadline still reach a waiting job."""

from __future__ import annotations

import datetime as dt

import pytest
from rig import Rig, TaskFake, build_rig

from kiln.core import lifecycle
from kiln.core.errors import ConfigError, KilnError, RetryableError
from kiln.core.job import Change, JobStatus
from kiln.providers.base import TaskState, TaskStatus
from kiln.runtime import actions, checks
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import RunOutcome, run_job

RUNNING = TaskStatus(TaskState.RUNNING, 40, "meshing")
DONE = TaskStatus(TaskState.SUCCEEDED, 90)


def task_rig(*statuses: TaskStatus, **settings: object) -> tuple[Rig, TaskFake]:
    rig = build_rig(**settings)  # type: ignore[arg-type]
    provider = TaskFake(rig.clock, statuses=list(statuses) or [RUNNING, DONE])
    rig.providers["model"] = provider
    return rig, provider


def test_the_first_delivery_submits_checkpoints_and_parks_without_polling() -> None:
    rig, provider = task_rig()
    job_id = rig.submit(kind="model")
    start = rig.clock.now()
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    job = rig.job(job_id)
    assert provider.submitted == ["task-1"] and provider.polled == []
    assert job.status is JobStatus.PROCESSING and job.server.provider_task_id == "task-1"
    assert job.server.lease_owner is None and job.server.waiting
    assert [(c.job_id, c.check, c.at) for c in rig.scheduler.pending.values()] == [
        (job_id, 1, start + dt.timedelta(seconds=5))]
    assert rig.task_index.jobs == {("taskfake", "task-1"): job_id}


def test_each_check_polls_once_until_the_result_is_fetched() -> None:
    rig, provider = task_rig(RUNNING, RUNNING, DONE)
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit(kind="model")
    outcomes = rig.drive(job_id)
    assert outcomes == [RunOutcome.WAITING] * 3 + [RunOutcome.COMPLETED]
    job = rig.job(job_id)
    assert provider.submitted == ["task-1"] and provider.polled == ["task-1"] * 3
    assert job.attempts == 1 and job.server.checks == 3 and not job.server.waiting
    assert job.result is not None and job.result["path"].endswith("result.glb")
    assert rig.clock.sleeps == []  # nothing waited: the clock moved only between checks
    assert [p.data["type"] for p in rig.push.sent] == ["generation_completed"]


def test_the_cadence_grows_to_its_cap() -> None:
    rig, _provider = task_rig(*[RUNNING] * 6, DONE)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    waits = []
    for _ in range(6):
        due = rig.scheduler.next_at()
        assert due is not None
        waits.append((due - rig.clock.now()).total_seconds())
        rig.deliver_next()
    assert waits == [5.0, 7.5, 11.25, 16.875, 20.0, 20.0]


def test_progress_is_written_by_the_check_that_saw_it_move() -> None:
    rig, _provider = task_rig(TaskStatus(TaskState.RUNNING, 40, "meshing"),
                              TaskStatus(TaskState.RUNNING, 40, "meshing"), DONE)
    job_id = rig.submit(kind="model", channel="telegram")
    rig.drive(job_id, limit=2)
    assert (rig.job(job_id).progress, rig.job(job_id).stage) == (40, "meshing")
    writes = rig.store.public_writes[job_id]
    rig.deliver_next()  # the same progress again: no public write, nothing for listeners
    assert rig.store.public_writes[job_id] == writes
    assert [(p, s) for _j, p, s in rig.channel.progress if p == 40] == [(40, "meshing")]


def test_only_the_live_check_runs_a_waiting_job() -> None:
    """A duplicate plain message, an old check and a redelivered check are acked; none
    polls the provider or changes the job."""
    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    rig.drive(job_id, limit=2)  # submitted, then check 1 parked it with check 2 live
    assert rig.job(job_id).server.check_seq == 2
    before = rig.job(job_id)
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    assert run_job(job_id, rig.services, check=1) is RunOutcome.STALE
    assert run_job(job_id, rig.services, check=7) is RunOutcome.STALE
    assert provider.polled == ["task-1"] and rig.job(job_id) == before


def test_a_check_of_a_job_released_for_retry_is_an_ordinary_delivery() -> None:
    """A check nacked after its task failed retryably comes back to a pending job: it is
    decided as any delivery (here: still in backoff, so nacked again)."""
    failed = TaskStatus(TaskState.FAILED, error_code="provider_busy", retryable=True)
    rig, provider = task_rig(failed, RUNNING)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    rig.clock.advance(5)
    with pytest.raises(RetryableError):
        run_job(job_id, rig.services, check=1)
    assert rig.job(job_id).status is JobStatus.PENDING
    assert rig.job(job_id).server.provider_task_id is None
    with pytest.raises(RetryableError) as caught:
        run_job(job_id, rig.services, check=1)
    assert caught.value.code == "backoff"
    rig.clock.advance(10)
    assert run_job(job_id, rig.services, check=1) is RunOutcome.WAITING
    assert provider.submitted == ["task-1", "task-2"] and rig.job(job_id).attempts == 2


def test_a_callback_wakes_a_waiting_job_at_once_and_is_coalesced() -> None:
    rig, provider = task_rig(DONE)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    rig.cursor = len(rig.queue.deliveries)
    assert checks.wake(rig.services, job_id, reason="callback-taskfake")
    assert not checks.wake(rig.services, job_id, reason="callback-taskfake")  # one is due
    assert rig.queue.deliveries[rig.cursor:] == [rig.queue.deliveries[-1]]
    assert rig.queue.deliveries[-1].check == 2
    assert rig.deliver_next() is RunOutcome.COMPLETED  # no clock moved: checked now
    rig.clock.advance(5)
    rig.scheduler.fire(rig.clock.now())  # the scheduled check 1 is late and stale
    assert rig.deliver_next() is RunOutcome.TERMINAL
    assert provider.polled == ["task-1"]


def test_a_callback_while_a_check_runs_makes_the_next_check_immediate() -> None:
    rig, provider = task_rig(RUNNING, DONE)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    original = provider.poll

    def poll_and_callback(task_id: str) -> TaskStatus:
        assert checks.wake(rig.services, job_id, reason="callback-taskfake")
        return original(task_id)

    provider.poll = poll_and_callback  # type: ignore[method-assign]
    rig.clock.advance(5)
    rig.scheduler.fire(rig.clock.now())
    rig.cursor = len(rig.queue.deliveries) - 1
    assert rig.deliver_next() is RunOutcome.WAITING
    assert rig.queue.deliveries[-1].check == 2  # due now: published, not scheduled
    assert not rig.job(job_id).server.wake
    provider.poll = original  # type: ignore[method-assign]
    assert rig.deliver_next() is RunOutcome.COMPLETED


@pytest.mark.parametrize("job_state", ["pending", "ended", "missing"])
def test_a_wake_for_a_job_not_waiting_does_nothing(job_state: str) -> None:
    rig, _provider = task_rig(DONE)
    job_id = rig.submit(kind="model") if job_state != "missing" else "nosuchjob1"
    if job_state == "ended":
        rig.drive(job_id)
    published = len(rig.queue.deliveries)
    assert not checks.wake(rig.services, job_id, reason="callback-taskfake")
    assert len(rig.queue.deliveries) == published


def test_a_callback_that_came_before_the_checkpoint_checks_at_once() -> None:
    rig, provider = task_rig(DONE)
    assert rig.task_index.job_for("taskfake", "task-1") is None  # the early callback
    job_id = rig.submit(kind="model")
    rig.cursor = len(rig.queue.deliveries)
    assert run_job(job_id, rig.services) is RunOutcome.WAITING
    assert rig.scheduler.pending == {}
    assert rig.deliver_next() is RunOutcome.COMPLETED
    assert provider.polled == ["task-1"]


def test_a_scheduler_outage_checks_early_and_a_lost_check_is_repaired_by_the_sweeper() -> None:
    rig, provider = task_rig(RUNNING, DONE)
    job_id = rig.submit(kind="model")
    rig.scheduler.fail_next = 1
    run_job(job_id, rig.services)
    assert rig.queue.deliveries[-1].check == 1  # published now instead of scheduled
    rig.scheduler.fail_next = 1  # again within a minute: not sent at once (no poll loop)
    assert rig.deliver_next() is RunOutcome.WAITING  # parked; its check 2 is lost
    assert rig.scheduler.pending == {} and rig.cursor == len(rig.queue.deliveries)
    report = sweep(rig.services)
    assert report["scanned"] == 1 and "rechecked" not in report  # not overdue yet
    rig.clock.advance(rig.services.settings.pending_republish_seconds + 30)
    assert sweep(rig.services).get("rechecked") == 1
    assert rig.deliver_next() is RunOutcome.COMPLETED
    assert provider.submitted == ["task-1"] and provider.polled == ["task-1"] * 2


def test_cancel_reaches_a_waiting_job_at_once_and_cancels_its_task_once() -> None:
    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    rig.cursor = len(rig.queue.deliveries)
    assert actions.cancel(rig.services, job_id, by="test").changed
    assert rig.deliver_next() is RunOutcome.TERMINAL  # the cancel's wake-up, no clock moved
    assert provider.canceled == ["task-1"] and rig.job(job_id).server.remote_canceled
    assert rig.deliver_next() is RunOutcome.TERMINAL  # the scheduled check, later: nothing
    assert provider.canceled == ["task-1"] and provider.polled == []


def test_a_cancel_during_a_check_cancels_the_remote_task() -> None:
    """Given a job whose check is polling (the lease is live, so the cancel publishes no
    wake-up), when the user cancels meanwhile, then the check itself cancels the task."""
    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    provider.during_call = lambda: actions.cancel(rig.services, job_id, by="test")
    rig.cursor = len(rig.queue.deliveries)
    assert rig.deliver_next() is RunOutcome.CANCELED
    assert provider.canceled == ["task-1"] and rig.job(job_id).server.remote_canceled
    assert rig.job(job_id).status is JobStatus.CANCELED


def test_a_cancel_during_the_submit_cancels_the_task_it_created() -> None:
    """Given a first delivery that is submitting the task, when the user cancels before the
    task id is checkpointed, then the task id is still recorded and the task canceled."""
    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    provider.during_call = lambda: actions.cancel(rig.services, job_id, by="test")
    assert run_job(job_id, rig.services) is RunOutcome.CANCELED
    job = rig.job(job_id)
    assert provider.canceled == ["task-1"] and job.server.provider_task_id == "task-1"
    assert job.server.remote_canceled and job.status is JobStatus.CANCELED
    provider.during_call = None
    for _ in range(3):  # whatever wake-ups are left find nothing to do
        if rig.deliver_next() is None:
            break
    assert provider.canceled == ["task-1"] and provider.polled == []


def test_a_cancel_the_provider_fails_for_a_moment_is_tried_again() -> None:
    """Given a canceled waiting job, when the provider's cancel call fails retryably (a
    5xx, a timeout, a 429), then the delivery nacks and its redelivery cancels the paid
    task; the same when a check holding the job noticed the cancel."""
    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    provider.cancel_error = RetryableError("The provider is unavailable.", code="provider_unavailable")
    assert actions.cancel(rig.services, job_id, by="test").changed
    with pytest.raises(RetryableError):  # the cancel's wake-up: nacked
        run_job(job_id, rig.services)
    assert provider.canceled == [] and not rig.job(job_id).server.remote_canceled
    provider.cancel_error = None
    assert run_job(job_id, rig.services) is RunOutcome.TERMINAL  # its redelivery
    assert provider.canceled == ["task-1"] and rig.job(job_id).server.remote_canceled

    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    provider.cancel_error = RetryableError("The provider is unavailable.", code="provider_unavailable")
    provider.during_call = lambda: actions.cancel(rig.services, job_id, by="test")
    rig.cursor = len(rig.queue.deliveries)
    with pytest.raises(RetryableError):  # the check that held it: nacked
        rig.deliver_next()
    delivery = rig.queue.deliveries[rig.cursor - 1]
    assert rig.job(job_id).status is JobStatus.CANCELED and provider.canceled == []
    provider.cancel_error, provider.during_call = None, None
    assert run_job(job_id, rig.services, check=delivery.check) is RunOutcome.TERMINAL
    assert provider.canceled == ["task-1"] and rig.job(job_id).server.remote_canceled


def test_a_store_blip_after_a_cancel_is_not_taken_for_a_failed_cancel() -> None:
    """Given a canceled waiting job whose task the provider cancels, when recording that
    fails for a moment, then the delivery still ends (no nack: the cancel worked)."""
    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    assert actions.cancel(rig.services, job_id, by="test").changed
    recorded = rig.store.apply

    def blip(job: str, change: Change) -> None:
        rig.store.apply = recorded  # type: ignore[method-assign]
        raise RetryableError("The job store is unavailable.", code="store_unavailable")

    rig.store.apply = blip  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.TERMINAL
    assert provider.canceled == ["task-1"]


def test_a_provider_that_cannot_cancel_or_is_gone_is_only_logged() -> None:
    rig, _provider = task_rig(RUNNING)
    rig.providers["model"].cancel_error = KilnError("no cancel", code="unsupported")
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    rig.store.transact(job_id, lambda job: (lifecycle.cancel(job), None))
    assert run_job(job_id, rig.services) is RunOutcome.TERMINAL
    assert not rig.job(job_id).server.remote_canceled

    def gone(_settings: object) -> object:
        raise ConfigError("KILN_MODEL_PROVIDER names nothing")

    fresh = build_rig(factories={"model": gone}, store=rig.store)
    assert run_job(job_id, fresh.services) is RunOutcome.TERMINAL


def test_the_deadline_ends_a_job_that_waits_forever() -> None:
    rig, provider = task_rig(RUNNING)
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit(kind="model")
    outcomes = rig.drive(job_id, limit=500)
    assert outcomes[-1] is RunOutcome.EXPIRED and RunOutcome.WAITING in outcomes
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.error["code"] == "deadline_exceeded"  # type: ignore[index]
    assert not job.server.waiting and [p.data["type"] for p in rig.push.sent] == ["generation_failed"]
    # Its paid task, still running at the provider, is canceled: nobody will fetch it.
    assert provider.canceled == ["task-1"] and job.server.remote_canceled
    # The sweeper gets there too when the checks stopped coming; its wake-up cancels.
    other, stuck_provider = task_rig(RUNNING)
    stuck = other.submit(kind="model")
    run_job(stuck, other.services)
    other.scheduler.pending.clear()
    other.cursor = len(other.queue.deliveries)
    other.clock.advance(3601)
    assert sweep(other.services).get("failed_expired") == 1
    assert other.deliver_next() is RunOutcome.TERMINAL
    assert stuck_provider.canceled == ["task-1"] and other.job(stuck).server.remote_canceled


def test_a_provider_that_moves_to_a_next_task_is_checkpointed_and_indexed_again() -> None:
    rig, provider = task_rig(TaskStatus(TaskState.RUNNING, 50, "refining", task_id="task-refine"),
                             DONE)
    job_id = rig.submit(kind="model")
    assert rig.drive(job_id)[-1] is RunOutcome.COMPLETED
    assert rig.job(job_id).server.provider_task_id == "task-refine"
    assert provider.polled == ["task-1", "task-refine"]
    assert rig.task_index.jobs[("taskfake", "task-refine")] == job_id


@pytest.mark.parametrize(("status", "code"), [
    (TaskStatus(TaskState.FAILED, error_code="provider_failed", error_message="Meshy failed."),
     "provider_failed"),
    (TaskStatus(TaskState.CANCELED), "provider_canceled"),
])
def test_a_task_that_ended_badly_fails_the_job_with_a_readable_reason(
        status: TaskStatus, code: str) -> None:
    rig, _provider = task_rig(status)
    job_id = rig.submit(kind="model")
    assert rig.drive(job_id)[-1] is RunOutcome.FAILED
    assert rig.job(job_id).error["code"] == code  # type: ignore[index]


def test_a_task_we_canceled_during_a_check_stops_quietly() -> None:
    rig, provider = task_rig(TaskStatus(TaskState.CANCELED))
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    original = provider.poll

    def cancel_then_poll(task_id: str) -> TaskStatus:
        rig.store.transact(job_id, lambda job: (lifecycle.cancel(job), None))
        return original(task_id)

    provider.poll = cancel_then_poll  # type: ignore[method-assign]
    rig.cursor = len(rig.queue.deliveries)
    assert rig.deliver_next() is RunOutcome.CANCELED
    assert rig.job(job_id).status is JobStatus.CANCELED and rig.job(job_id).error is None


def test_a_park_after_the_lease_was_lost_writes_nothing() -> None:
    rig, provider = task_rig(RUNNING)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    original = provider.poll

    def poll_then_lose(task_id: str) -> TaskStatus:
        rig.store.apply(job_id, Change({}, {"leaseOwner": "someone-else"}))
        return original(task_id)

    provider.poll = poll_then_lose  # type: ignore[method-assign]
    rig.cursor = len(rig.queue.deliveries)
    assert rig.deliver_next() is RunOutcome.LEASE_LOST
    assert not rig.job(job_id).server.waiting and rig.scheduler.pending == {}


def test_an_index_outage_leaves_the_job_to_polling() -> None:
    rig, _provider = task_rig(DONE)

    def down(*_args: object) -> bool:
        raise RetryableError("Firestore is unavailable.", code="store_unavailable")

    rig.task_index.link = down  # type: ignore[method-assign]
    job_id = rig.submit(kind="model")
    assert rig.drive(job_id) == [RunOutcome.WAITING, RunOutcome.COMPLETED]


def test_a_recheck_that_cannot_publish_is_counted_and_tried_next_pass() -> None:
    rig, _provider = task_rig(RUNNING, DONE)
    job_id = rig.submit(kind="model")
    run_job(job_id, rig.services)
    rig.scheduler.pending.clear()  # the scheduled check is lost
    rig.clock.advance(5 + rig.services.settings.pending_republish_seconds + 1)
    rig.queue.fail_next = 1
    assert sweep(rig.services)["publish_errors"] == 1
    assert sweep(rig.services) == {"scanned": 1}  # its new check is not overdue yet
    rig.clock.advance(rig.services.settings.pending_republish_seconds + 1)
    assert sweep(rig.services)["rechecked"] == 1
    assert rig.deliver_next() is RunOutcome.WAITING and rig.job(job_id).server.checks == 2
