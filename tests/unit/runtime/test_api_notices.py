"""An API tenant's end notices are webhook events with stable ids: sent at least once
(a sender that died, or whose emit the webhook store refused, is followed by the
sweeper's), one per run of a job (a retried job that ends again is announced again), and
a batch's ``batch.completed`` comes after its last job's own event."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rig import Killed, Rig, build_rig, kill_at
from test_batches import call, items, run_all

from kiln.core.errors import PermanentError, RetryableError
from kiln.runtime import actions, notify
from kiln.runtime.keys import create_key
from kiln.runtime.sweeper import UNSENT_GRACE_SECONDS, UNSENT_MAX_AGE_SECONDS, sweep
from kiln.runtime.worker import RunOutcome, run_job
from kiln.webhooks import model
from kiln.webhooks.channel import EMIT_PAUSES, ApiChannel
from kiln.webhooks.model import Endpoint


def with_endpoint(rig: Rig) -> Rig:
    """The tenant acme listens to every event at one endpoint (and the API channel is
    composed, as in production: the rig composes only a recording Telegram channel)."""
    rig.services.channels = {**rig.services.channels, "api": ApiChannel()}
    rig.services.webhooks.put_endpoint(Endpoint(
        model.new_endpoint_id(), "acme", "https://hooks.example/kiln", model.new_secret(), (),
        created_at=rig.clock.now()))
    return rig


def events(rig: Rig, kind: str) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in rig.services.webhooks.events.values()  # type: ignore[attr-defined]
            if e.type == kind]


def notify_state(rig: Rig, job_id: str) -> str:
    return str((rig.job(job_id).server.notify or {}).get("state"))


def webhook_store_down(rig: Rig) -> Callable[[], None]:
    """Every emit finds the webhook store unreachable (``create_event`` raises
    RetryableError) until the returned call brings it back."""
    store = rig.services.webhooks

    def down(_event: object) -> bool:
        raise RetryableError("The webhook store is unavailable.", code="store_unavailable")

    store.create_event = down  # type: ignore[method-assign]
    return lambda: vars(store).pop("create_event")  # type: ignore[no-any-return]


@pytest.fixture
def killed_while_sending(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Kill the worker after it took the claim, before the send."""
    yield kill_at(monkeypatch, notify, "send")


def test_an_api_jobs_event_whose_sender_died_is_sent_by_the_sweeper(
        killed_while_sending: Callable[[], None]) -> None:
    """Given an API job whose worker died after taking its end notice (before the send),
    then its claim is still ``claimed`` and the sweeper, past the grace, emits its
    ``job.completed`` once; a later pass sends nothing more."""
    rig = with_endpoint(build_rig())
    job_id = rig.submit(uid="api:acme", channel="api")
    with pytest.raises(Killed):
        run_job(job_id, rig.services)
    killed_while_sending()
    assert (rig.job(job_id).server.notify or {}).get("state") == "claimed"
    assert events(rig, "job.completed") == []
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert [e["data"]["jobId"] for e in events(rig, "job.completed")] == [job_id]
    sweep(rig.services)
    assert len(events(rig, "job.completed")) == 1
    assert (rig.job(job_id).server.notify or {}).get("state") == "sent"


def test_an_api_jobs_lost_event_is_still_sent_after_an_hour(
        killed_while_sending: Callable[[], None]) -> None:
    """Webhook deliveries are retried for days: an API job's lost event is not abandoned
    after the hour an app push or a chat message is."""
    rig = with_endpoint(build_rig())
    job_id = rig.submit(uid="api:acme", channel="api")
    with pytest.raises(Killed):
        run_job(job_id, rig.services)
    killed_while_sending()
    rig.clock.advance(UNSENT_MAX_AGE_SECONDS + 60)
    sweep(rig.services)
    assert len(events(rig, "job.completed")) == 1


def test_batch_completed_comes_after_its_last_jobs_own_event() -> None:
    rig = with_endpoint(build_rig(plans="free:daily=1000,running=200;pro:daily=1000,running=200",
                                  provider_capacity="200"))
    key = create_key(rig.services.keys, rig.clock, tenant="acme",
                     scopes=["submit", "read", "cancel"]).secret
    status, _body, _ = call(rig, f"Bearer {key}", "POST", "/v1/batches", {"items": items(2)})
    assert status == 202
    run_all(rig)
    order = [e.type for e in rig.services.webhooks.events.values()]  # type: ignore[attr-defined]
    assert order == ["job.completed", "job.completed", "batch.completed"]


# --- an emit the webhook store refused is not lost ---------------------------------------

def test_an_api_jobs_event_the_webhook_store_refused_is_sent_by_the_sweeper() -> None:
    """Given an API job that completes while the webhook store is unreachable (every try
    of the worker's emit raises RetryableError), then its notification stays ``claimed``
    (not a final ``error``), a pass past the grace that still finds the store down leaves
    it claimed, and once the store is back the next pass emits its ``job.completed``
    once and records it ``sent``."""
    rig = with_endpoint(build_rig())
    job_id = rig.submit(uid="api:acme", channel="api")
    store_back = webhook_store_down(rig)
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert notify_state(rig, job_id) == "claimed"
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert notify_state(rig, job_id) == "claimed" and events(rig, "job.completed") == []
    store_back()
    sweep(rig.services)
    assert [e["data"]["jobId"] for e in events(rig, "job.completed")] == [job_id]
    assert notify_state(rig, job_id) == "sent"
    sweep(rig.services)
    assert len(events(rig, "job.completed")) == 1


def test_a_sweep_that_finds_the_webhook_store_down_tries_one_event_and_counts_none() -> None:
    """Given three API jobs whose events the worker could not emit, when a pass finds the
    webhook store still down, then it tries the first (its emit pauses between tries) and
    leaves the rest to the next pass, counting none of them sent; once the store is back,
    the next pass sends all three."""
    rig = with_endpoint(build_rig())
    jobs = [rig.submit(uid="api:acme", channel="api", prompt=f"p{i}") for i in range(3)]
    store_back = webhook_store_down(rig)
    for job_id in jobs:
        assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    tried: list[object] = []
    refuse = rig.services.webhooks.create_event

    def counted(event: object) -> bool:
        tried.append(event)
        return refuse(event)  # type: ignore[no-any-return]

    rig.services.webhooks.create_event = counted  # type: ignore[method-assign]
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    report = sweep(rig.services)
    assert len(tried) == len(EMIT_PAUSES) + 1  # one event's tries, not every job's
    assert not report.get("renotified")
    assert [notify_state(rig, job_id) for job_id in jobs] == ["claimed"] * 3
    store_back()
    assert sweep(rig.services).get("renotified") == 3
    assert sorted(e["data"]["jobId"] for e in events(rig, "job.completed")) == sorted(jobs)


@pytest.mark.parametrize("channel", ["app", "telegram"])
def test_an_app_or_chat_notice_that_failed_is_not_sent_again(channel: str) -> None:
    """At most once is unchanged for a push or a chat message: a send that raised
    RetryableError is recorded ``error`` and the sweeper sends nothing more."""
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit(uid="alice" if channel == "app" else "telegram:42", channel=channel)
    calls: list[str] = []

    def refuse(*_args: object, **_kwargs: object) -> object:
        calls.append(channel)
        raise RetryableError("Unreachable.", code="unavailable")

    if channel == "app":
        rig.push.send = refuse  # type: ignore[method-assign]
    else:
        rig.channel.on_finished = refuse  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert notify_state(rig, job_id) == "error"
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert calls == [channel]


# --- a retried job's end is announced again ---------------------------------------------

def test_a_retried_api_job_that_fails_again_sends_a_second_job_failed() -> None:
    """Given an API job that failed (``job.failed``) and was retried by its owner, when
    its second run fails too, then a second ``job.failed`` is recorded under a new
    ``webhook-id`` with a delivery of its own; the first run's event keeps the id of
    (type, job id), so deliveries recorded before stay idempotent."""
    rig = with_endpoint(build_rig())
    rig.providers["image"].error = PermanentError("It was refused.", code="content_refused")
    job_id = rig.submit(uid="api:acme", channel="api")
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    assert actions.retry(rig.services, job_id, by="owner").changed
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    assert rig.job(job_id).server.retries == 1
    failed = [e for e in rig.services.webhooks.events.values()  # type: ignore[attr-defined]
              if e.type == "job.failed"]
    assert [json.loads(e.body)["data"]["jobId"] for e in failed] == [job_id, job_id]
    assert failed[0].id == model.event_id("job.failed", job_id)
    assert failed[1].id != failed[0].id
    assert all(len(rig.services.webhooks.deliveries(event_id=e.id)) == 1 for e in failed)
    assert notify_state(rig, job_id) == "sent"


def test_an_api_jobs_unsent_failure_is_sent_before_its_retry_starts_a_new_run(
        killed_while_sending: Callable[[], None]) -> None:
    """Given an API job whose worker died after failing it, before its ``job.failed`` was
    emitted (the claim left for the sweeper), when its owner retries it before a sweep,
    then the first run's ``job.failed`` is emitted by the retry (the new run's claim no
    longer names it), and the second run's end is announced under an id of its own."""
    rig = with_endpoint(build_rig())
    rig.providers["image"].error = PermanentError("It was refused.", code="content_refused")
    job_id = rig.submit(uid="api:acme", channel="api")
    with pytest.raises(Killed):
        run_job(job_id, rig.services)
    killed_while_sending()
    assert notify_state(rig, job_id) == "claimed" and events(rig, "job.failed") == []
    assert actions.retry(rig.services, job_id, by="owner").changed
    assert [e["data"]["jobId"] for e in events(rig, "job.failed")] == [job_id]
    rig.providers["image"].error = None
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert len(events(rig, "job.failed")) == 1
    assert [e["data"]["jobId"] for e in events(rig, "job.completed")] == [job_id]


def test_a_retry_waits_while_the_unsent_failure_cannot_be_sent() -> None:
    """Given an API job whose ``job.failed`` the webhook store refused, when its owner
    retries it while the store is still down, then the retry changes nothing (503 from
    the API: RetryableError ``notice_pending``); once the store is back the retry sends
    the first run's event and starts the new run."""
    rig = with_endpoint(build_rig())
    rig.providers["image"].error = PermanentError("It was refused.", code="content_refused")
    job_id = rig.submit(uid="api:acme", channel="api")
    store_back = webhook_store_down(rig)
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    with pytest.raises(RetryableError) as refused:
        actions.retry(rig.services, job_id, by="owner")
    assert refused.value.code == "notice_pending"
    assert rig.job(job_id).status.value == "failed" and notify_state(rig, job_id) == "claimed"
    store_back()
    assert actions.retry(rig.services, job_id, by="owner").changed
    assert [e["data"]["jobId"] for e in events(rig, "job.failed")] == [job_id]


def test_a_batch_cancel_while_the_webhook_store_is_down_ends_in_time() -> None:
    """Given an API batch of 30 jobs canceled while the webhook store refuses every emit
    (each send pauses between its tries), then the cancel still cancels all 30 within its
    sending time plus one send's pauses (the ingress answers in 60 s), and once the store
    is back the sweeper sends every job.canceled and the one batch.completed."""
    rig = with_endpoint(build_rig(plans="free:daily=1000,running=200", provider_capacity="200"))
    key = create_key(rig.services.keys, rig.clock, tenant="acme",
                     scopes=["submit", "read", "cancel"]).secret
    status, answer, _ = call(rig, f"Bearer {key}", "POST", "/v1/batches", {"items": items(30)})
    assert status == 202
    store_back = webhook_store_down(rig)
    started = rig.clock.monotonic()
    status, canceled, _ = call(rig, f"Bearer {key}", "POST",
                               f"/v1/batches/{answer['batchId']}:cancel")
    assert (status, canceled["canceled"]) == (200, 30)
    assert rig.clock.monotonic() - started <= 30  # (20 s of sending and one send's pauses)
    store_back()
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    for _ in range(3):
        sweep(rig.services)
    assert len(events(rig, "job.canceled")) == 30
    assert len(events(rig, "batch.completed")) == 1
