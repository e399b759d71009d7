"""The lifecycle's transitions on typed jobs: leases, attempts, deadlines, the notification
claim. Changes are applied by the in-memory store, as the real one applies them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from kiln.core import lifecycle
from kiln.core.errors import CanceledError, ConfigError, LeaseLostError, RetryableError, TransitionError
from kiln.core.job import Change, Job, JobStatus
from kiln.core.lifecycle import ClaimOutcome, SweepAction
from kiln.core.policy import PollCadence, RetryPolicy
from kiln.core.requests import parse_job_request
from kiln_dev.fakes import FakeClock, InMemoryJobStore

POLICY = RetryPolicy(max_attempts=3, initial_backoff=10, lease_seconds=60, max_age_seconds=3600)


class World:
    """One job in a fake store, moved by transitions."""

    def __init__(self, kind: str = "image", **server: Any) -> None:
        self.clock = FakeClock()
        self.store = InMemoryJobStore(self.clock)
        request = parse_job_request({"kind": kind, "prompt": "a cat"})
        self.new = lifecycle.new_job(job_id="job-1", uid="u", channel="app", request=request,
                                     now=self.clock.now(), policy=POLICY, server=server,
                                     idempotency_key="k1")
        assert self.store.create(self.new)

    @property
    def job(self) -> Job:
        job = self.store.get("job-1")
        assert job is not None
        return job

    def do(self, transition: Callable[[Job], Change | None]) -> Change | None:
        change = transition(self.job)
        if change:
            self.store.apply("job-1", change)
        return change

    def claim(self, worker: str = "w1", token: str = "t1") -> lifecycle.Claim:
        claim = lifecycle.claim(self.job, worker_id=worker, now=self.clock.now(), policy=POLICY,
                                claim_token=token)
        if claim.change:
            self.store.apply("job-1", claim.change)
        return claim


def test_new_job_is_pending_with_contract_fields_and_server_state_apart() -> None:
    """A new job has every contract field, pending, progress 0; its deadline, fingerprint
    and idempotency key are server state, not in the client's document."""
    w = World()
    job = w.job
    assert (job.status, job.progress, job.attempts, job.stage) == (JobStatus.PENDING, 0, 0, "queued")
    assert job.created_at == w.clock.now() and job.updated_at == w.clock.now()
    assert job.server.deadline_at == w.clock.now() + dt.timedelta(seconds=3600)
    assert job.server.idempotency_key == "k1" and job.server.fingerprint
    assert "deadlineAt" not in w.store.docs["job-1"] and "fingerprint" not in w.store.docs["job-1"]
    assert w.store.docs["job-1"]["expireAt"] == w.store.servers["job-1"]["expireAt"]


def test_claim_takes_a_lease_and_counts_an_attempt() -> None:
    """Given a pending job, when claimed, then it is processing under our lease, attempt 1."""
    w = World()
    claim = w.claim()
    job = w.job
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.resume_task_id is None
    assert (job.status, job.attempts, job.stage) == (JobStatus.PROCESSING, 1, "starting")
    assert job.server.lease_owner == "w1" and job.started_at == w.clock.now()
    assert job.server.lease_expires_at == w.clock.now() + dt.timedelta(seconds=60)


def test_missing_busy_terminal_and_own_retried_claim() -> None:
    """No job → missing; a live lease → busy for others, but our own committed claim (same
    token, SDK retry) is recognised with nothing more to write; an ended job → terminal."""
    w = World()
    assert lifecycle.claim(None, worker_id="w", now=w.clock.now(), policy=POLICY,
                           claim_token="t").outcome is ClaimOutcome.MISSING
    w.claim("w1", "t1")
    assert w.claim("w2", "t2").outcome is ClaimOutcome.BUSY
    again = w.claim("w1", "t1")
    assert again.outcome is ClaimOutcome.CLAIMED and again.change is None
    w.do(lambda j: lifecycle.complete(j, worker_id="w1", result={"path": "p"}))
    assert w.claim("w3", "t3").outcome is ClaimOutcome.TERMINAL


def test_expired_lease_is_claimed_again_and_resumes_the_provider_task() -> None:
    """Given a worker that checkpointed a task and died, when its lease expires, then the
    next claim takes it (attempt 2) and resumes that task."""
    w = World(kind="model")
    w.claim()
    w.do(lambda j: lifecycle.checkpoint(j, worker_id="w1", now=w.clock.now(), policy=POLICY,
                                        provider="meshy", task_id="task-9"))
    assert w.job.server.provider_task_id == "task-9" and w.job.server.provider == "meshy"
    w.clock.advance(61)
    claim = w.claim("w2", "t2")
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.resume_task_id == "task-9"
    assert (w.job.attempts, w.job.server.lease_owner) == (2, "w2")


def test_out_of_attempts_fails_with_the_last_error_and_past_deadline_expires() -> None:
    """Given a job that used every attempt, the claim fails it with its last error and
    how many attempts were made; past its deadline, the claim fails it deadline_exceeded."""
    w = World()
    w.store.apply("job-1", Change({"attempts": 3, "error": {"code": "provider_down",
                                                            "message": "Down."}}))
    claim = w.claim()
    assert claim.outcome is ClaimOutcome.EXHAUSTED and claim.change is not None
    assert claim.change.job["error"] == {"code": "provider_down", "retryable": False,
                                         "message": "Down. Gave up after 3 attempts."}
    bare = World()
    bare.store.apply("job-1", Change({"attempts": 3}))
    assert bare.claim().change.job["error"]["code"] == "attempts_exhausted"  # type: ignore[union-attr]
    late = World()
    late.clock.advance(3601)
    claim = late.claim()
    assert claim.outcome is ClaimOutcome.EXPIRED
    assert claim.change is not None and claim.change.job["error"]["code"] == "deadline_exceeded"


def test_retryable_failure_releases_with_backoff_then_gives_up() -> None:
    """A retryable failure goes back to pending with the policy's backoff (no claim before
    it, no attempt spent by waiting); the last attempt's failure fails the job."""
    w = World(kind="model")
    w.claim()
    w.do(lambda j: lifecycle.checkpoint(j, worker_id="w1", now=w.clock.now(), policy=POLICY,
                                        provider="p", task_id="t"))
    error = RetryableError("Busy.", code="provider_busy", retry_after=25)
    change, released = lifecycle.retry_or_fail(w.job, worker_id="w1", now=w.clock.now(),
                                               policy=POLICY, error=error, forget_task=True)
    w.store.apply("job-1", change)
    job = w.job
    assert released and (job.status, job.stage) == (JobStatus.PENDING, "retrying")
    assert job.error == {"code": "provider_busy", "message": "Busy.", "retryable": True}
    assert job.server.not_before == w.clock.now() + dt.timedelta(seconds=25)  # Retry-After wins
    assert job.server.provider_task_id is None and job.server.lease_owner is None
    assert w.claim("w2", "t2").outcome is ClaimOutcome.NOT_YET
    w.clock.advance(25)
    assert w.claim("w2", "t2").outcome is ClaimOutcome.CLAIMED
    w.store.apply("job-1", Change({"attempts": 3}))
    change, released = lifecycle.retry_or_fail(w.job, worker_id="w2", now=w.clock.now(),
                                               policy=POLICY, error=error)
    assert not released and change.job["status"] == "failed"
    assert change.job["error"]["message"] == "Busy. Gave up after 3 attempts."


def test_policy_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff=10, backoff_coefficient=2, max_backoff=35)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]
    assert policy.backoff(1, retry_after=50) == 50 and policy.exhausted(3)


@pytest.mark.parametrize("bad", [dict(max_attempts=0), dict(initial_backoff=-1),
                                 dict(backoff_coefficient=0.5), dict(lease_seconds=0)])
def test_policy_refuses_nonsense(bad: dict[str, Any]) -> None:
    from kiln.core.errors import ConfigError

    with pytest.raises(ConfigError):
        RetryPolicy(**bad)


def test_progress_never_goes_backwards_and_a_heartbeat_touches_only_server_state() -> None:
    """Progress only moves forward; a heartbeat with nothing new writes no public field
    (no listener wakes), only the lease."""
    w = World()
    w.claim()
    writes = w.store.public_writes["job-1"]
    w.do(lambda j: lifecycle.report_progress(j, worker_id="w1", now=w.clock.now(), policy=POLICY,
                                             progress=40, stage="generating"))
    w.do(lambda j: lifecycle.report_progress(j, worker_id="w1", now=w.clock.now(), policy=POLICY,
                                             progress=30, stage="generating"))
    assert (w.job.progress, w.job.stage) == (40, "generating")
    assert w.store.public_writes["job-1"] == writes + 1
    w.clock.advance(30)
    w.do(lambda j: lifecycle.report_progress(j, worker_id="w1", now=w.clock.now(), policy=POLICY))
    assert w.store.public_writes["job-1"] == writes + 1
    assert w.job.server.lease_expires_at == w.clock.now() + dt.timedelta(seconds=60)


def test_only_the_lease_holder_may_write() -> None:
    """Another worker, a canceled job or a vanished job: the write is refused."""
    w = World()
    w.claim()
    with pytest.raises(LeaseLostError):
        lifecycle.report_progress(w.job, worker_id="w2", now=w.clock.now(), policy=POLICY)
    with pytest.raises(LeaseLostError):
        lifecycle.park(None, worker_id="w1", now=w.clock.now(), delay=5)
    w.do(lifecycle.cancel)
    with pytest.raises(CanceledError):
        lifecycle.complete(w.job, worker_id="w1", result={})


def test_endings_claim_the_notification_and_record_provenance() -> None:
    """Completing and failing both claim the one notification in the same write."""
    w = World()
    w.claim()
    w.do(lambda j: lifecycle.complete(j, worker_id="w1", result={"path": "p"},
                                      provenance={"model": "m" * 2_000_000, "credits": 5}))
    job = w.job
    assert (job.status, job.progress, job.result) == (JobStatus.COMPLETED, 100, {"path": "p"})
    assert job.server.notify == {"state": "claimed", "type": "generation_completed"}
    # (a provider's megabyte of text would fail the write: Firestore takes 1 MiB a document)
    assert w.store.docs["job-1"]["provenance"] == {"model": "m" * 200, "credits": 5}
    with pytest.raises(TransitionError):
        lifecycle.fail(job, code="x", message="y")
    with pytest.raises(TransitionError):
        lifecycle.fail(None, code="x", message="y")
    other = World()
    other.do(lambda j: lifecycle.fail(j, code="bad", message="Bad."))
    assert other.job.server.notify == {"state": "claimed", "type": "generation_failed"}


def test_cancel_is_idempotent_and_refuses_finished_jobs() -> None:
    w = World()
    assert w.do(lifecycle.cancel) is not None
    assert w.job.status is JobStatus.CANCELED
    assert lifecycle.cancel(w.job) is None
    done = World()
    done.do(lambda j: lifecycle.fail(j, code="c", message="m"))
    with pytest.raises(TransitionError):
        lifecycle.cancel(done.job)
    with pytest.raises(TransitionError):
        lifecycle.cancel(None)


def test_retry_restarts_a_failed_job_only() -> None:
    """A failed job restarts from scratch (attempts, deadline, notification); a pending one
    is left alone; a completed one cannot be retried."""
    w = World()
    w.claim()
    w.do(lambda j: lifecycle.fail(j, code="c", message="m", worker_id="w1"))
    w.clock.advance(100)
    w.do(lambda j: lifecycle.retry(j, now=w.clock.now(), policy=POLICY))
    job = w.job
    assert (job.status, job.attempts, job.error, job.server.notify) == (
        JobStatus.PENDING, 0, None, None)
    assert job.server.retries == 1
    assert job.server.deadline_at == w.clock.now() + dt.timedelta(seconds=3600)
    assert lifecycle.retry(job, now=w.clock.now(), policy=POLICY) is None
    with pytest.raises(TransitionError):
        lifecycle.retry(None, now=w.clock.now(), policy=POLICY)
    w.claim()
    w.do(lambda j: lifecycle.complete(j, worker_id="w1", result={}))
    with pytest.raises(TransitionError):
        lifecycle.retry(w.job, now=w.clock.now(), policy=POLICY)


def park(w: World, worker: str = "w1", delay: float = 5.0, **kw: Any) -> lifecycle.Check:
    change, check = lifecycle.park(w.job, worker_id=worker, now=w.clock.now(), delay=delay, **kw)
    w.store.apply("job-1", change)
    return check


def test_park_gives_up_the_lease_and_only_the_live_check_continues_the_attempt() -> None:
    """A parked job holds no lease; its live check claims it without counting an attempt
    or writing anything a listener sees; other deliveries of it are acked."""
    w = World(kind="model")
    w.claim()
    w.do(lambda j: lifecycle.checkpoint(j, worker_id="w1", now=w.clock.now(), policy=POLICY,
                                        provider="p", task_id="t"))
    writes = w.store.public_writes["job-1"]
    check = park(w)
    assert check == lifecycle.Check(1, w.clock.now() + dt.timedelta(seconds=5))
    assert w.job.server.waiting and w.job.server.lease_owner is None
    assert w.store.public_writes["job-1"] == writes  # nothing moved: no public write
    w.store.apply("job-1", Change({"attempts": 3}))  # even the last attempt continues
    assert w.claim("w2", "t2").outcome is ClaimOutcome.WAITING  # a plain message
    stale = lifecycle.claim(w.job, worker_id="w2", now=w.clock.now(), policy=POLICY,
                            claim_token="t2", check=0)
    assert stale.outcome is ClaimOutcome.STALE
    live = lifecycle.claim(w.job, worker_id="w2", now=w.clock.now(), policy=POLICY,
                           claim_token="t2", check=1)
    assert live.outcome is ClaimOutcome.CLAIMED and live.resume_task_id == "t"
    assert live.change is not None and not live.change.job
    w.store.apply("job-1", live.change)
    assert (w.job.attempts, w.job.server.lease_owner, w.job.server.waiting) == (3, "w2", False)
    assert park(w, "w2", 7.5, progress=40, stage="meshing").number == 2
    assert (w.job.progress, w.job.stage, w.job.server.checks) == (40, "meshing", 2)
    assert w.store.public_writes["job-1"] == writes + 2  # the attempts edit, the progress


def test_once_its_live_check_is_overdue_any_check_runs_a_waiting_job() -> None:
    """Behind a push backlog longer than the sweeper's repair interval every repaired check
    would arrive after the next repair: a late copy of an older check runs the job once
    its live check is overdue (the lease decides between copies); before that it is
    stale."""
    w = World(kind="model")
    w.claim()
    w.do(lambda j: lifecycle.checkpoint(j, worker_id="w1", now=w.clock.now(), policy=POLICY,
                                        provider="p", task_id="t"))
    park(w)  # check 1, due in 5 s
    w.do(lambda j: lifecycle.recheck(j, now=w.clock.now())[0])  # check 2, due now
    early = lifecycle.claim(w.job, worker_id="w2", now=w.clock.now() - dt.timedelta(seconds=1),
                            policy=POLICY, claim_token="t2", check=1)
    assert early.outcome is ClaimOutcome.STALE
    late = lifecycle.claim(w.job, worker_id="w2", now=w.clock.now(), policy=POLICY,
                           claim_token="t2", check=1)
    assert late.outcome is ClaimOutcome.CLAIMED and late.resume_task_id == "t"
    w.store.apply("job-1", late.change)
    copy = lifecycle.claim(w.job, worker_id="w3", now=w.clock.now(), policy=POLICY,
                           claim_token="t3", check=2)
    assert copy.outcome is ClaimOutcome.BUSY  # the live check's own copy, too late


def test_wake_and_recheck() -> None:
    """A wake makes a new live check due now (once: a due check is not doubled); a held job
    is marked so its next park is immediate; ended and pending jobs need nothing."""
    w = World(kind="model")
    assert lifecycle.wake(w.job, now=w.clock.now()) == (None, None)  # pending
    w.claim()
    change, check = lifecycle.wake(w.job, now=w.clock.now())
    assert check is None and change is not None and change.server == {"wake": True}
    w.store.apply("job-1", change)
    assert lifecycle.wake(w.job, now=w.clock.now()) == (None, None)  # marked already
    assert park(w, delay=30).at == w.clock.now()  # woken while held: at once
    assert not w.job.server.wake
    assert lifecycle.wake(w.job, now=w.clock.now()) == (None, None)  # a due check exists
    w.claim("w1", "t9")  # (a plain message: waiting)
    live = lifecycle.claim(w.job, worker_id="w1", now=w.clock.now(), policy=POLICY,
                           claim_token="t9", check=1)
    assert live.change is not None
    w.store.apply("job-1", live.change)
    park(w, delay=30)
    change, check = lifecycle.wake(w.job, now=w.clock.now())
    assert check == lifecycle.Check(3, w.clock.now()) and change is not None
    w.store.apply("job-1", change)
    change, check = lifecycle.recheck(w.job, now=w.clock.now())
    assert check is not None and check.number == 4
    w.do(lifecycle.cancel)
    assert lifecycle.wake(w.job, now=w.clock.now()) == (None, None)
    assert lifecycle.recheck(w.job, now=w.clock.now()) == (None, None)
    assert lifecycle.wake(None, now=w.clock.now()) == (None, None)


def test_poll_cadence() -> None:
    cadence = PollCadence(first=2, factor=2, max=10)
    assert [cadence.delay(n) for n in range(5)] == [2, 4, 8, 10, 10]
    with pytest.raises(ConfigError):
        PollCadence(first=0)
    with pytest.raises(ConfigError):
        PollCadence(first=5, max=1)


def test_sweep_actions() -> None:
    """Leave fresh, leased, backing-off and recently re-published jobs; re-publish stale
    pending jobs, expired leases and ended backoffs; expire what is past its deadline."""
    stale = 60.0
    w = World()
    act = lambda: lifecycle.sweep_action(w.job, now=w.clock.now(), stale_after=stale)  # noqa: E731
    assert act() is SweepAction.LEAVE
    w.clock.advance(61)
    assert act() is SweepAction.REPUBLISH
    w.store.apply("job-1", lifecycle.republished(w.clock.now()))
    assert act() is SweepAction.LEAVE
    w.clock.advance(61)
    w.claim()
    assert act() is SweepAction.LEAVE
    w.clock.advance(61)
    assert act() is SweepAction.REPUBLISH  # the lease expired
    w.claim("w2", "t2")
    change, _ = lifecycle.retry_or_fail(w.job, worker_id="w2", now=w.clock.now(), policy=POLICY,
                                        error=RetryableError("x"))
    w.store.apply("job-1", change)
    assert act() is SweepAction.LEAVE  # in backoff (20 s for attempt 2)
    w.clock.advance(21)
    assert act() is SweepAction.REPUBLISH
    w.clock.advance(3600)
    assert act() is SweepAction.EXPIRE
    assert lifecycle.expire(w.job, now=w.clock.now()) is not None
    w.do(lambda j: lifecycle.expire(j, now=w.clock.now()))
    assert act() is SweepAction.LEAVE and w.job.error["code"] == "deadline_exceeded"  # type: ignore[index]
    assert lifecycle.expire(w.job, now=w.clock.now()) is None


def test_sweep_rechecks_a_waiting_job_only_when_its_check_is_overdue() -> None:
    w = World(kind="model")
    act = lambda: lifecycle.sweep_action(w.job, now=w.clock.now(), stale_after=60)  # noqa: E731
    w.claim()
    park(w, delay=30)
    assert act() is SweepAction.LEAVE
    w.clock.advance(89)
    assert act() is SweepAction.LEAVE  # due 59 s ago: within the grace
    w.clock.advance(2)
    assert act() is SweepAction.RECHECK
    w.clock.advance(3600)
    assert act() is SweepAction.EXPIRE


def test_bookkeeping_changes_touch_only_server_state() -> None:
    """Notification reports, remote cancels and channel state never wake a listener."""
    w = World(kind="model", telegram={"chatId": 5})
    writes = w.store.public_writes["job-1"]
    for change in (lifecycle.notified("sent", {"push": {"sent": 1}}), lifecycle.remote_canceled(),
                   lifecycle.channel_state("telegram", {"statusMessageId": 9})):
        assert not change.job
        w.store.apply("job-1", change)
    assert w.store.public_writes["job-1"] == writes
    job = w.job
    assert job.server.notify is not None and job.server.notify["state"] == "sent"
    assert job.server.remote_canceled and job.server.telegram == {"chatId": 5, "statusMessageId": 9}


def test_remote_task_left_only_for_a_canceled_job_with_an_uncanceled_task() -> None:
    w = World(kind="model")
    w.claim()
    w.do(lambda j: lifecycle.checkpoint(j, worker_id="w1", now=w.clock.now(), policy=POLICY,
                                        provider="p", task_id="t"))
    assert not lifecycle.remote_task_left(w.job)
    w.do(lifecycle.cancel)
    assert lifecycle.remote_task_left(w.job)
    w.store.apply("job-1", lifecycle.remote_canceled())
    assert not lifecycle.remote_task_left(w.job)


def test_public_view_is_the_contract() -> None:
    w = World()
    view = w.job.public_view()
    assert set(view) == {"jobId", "uid", "channel", "kind", "prompt", "options", "status",
                         "stage", "progress", "attempts", "error", "result", "queueReason",
                         "queuePosition", "createdAt", "updatedAt", "startedAt", "completedAt"}
    assert view["createdAt"] == w.clock.now().isoformat() and view["startedAt"] is None
