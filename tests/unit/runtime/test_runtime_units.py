"""The progress reporter, the sweeper, cancel/retry, notification and acceptance on fakes."""

from __future__ import annotations

from typing import Any

import pytest
from rig import Rig, build_rig

from kiln.core import lifecycle
from kiln.core.errors import CanceledError, ConflictError, LeaseLostError, RetryableError, TransitionError
from kiln.core.job import Change, JobStatus
from kiln.core.requests import parse_job_request
from kiln.runtime import actions, notify
from kiln.runtime.accept import accept_job
from kiln.runtime.progress import STOP_CHECK_SECONDS, ProgressReporter
from kiln.runtime.sweeper import sweep


def claimed(rig: Rig, kind: str = "image", worker: str = "w1", uid: str = "alice") -> str:
    job_id = rig.submit(kind=kind, uid=uid)
    rig.store.transact(job_id, lambda job: (lifecycle.claim(
        job, worker_id=worker, now=rig.clock.now(), policy=rig.services.policy,
        claim_token="t").change, None))
    return job_id


def reporter(rig: Rig, job_id: str, worker: str = "w1", **kw: object) -> ProgressReporter:
    return ProgressReporter(rig.store, job_id, worker, policy=rig.services.policy, clock=rig.clock,
                            interval=1.0, **kw)  # type: ignore[arg-type]


# --- progress ---------------------------------------------------------------------------


def test_progress_writes_at_most_once_per_interval_and_only_when_moved(rig: Rig) -> None:
    job_id = claimed(rig)
    heard: list[tuple[int, str]] = []
    r = reporter(rig, job_id, on_write=lambda p, s: heard.append((p, s)))
    writes = rig.store.public_writes[job_id]
    r.update(10, "generating")  # within the interval: noted, not written
    assert rig.store.public_writes[job_id] == writes and r.progress == 10
    rig.clock.advance(1.0)
    r.update(20)
    assert rig.store.public_writes[job_id] == writes + 1 and heard == [(20, "generating")]
    rig.clock.advance(1.0)
    r.update(5)  # never backwards: nothing moved, nothing written
    assert rig.store.public_writes[job_id] == writes + 1 and r.progress == 20
    assert rig.job(job_id).progress == 20 and r.writes == 1


def test_a_quiet_generator_still_renews_its_lease_without_waking_listeners(rig: Rig) -> None:
    job_id = claimed(rig)
    r = reporter(rig, job_id)
    writes = rig.store.public_writes[job_id]
    rig.clock.advance(rig.services.policy.lease_seconds / 3)
    assert not r.should_stop()
    assert rig.store.public_writes[job_id] == writes
    assert rig.job(job_id).server.lease_expires_at == rig.services.policy.lease_until(rig.clock.now())


def test_should_stop_notices_a_cancel_and_a_lost_lease_every_few_seconds(rig: Rig) -> None:
    job_id = claimed(rig)
    r = reporter(rig, job_id)
    rig.store.transact(job_id, lambda job: (lifecycle.cancel(job), None))
    assert not r.should_stop()  # not checked again yet
    rig.clock.advance(STOP_CHECK_SECONDS)
    assert r.should_stop() and isinstance(r.stop_reason, CanceledError)
    with pytest.raises(CanceledError):
        r.raise_if_stopped()
    other = claimed(rig)
    r2 = reporter(rig, other)
    rig.store.apply(other, Change({}, {"leaseOwner": "w9"}))
    rig.clock.advance(STOP_CHECK_SECONDS)
    assert r2.should_stop() and isinstance(r2.stop_reason, LeaseLostError)


def test_a_write_that_finds_the_job_canceled_stops_the_run(rig: Rig) -> None:
    job_id = claimed(rig)
    r = reporter(rig, job_id)
    rig.store.transact(job_id, lambda job: (lifecycle.cancel(job), None))
    rig.clock.advance(1.0)
    with pytest.raises(CanceledError):
        r.update(50, "generating")
    assert r.should_stop()
    third = claimed(rig)
    r3 = reporter(rig, third)
    rig.store.apply(third, Change({}, {"leaseOwner": "w9"}))
    rig.clock.advance(rig.services.policy.lease_seconds / 3)
    assert r3.should_stop() and isinstance(r3.stop_reason, LeaseLostError)


# --- sweeper ----------------------------------------------------------------------------


def test_the_sweeper_republishes_lost_jobs_once_and_expires_late_ones(rig: Rig) -> None:
    """A pending job whose publish was lost and a running job whose worker died are
    re-published (once per stale period); a job past its deadline fails and notifies."""
    lost = rig.submit()
    dead = claimed(rig, worker="crashed")
    rig.queue.published.clear()
    rig.clock.advance(61)
    report = sweep(rig.services)
    assert report == {"scanned": 2, "republished_pending": 1, "republished_processing": 1}
    assert sorted(rig.queue.ids()) == sorted([lost, dead])
    assert sweep(rig.services) == {"scanned": 2}  # re-published recently: left alone
    rig.clock.advance(3600)
    rig.devices.register("alice", "phone", fid="f")
    report = sweep(rig.services)
    assert report == {"scanned": 2, "failed_expired": 2}
    assert {rig.job(j).error["code"] for j in (lost, dead)} == {"deadline_exceeded"}  # type: ignore[index]
    assert [p.data["type"] for p in rig.push.sent] == ["generation_failed"] * 2
    assert sweep(rig.services) == {}


def test_a_sweep_that_cannot_publish_counts_it_and_tries_again_next_time(rig: Rig) -> None:
    job_id = rig.submit()
    rig.clock.advance(61)
    rig.queue.fail_next = 1
    assert sweep(rig.services)["publish_errors"] == 1
    assert rig.job(job_id).server.republished_at is None
    assert sweep(rig.services)["republished_pending"] == 1


def test_a_job_that_cannot_be_swept_never_stops_the_pass(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given two stale pending jobs, one whose bookkeeping write fails (a document Kiln did
    not write), when the sweeper passes, then the other is still re-published and recorded,
    and the failure is counted."""
    broken, fine = rig.submit(), rig.submit()
    rig.queue.published.clear()
    rig.clock.advance(61)
    apply = rig.store.apply

    def failing(job_id: str, change: Any) -> None:
        if job_id == broken:
            raise KeyError(job_id)  # as Firestore's NotFound on update
        apply(job_id, change)

    monkeypatch.setattr(rig.store, "apply", failing)
    report = sweep(rig.services)
    assert report["job_errors"] == 1 and report["republished_pending"] == 2
    assert rig.job(fine).server.republished_at is not None
    assert rig.job(broken).server.republished_at is None


def test_a_scan_that_fails_never_stops_the_pass(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the store failing the scan of processing jobs (a blip, an index still
    building), when the sweeper passes, then the pending scan and the later steps still
    run (a stale pending job is re-published) and the failure is counted."""
    from kiln.core.errors import RetryableError

    job_id = rig.submit()
    rig.queue.published.clear()
    rig.clock.advance(61)
    find = rig.store.find

    def failing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("status") == "processing":
            raise RetryableError("The job store is unavailable.", code="store_unavailable")
        return find(*args, **kwargs)

    monkeypatch.setattr(rig.store, "find", failing)
    report = sweep(rig.services)
    assert report["job_errors"] == 1 and report["republished_pending"] == 1
    assert rig.job(job_id).server.republished_at is not None


# --- cancel / retry ---------------------------------------------------------------------


def test_cancel_is_idempotent_and_wakes_a_worker_only_for_an_orphaned_task(rig: Rig) -> None:
    job_id = rig.submit()
    rig.queue.published.clear()
    first = actions.cancel(rig.services, job_id, by="owner")
    again = actions.cancel(rig.services, job_id, by="owner")
    assert (first.changed, again.changed, first.status) == (True, False, JobStatus.CANCELED)
    assert rig.queue.published == []
    orphan = claimed(rig, kind="model")
    rig.store.transact(orphan, lambda job: (lifecycle.checkpoint(
        job, worker_id="w1", now=rig.clock.now(), policy=rig.services.policy, provider="p",
        task_id="t"), None))
    rig.clock.advance(31)  # its worker died: the lease ran out
    rig.queue.published.clear()
    actions.cancel(rig.services, orphan, by="owner")
    assert rig.queue.published == [(orphan, "cancel")]
    held = claimed(rig, kind="model")
    rig.queue.published.clear()
    actions.cancel(rig.services, held, by="owner")  # a live holder notices by itself
    assert rig.queue.published == []


def test_retry_runs_a_failed_job_again_and_refuses_a_completed_one(rig: Rig) -> None:
    job_id = rig.submit()
    rig.store.transact(job_id, lambda job: (lifecycle.fail(job, code="c", message="m"), None))
    rig.queue.published.clear()
    outcome = actions.retry(rig.services, job_id, by="owner")
    assert (outcome.changed, outcome.status) == (True, JobStatus.PENDING)
    # Back through the fair queue: its places were free, so the queue's pass started it.
    assert rig.queue.published == [(job_id, "start")]
    again = actions.retry(rig.services, job_id, by="owner")
    assert (again.changed, again.status) == (False, JobStatus.PENDING)
    rig.queue.fail_next = 1
    rig.store.transact(job_id, lambda job: (lifecycle.fail(job, code="c", message="m"), None))
    assert actions.retry(rig.services, job_id, by="cli").changed  # the sweeper re-publishes
    canceled = rig.submit(prompt="other")
    actions.cancel(rig.services, canceled, by="owner")
    with pytest.raises(TransitionError):
        actions.retry(rig.services, canceled, by="owner")
    with pytest.raises(TransitionError):
        actions.cancel(rig.services, "nosuchjob", by="owner")


# --- notification -----------------------------------------------------------------------


def test_dead_devices_are_forgotten_and_a_failing_push_is_recorded(rig: Rig) -> None:
    rig.devices.register("alice", "old", token="t-old")
    rig.devices.register("alice", "new", fid="f-new")
    rig.devices.register("alice", "empty")  # no address: skipped
    rig.push.dead.add("old")
    job_id = claimed(rig)
    rig.store.transact(job_id, lambda job: (lifecycle.complete(job, worker_id="w1", result={
        "path": "p", "downloadUrl": "https://x/p.png"}), None))
    report = notify.deliver(rig.services, job_id)
    assert report is not None and report["push"] == {"sent": 1, "failed": 1, "removed": 1}
    assert [d.id for d in rig.devices.devices("alice")] == ["new"]
    assert rig.push.sent[0].image == "https://x/p.png"

    def boom(*_args: object, **_kw: object) -> object:
        raise RuntimeError("fcm down")

    rig.push.send = boom  # type: ignore[method-assign]
    assert notify.deliver(rig.services, job_id) is None  # sent already: not sent again
    other = claimed(rig)
    rig.store.transact(other, lambda job: (lifecycle.complete(job, worker_id="w1", result={
        "path": "p", "downloadUrl": "https://x/p.png"}), None))
    report = notify.deliver(rig.services, other)
    assert report is not None and report["error"] == "RuntimeError"
    assert rig.job(other).server.notify["state"] == "error"  # type: ignore[index]
    assert notify.deliver(rig.services, "nosuchjob") is None


def test_a_phone_signed_in_as_someone_else_gets_none_of_the_first_users_pushes(
        rig: Rig) -> None:
    """Given alice's phone, later signed in as bob without alice's registration deleted,
    when alice's job completes, then no push goes to that phone (bob's now), and bob's
    job's push does."""
    rig.devices.register("alice", "phone", fid="f-phone", updatedAt=1_000.0)
    rig.devices.register("bob", "phone", fid="f-phone", updatedAt=2_000.0)
    for uid in ("alice", "bob"):
        job_id = claimed(rig, uid=uid)
        rig.store.transact(job_id, lambda job: (lifecycle.complete(job, worker_id="w1", result={
            "path": "p", "downloadUrl": "https://x/p.png"}), None))
        report = notify.deliver(rig.services, job_id)
        assert report is not None
        assert report["push"]["sent"] == (uid == "bob"), (uid, report)
    assert rig.devices.devices("alice") == [] and len(rig.push.sent) == 1


# --- acceptance -------------------------------------------------------------------------


def test_acceptance_is_idempotent_per_key_and_survives_a_lost_publish(rig: Rig) -> None:
    request = parse_job_request({"kind": "image", "prompt": "a cat"})
    rig.queue.fail_next = 1
    first = accept_job(rig.services, uid="u", channel="app", request=request, idempotency_key="k")
    assert first.created and rig.queue.published == []  # accepted; the sweeper re-publishes
    replay = accept_job(rig.services, uid="u", channel="app", request=request, idempotency_key="k")
    assert (replay.job_id, replay.created) == (first.job_id, False)
    with pytest.raises(ConflictError):
        accept_job(rig.services, uid="u", channel="app", idempotency_key="k",
                   request=parse_job_request({"kind": "image", "prompt": "a dog"}))
    rig.store.unavailable = True
    with pytest.raises(RetryableError):
        accept_job(rig.services, uid="u", channel="app", request=request)


def test_a_rig_is_independent_of_another() -> None:
    """Two compositions share nothing (no module state, no environment)."""
    a, b = build_rig(), build_rig()
    job_id = a.submit()
    assert b.store.get(job_id) is None
