"""The lifecycle transitions on plain job dicts: leases, attempts, notification claims."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from google.cloud.firestore import DELETE_FIELD, Increment

from kiln.core import lifecycle
from kiln.core.errors import CanceledError, LeaseLostError, TransitionError
from kiln.core.requests import parse_job_request

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def job(**changes: Any) -> dict[str, Any]:
    doc = lifecycle.new_job(uid="u", channel="app", now=NOW, max_age_seconds=3600,
                            request=parse_job_request({"kind": "image", "prompt": "a cat"}))
    server = changes.pop("_server", {})
    doc.update(changes)
    doc["_server"].update(server)
    return doc


def apply(doc: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Apply Firestore-style dotted updates (increments too) to a dict, like the server."""
    out = {**doc, "_server": dict(doc["_server"])}
    for key, value in updates.items():
        target, name = (out["_server"], key.split(".", 1)[1]) if key.startswith("_server.") else (
            out, key)
        if isinstance(value, Increment):
            target[name] = (target.get(name) or 0) + value.value
        elif value is DELETE_FIELD:
            target.pop(name, None)
        else:
            target[name] = value
    return out


def claimed(doc: dict[str, Any], worker: str = "w1", now: dt.datetime = NOW) -> dict[str, Any]:
    c = lifecycle.claim(doc, worker_id=worker, now=now, lease_seconds=60, max_attempts=3)
    assert c.outcome == "claimed" and c.updates is not None
    return apply(doc, c.updates)


def test_new_job_is_pending_with_contract_fields() -> None:
    """A new job document has every contract field, pending, progress 0, no error."""
    doc = job()
    for name in ("uid", "channel", "kind", "prompt", "options", "status", "stage", "progress",
                 "attempts", "error", "result", "createdAt", "updatedAt", "startedAt",
                 "completedAt"):
        assert name in doc
    assert (doc["status"], doc["progress"], doc["attempts"]) == ("pending", 0, 0)


def test_claim_takes_a_lease_and_counts_an_attempt() -> None:
    """Given a pending job, when claimed, then it is processing under our lease, attempt 1."""
    doc = claimed(job())
    assert doc["status"] == "processing" and doc["attempts"] == 1
    assert doc["_server"]["leaseOwner"] == "w1"
    assert lifecycle.lease_live(doc, NOW + dt.timedelta(seconds=59))
    assert not lifecycle.lease_live(doc, NOW + dt.timedelta(seconds=61))


def test_second_delivery_while_leased_is_busy_and_after_end_is_terminal() -> None:
    """A duplicate delivery during the run is 'busy'; after completion it is 'terminal'."""
    running = claimed(job())
    dup = lifecycle.claim(running, worker_id="w2", now=NOW, lease_seconds=60, max_attempts=3)
    assert dup.outcome == "busy" and dup.updates is None
    done = apply(running, lifecycle.complete(running, worker_id="w1", result={"path": "p"}))
    again = lifecycle.claim(done, worker_id="w2", now=NOW, lease_seconds=60, max_attempts=3)
    assert again.outcome == "terminal"


def test_expired_lease_is_claimed_again_and_resumes_the_provider_task() -> None:
    """A dead worker's job is claimed by another after the lease, with its task id."""
    running = claimed(job(_server={"providerTaskId": "task-1"}))
    later = NOW + dt.timedelta(seconds=120)
    c = lifecycle.claim(running, worker_id="w2", now=later, lease_seconds=60, max_attempts=3)
    assert c.outcome == "claimed" and c.resume_task_id == "task-1"


def test_out_of_attempts_and_past_deadline_are_reported() -> None:
    """Attempts used up → exhausted; deadline passed → expired (the caller fails the job)."""
    spent = job(attempts=3)
    assert lifecycle.claim(spent, worker_id="w", now=NOW, lease_seconds=60,
                           max_attempts=3).outcome == "exhausted"
    late = NOW + dt.timedelta(hours=2)
    assert lifecycle.claim(job(), worker_id="w", now=late, lease_seconds=60,
                           max_attempts=3).outcome == "expired"


def test_backoff_delays_the_next_claim_without_spending_an_attempt() -> None:
    """A released job is 'not_yet' until its backoff passes, then claimable."""
    running = claimed(job())
    released = apply(running, lifecycle.release(running, worker_id="w1", now=NOW,
                                                backoff_seconds=10, error={"code": "x"}))
    assert released["status"] == "pending" and released["attempts"] == 1
    assert lifecycle.claim(released, worker_id="w2", now=NOW + dt.timedelta(seconds=5),
                           lease_seconds=60, max_attempts=3).outcome == "not_yet"
    again = claimed(released, "w2", NOW + dt.timedelta(seconds=11))
    assert again["attempts"] == 2


def test_progress_never_goes_backwards_and_renews_the_lease() -> None:
    """Reporting 40 after 60 keeps 60; the lease moves forward."""
    running = apply(claimed(job()), {"progress": 60})
    later = NOW + dt.timedelta(seconds=30)
    updates = lifecycle.report_progress(running, worker_id="w1", now=later, lease_seconds=60,
                                        progress=40, stage="x")
    assert updates["progress"] == 60
    assert updates["_server.leaseExpiresAt"] == later + dt.timedelta(seconds=60)


def test_only_the_lease_holder_may_write() -> None:
    """Another worker's progress or completion raises LeaseLostError; cancel → CanceledError."""
    running = claimed(job())
    with pytest.raises(LeaseLostError):
        lifecycle.report_progress(running, worker_id="w2", now=NOW, lease_seconds=60)
    with pytest.raises(LeaseLostError):
        lifecycle.complete(running, worker_id="w2", result={})
    canceled = apply(running, lifecycle.cancel(running) or {})
    with pytest.raises(CanceledError):
        lifecycle.complete(canceled, worker_id="w1", result={})


def test_endings_claim_the_notification_exactly_once() -> None:
    """complete/fail set notify=claimed; a terminal job cannot be failed or completed again."""
    running = claimed(job())
    done = apply(running, lifecycle.complete(running, worker_id="w1", result={"path": "p"}))
    assert done["_server"]["notify"]["type"] == "generation_completed"
    with pytest.raises(TransitionError):
        lifecycle.fail(done, code="x", message="y")
    with pytest.raises(LeaseLostError):
        lifecycle.complete(done, worker_id="w1", result={})


def test_cancel_is_idempotent_and_refuses_finished_jobs() -> None:
    """Cancel twice → no second write; canceling a completed job → TransitionError."""
    canceled = apply(job(), lifecycle.cancel(job()) or {})
    assert canceled["status"] == "canceled"
    assert lifecycle.cancel(canceled) is None
    running = claimed(job())
    done = apply(running, lifecycle.complete(running, worker_id="w1", result={}))
    with pytest.raises(TransitionError, match="completed"):
        lifecycle.cancel(done)


def test_retry_restarts_a_failed_job_only() -> None:
    """A failed job retried is pending with attempts 0 and no error; others are refused."""
    failed = apply(job(), lifecycle.fail(job(), code="c", message="m"))
    again = apply(failed, lifecycle.retry(failed, now=NOW, max_age_seconds=60) or {})
    assert (again["status"], again["attempts"], again["error"]) == ("pending", 0, None)
    assert lifecycle.retry(again, now=NOW, max_age_seconds=60) is None
    canceled = apply(job(), lifecycle.cancel(job()) or {})
    with pytest.raises(TransitionError):
        lifecycle.retry(canceled, now=NOW, max_age_seconds=60)


def test_hand_off_keeps_the_attempt_and_the_task() -> None:
    """A hand-off releases the lease; the next claim continues without a new attempt."""
    running = claimed(job(_server={"providerTaskId": "t"}))
    handed = apply(running, lifecycle.hand_off(running, worker_id="w1"))
    c = lifecycle.claim(handed, worker_id="w2", now=NOW, lease_seconds=60, max_attempts=1)
    assert c.outcome == "claimed" and c.resume_task_id == "t"
    after = apply(handed, c.updates or {})
    assert after["attempts"] == 1 and after["_server"]["handoffs"] == 1


def test_a_retried_claim_recognises_its_own_commit() -> None:
    """The SDK re-runs a claim whose commit landed: same token → claimed, no second write."""
    c = lifecycle.claim(job(), worker_id="w1", now=NOW, lease_seconds=60, max_attempts=3,
                        claim_token="t1")
    leased = apply(job(), c.updates or {})
    again = lifecycle.claim(leased, worker_id="w1", now=NOW, lease_seconds=60, max_attempts=3,
                            claim_token="t1")
    assert again.outcome == "claimed" and again.updates is None
    other = lifecycle.claim(leased, worker_id="w1", now=NOW, lease_seconds=60, max_attempts=3,
                            claim_token="t2")
    assert other.outcome == "busy"
