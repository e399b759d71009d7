"""An end notification is sent at most once: one guard (``claimed`` → ``sending``) for the
worker and the sweeper, a bookkeeping write that fails after the send sends nothing
again; lost notifications too old are abandoned; a failing repair never stops the rest
of the sweep; the places of a job are given back before its late send; the app push goes
to app jobs only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from rig import Killed, Rig, build_rig

from kiln.core.errors import RetryableError
from kiln.core.job import Change, Job, JobStatus
from kiln.runtime import notify
from kiln.runtime.sweeper import UNSENT_GRACE_SECONDS, UNSENT_MAX_AGE_SECONDS, sweep
from kiln.runtime.worker import RunOutcome, run_job


def ended_unsent(rig: Rig, revive: Callable[[], None], **submit: Any) -> str:
    """A job that completed, its worker killed before the send (notification claimed)."""
    job_id = rig.submit(**submit)
    with pytest.raises(Killed):
        run_job(job_id, rig.services)
    revive()
    assert rig.job(job_id).server.notify["state"] == "claimed"  # type: ignore[index]
    return job_id


def notify_state(rig: Rig, job_id: str) -> str:
    return str((rig.job(job_id).server.notify or {}).get("state"))


def fail_record_once(rig: Rig) -> list[int]:
    """The next write of what a notification did (``notify.state`` sent / retrying /
    error) fails as a store outage; the list counts the failures."""
    real = rig.store.apply
    failed: list[int] = []

    def apply(job_id: str, change: Change) -> None:
        state = change.server.get("notify.state")
        if state in ("sent", "retrying", "error") and not failed:
            failed.append(1)
            raise RetryableError("Firestore did not answer.", code="store_unavailable")
        real(job_id, change)

    rig.store.apply = apply  # type: ignore[method-assign]
    return failed


# --- 2. one guard; a failed record after the send sends nothing again -------------------

@pytest.mark.parametrize("channel", ["app", "telegram"])
def test_a_record_that_fails_after_the_send_sends_nothing_again(channel: str) -> None:
    """Given a completion whose notification was sent but whose record then failed,
    the job is still completed (not released for a retry) and, once the sweeper ran past
    the grace, exactly one push (app) or one chat message (telegram) was sent."""
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit(channel=channel)
    failed = fail_record_once(rig)
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert failed == [1] and notify_state(rig, job_id) == "sending"
    job = rig.job(job_id)
    assert job.status is JobStatus.COMPLETED and rig.slots.holders("user:alice") == []
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    assert "renotified" not in sweep(rig.services)
    rig.clock.advance(UNSENT_MAX_AGE_SECONDS)
    assert "notify_abandoned" not in sweep(rig.services)
    sent = (len(rig.push.sent), rig.channel.finished)
    assert sent == ((1, []) if channel == "app" else (0, [job_id]))


def test_a_late_worker_sends_nothing_the_sweeper_already_sent(
        killed_after_ending: Callable[[], None]) -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = ended_unsent(rig, killed_after_ending)
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    assert sweep(rig.services)["renotified"] == 1
    assert notify.deliver(rig.services, job_id) is None  # the worker's send, 5 minutes late
    assert len(rig.push.sent) == 1 and notify_state(rig, job_id) == "sent"


def test_a_take_whose_answer_was_lost_still_sends_once() -> None:
    """The claimed → sending write lands but answers with a timeout: the job read again
    carries this call's token, so it sends (nobody else would: it is no longer claimed)."""
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit()
    real = rig.store.transact
    lost: list[int] = []

    def transact(job_id: str, decide: Callable[[Job | None], Any], *,
                 seen: Job | None = None) -> Any:
        value = real(job_id, decide, seen=seen)
        if not lost and notify_state(rig, job_id) == "sending":
            lost.append(1)
            raise RetryableError("Firestore did not answer.", code="store_unavailable")
        return value

    rig.store.transact = transact  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert lost == [1] and len(rig.push.sent) == 1 and notify_state(rig, job_id) == "sent"


# --- 3. too old to send ------------------------------------------------------------------

def test_a_lost_notification_too_old_to_send_is_abandoned(
        killed_after_ending: Callable[[], None]) -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = ended_unsent(rig, killed_after_ending)
    rig.clock.advance(UNSENT_MAX_AGE_SECONDS + 1)  # e.g. left claimed by older code
    assert sweep(rig.services) == {"notify_abandoned": 1}
    assert rig.push.sent == [] and notify_state(rig, job_id) == "abandoned"
    assert rig.store.unnotified(10) == []  # it left the window
    assert rig.slots.holders("user:alice") == []  # and gave its places back
    assert sweep(rig.services) == {}


# --- 1. a failing step never stops the sweep ---------------------------------------------

def test_a_repair_that_fails_does_not_stop_the_rest_of_the_sweep(
        killed_after_ending: Callable[[], None]) -> None:
    """Given a job that waits for the place of an ended job, and a chat message deferred,
    when the query of lost notifications fails as Firestore does while its index builds
    (not a retryable error), then the fair queue's pass still starts the waiting job and
    the deferred message is still redelivered."""
    rig = build_rig(plans="free:daily=100,running=1")
    first = ended_unsent(rig, killed_after_ending)
    waiting = rig.submit()
    assert rig.job(waiting).queue_reason is not None
    rig.channel.deferred.append(first)

    def building(limit: int) -> list[Job]:
        raise gexc.FailedPrecondition("The query requires an index. That index is "
                                      "currently building")

    rig.store.unnotified = building  # type: ignore[method-assign]
    report = sweep(rig.services)
    assert report["job_errors"] == 1 and report["started"] == 1
    assert report["redelivered"] == 1
    assert rig.job(waiting).queue_reason is None


def test_a_queue_pass_that_fails_does_not_stop_the_redelivery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rig = build_rig()
    job_id = rig.submit()
    rig.channel.deferred.append(job_id)

    def broken(*_args: Any, **_kw: Any) -> int:
        raise KeyError("bug")

    monkeypatch.setattr(rig.store, "reindex_waiting", broken)
    report = sweep(rig.services)
    assert report["job_errors"] == 1 and report["redelivered"] == 1


# --- 4. places given back before the late send -------------------------------------------

def holders_at_send(rig: Rig) -> dict[str, list[str]]:
    """Job id → the holders of alice's place when its push was sent."""
    seen: dict[str, list[str]] = {}
    real = rig.push.send

    def send(devices: Any, title: str, body: str, data: dict[str, str], **kw: Any) -> Any:
        seen[data["jobId"]] = rig.slots.holders("user:alice")
        return real(devices, title, body, data, **kw)

    rig.push.send = send  # type: ignore[method-assign]
    return seen


def test_the_sweeper_gives_a_lost_notifications_places_back_before_it_sends(
        killed_after_ending: Callable[[], None]) -> None:
    """A send takes seconds; a retry of the job meanwhile takes places under the same job
    id, which a release after the send would delete."""
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = ended_unsent(rig, killed_after_ending)
    assert rig.slots.holders("user:alice") == [job_id]
    seen = holders_at_send(rig)
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    assert sweep(rig.services)["renotified"] == 1
    assert seen == {job_id: []}


def test_the_sweeper_gives_an_expired_jobs_places_back_before_it_sends() -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit()
    assert rig.slots.holders("user:alice") == [job_id]
    seen = holders_at_send(rig)
    rig.clock.advance(rig.services.settings.job_max_age_seconds + 1)
    assert sweep(rig.services)["failed_expired"] == 1
    assert seen == {job_id: []}


# --- 7. the app push goes to app jobs only -----------------------------------------------

@pytest.mark.parametrize(("uid", "channel"), [("api:acme", "api"),
                                              ("telegram:42", "telegram")])
def test_only_an_app_job_sends_a_push(uid: str, channel: str) -> None:
    """A device stored under another channel's reserved uid gets nothing (an API tenant's
    job would otherwise push its prompt to it)."""
    rig = build_rig()
    rig.devices.register(uid, "stranger", fid="f")
    job_id = rig.submit(uid=uid, channel=channel)
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert rig.push.sent == [] and notify_state(rig, job_id) == "sent"
    app = rig.submit(uid="alice")
    rig.devices.register("alice", "phone", fid="f")
    assert run_job(app, rig.services) is RunOutcome.COMPLETED
    assert [p.data["jobId"] for p in rig.push.sent] == [app]


def test_a_retry_during_the_failed_runs_push_keeps_the_new_runs_push(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an app job that failed and is sending its push (slow: FCM asks it to back
    off), when the user retries and the new run completes but its worker dies before it
    takes that run's push, then the first run's record does not overwrite the new run's
    claim: the sweeper sends the completion push."""
    from rig import kill_at

    from kiln.core.errors import PermanentError
    from kiln.runtime import actions

    rig = build_rig()
    rig.devices.register("alice", "phone", fid="fid-1", updatedAt=1.0)
    rig.providers["image"].error = PermanentError("Refused.", code="content_refused")
    job_id = rig.submit()
    real = rig.push.send

    def slow_send(devices: Any, title: str, body: str, data: dict[str, str],
                  *, image: str | None = None) -> Any:
        if data["type"] == "generation_failed":
            rig.providers["image"].error = None
            actions.retry(rig.services, job_id, by="user")
            revive = kill_at(monkeypatch, notify, "deliver")
            with pytest.raises(Killed):
                rig.deliver_next()
            revive()
        return real(devices, title, body, data, image=image)

    monkeypatch.setattr(rig.push, "send", slow_send)
    run_job(job_id, rig.services)
    assert rig.job(job_id).status is JobStatus.COMPLETED
    assert (rig.job(job_id).server.notify or {}).get("state") == "claimed"
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert [p.data["type"] for p in rig.push.sent] == ["generation_failed",
                                                       "generation_completed"]


def test_a_device_store_blip_before_the_push_leaves_it_to_the_sweeper(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an app job whose push finds the device store unreachable (nothing sent
    yet), then the notification is given back (claimed), not recorded as an error, and
    the sweeper's pass sends the push once."""
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="fid-1", updatedAt=1.0)
    devices = rig.devices.devices
    blips = [RetryableError("The device store is unavailable.", code="store_unavailable")]

    def blipping(uid: str) -> Any:
        if blips:
            raise blips.pop()
        return devices(uid)

    monkeypatch.setattr(rig.devices, "devices", blipping)
    job_id = rig.submit()
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert rig.push.sent == [] and (rig.job(job_id).server.notify or {}).get("state") == "claimed"
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    sweep(rig.services)
    assert [p.data["type"] for p in rig.push.sent] == ["generation_completed"]


def test_the_sweeper_begins_no_lost_notification_past_its_share_of_the_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given three lost pushes each taking 30 s (a device over quota), then a pass sends
    them while a third of the sweeper's 120 s timeout has not passed (two), and the next
    pass sends the third: a pass never outlives its timeout sending, and loses none."""
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="fid-1", updatedAt=1.0)
    with monkeypatch.context() as killed:  # each worker dies before its send
        killed.setattr(notify, "deliver", lambda services, job_id: None)
        for _ in range(3):
            assert run_job(rig.submit(), rig.services) is RunOutcome.COMPLETED
    send = rig.push.send

    def slow(*args: Any, **kwargs: Any) -> Any:
        rig.clock.advance(30)
        return send(*args, **kwargs)

    monkeypatch.setattr(rig.push, "send", slow)
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    assert sweep(rig.services)["renotified"] == 2
    assert sweep(rig.services)["renotified"] == 1
    assert len(rig.push.sent) == 3
