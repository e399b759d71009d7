"""Webhook events and their delivery on fakes, to a real receiver on 127.0.0.1: one record
per event, signed POSTs, the Standard Webhooks retry schedule through scheduled
wake-ups (never a sleep), 410, timeouts, resets, slow receivers, stale wake-ups, the
sweeper's repair, replay."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hookkit import Kit, build_kit, finished_job

from kiln.core.errors import PermanentError, RetryableError
from kiln.core.job import JobStatus
from kiln.webhooks import delivery, events, model
from kiln.webhooks.delivery import AttemptOutcome
from kiln.webhooks.model import DeliveryState, Endpoint
from kiln.webhooks.send import check_webhook_url
from kiln_dev.standins.webhook_receiver import Behavior, WebhookReceiver


def add_endpoint(kit: Kit, url: str, *, tenant: str = "acme", events_: tuple[str, ...] = ()) -> Endpoint:
    endpoint = Endpoint(model.new_endpoint_id(), tenant, url, model.new_secret(), events_,
                        created_at=kit.clock.now())
    kit.hooks.put_endpoint(endpoint)
    return endpoint


def run_wakes(kit: Kit) -> list[AttemptOutcome]:
    """Run every wake-up published now (as the worker would, one message each)."""
    return [delivery.attempt(kit.services, d, n) for d, n in kit.pending_wakes()]


def test_completed_job_is_delivered_signed_once(kit: Kit, receiver: WebhookReceiver) -> None:
    """Given a tenant endpoint, when an API job completes, then one job.completed event is
    recorded, POSTed signed with the endpoint's secret, carrying the result's URL, and
    the delivery and its attempt are recorded; a second finish sends nothing more."""
    endpoint = add_endpoint(kit, "")
    url = receiver.behave("/hook", Behavior(secret=endpoint.secret))
    kit.hooks.put_endpoint(Endpoint(endpoint.id, "acme", url, endpoint.secret))
    report = kit.services.channels["api"].on_finished(kit.services, finished_job())
    assert run_wakes(kit) == [AttemptOutcome.SUCCEEDED]
    [got] = receiver.at("/hook")
    assert got.verified is True and got.webhook_id == report["webhookEvent"]
    body = got.json()
    assert body["type"] == "job.completed"
    assert body["data"] == {"jobId": "job0000001", "status": "completed", "kind": "image",
                            "progress": 100, "resultUrl": "https://files.example/r.png",
                            "contentType": "image/png", "bytes": 10}
    [record] = kit.hooks.deliveries(event_id=report["webhookEvent"])
    assert record.state is DeliveryState.SUCCEEDED and record.last_status == 200
    assert [a["status"] for a in kit.hooks.attempts(record.id)] == [200]
    again = events.emit(kit.services, tenant="acme", event_type="job.completed",
                        subject_id="job0000001", data={})
    assert again == report["webhookEvent"] and kit.pending_wakes() == []


def test_failed_job_carries_its_error_and_goes_to_the_job_url(kit: Kit,
                                                              receiver: WebhookReceiver) -> None:
    """Given a job with its own webhook URL, when it fails, then job.failed goes there,
    signed with the tenant's secret, with the error a user can read."""
    url = receiver.behave("/job", Behavior())
    kit.services.channels["api"].on_finished(kit.services,
                                             finished_job(JobStatus.FAILED, webhook=url))
    assert run_wakes(kit) == [AttemptOutcome.SUCCEEDED]
    [got] = receiver.at("/job")
    secret = kit.hooks.tenant_secret("acme", "unused")
    from standardwebhooks.webhooks import Webhook
    body = Webhook(secret).verify(got.body, got.headers)
    assert body["type"] == "job.failed"
    assert body["data"]["error"] == {"code": "provider_failed", "message": "It failed."}


def test_endpoint_filters_and_progress_is_opt_in(kit: Kit) -> None:
    """Given one endpoint for every default event and one for job.canceled only, when a job
    completes, then only the first gets a delivery (progress needs an explicit opt-in)."""
    everything = add_endpoint(kit, "https://a.example/h")
    add_endpoint(kit, "https://b.example/h", events_=("job.canceled",))
    event_id = events.emit(kit.services, tenant="acme", event_type="job.completed",
                           subject_id="j1", data={})
    assert [d.endpoint_id for d in kit.hooks.deliveries(event_id=event_id)] == [everything.id]
    assert not everything.wants("job.progress")
    with pytest.raises(ValueError):
        events.emit(kit.services, tenant="acme", event_type="job.exploded", subject_id="j", data={})


def test_retries_follow_the_standard_schedule_then_fail(receiver: WebhookReceiver) -> None:
    """Given a receiver that always answers 500, when each scheduled wake-up fires, then
    the attempts are spaced 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h apart
    (scheduled messages, no sleep), and after the tenth the delivery fails."""
    kit = build_kit()
    url = receiver.behave("/down", Behavior(status=500))
    add_endpoint(kit, url)
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    assert run_wakes(kit) == [AttemptOutcome.RETRY]
    gaps = []
    for _ in range(len(model.SCHEDULE) - 1):
        [check] = kit.scheduler.pending.values()
        gaps.append((check.at - kit.clock.now()).total_seconds())
        kit.clock.advance(gaps[-1])
        kit.scheduler.fire(kit.clock.now())
        outcomes = run_wakes(kit)
    assert gaps == list(model.SCHEDULE[1:])
    assert outcomes == [AttemptOutcome.FAILED] and not kit.scheduler.pending
    [record] = kit.hooks.deliveries()
    assert record.state is DeliveryState.FAILED and record.attempt == 10
    assert len(receiver.at("/down")) == 10 and len(kit.hooks.attempts(record.id)) == 10


def test_schedule_scale_shrinks_the_waits(receiver: WebhookReceiver) -> None:
    """Given KILN_WEBHOOK_SCHEDULE_SCALE=0.01, when an attempt fails, then the next is due
    in 0.05 s instead of 5 s."""
    kit = build_kit(webhook_schedule_scale=0.01)
    add_endpoint(kit, receiver.behave("/x", Behavior(status=503)))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    run_wakes(kit)
    [check] = kit.scheduler.pending.values()
    assert (check.at - kit.clock.now()).total_seconds() == pytest.approx(0.05)


def test_410_disables_the_endpoint(kit: Kit, receiver: WebhookReceiver) -> None:
    """Given a receiver that answers 410, when a delivery is attempted, then it fails at
    once (no retry), the endpoint is disabled, and the next event creates no delivery."""
    endpoint = add_endpoint(kit, receiver.behave("/gone", Behavior(status=410)))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j1", data={})
    assert run_wakes(kit) == [AttemptOutcome.FAILED]
    assert not kit.scheduler.pending
    assert kit.hooks.endpoint(endpoint.id).disabled == "gone"  # type: ignore[union-attr]
    second = events.emit(kit.services, tenant="acme", event_type="job.completed",
                         subject_id="j2", data={})
    assert kit.hooks.deliveries(event_id=second) == []


@pytest.mark.parametrize("behavior,error", [
    (Behavior(delay=0.6), "timeout"),
    (Behavior(reset=True), "connection"),
    (Behavior(status=302), "redirect"),
])
def test_timeouts_resets_and_redirects_are_retried(receiver: WebhookReceiver, behavior: Behavior,
                                                   error: str) -> None:
    """Given a receiver that answers too slowly, resets the connection, or redirects, when
    a delivery is attempted, then the attempt records why and the next one is scheduled."""
    kit = build_kit(webhook_timeout_seconds=0.3)
    add_endpoint(kit, receiver.behave("/bad", behavior))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    assert run_wakes(kit) == [AttemptOutcome.RETRY]
    [record] = kit.hooks.deliveries()
    assert record.state is DeliveryState.PENDING and record.attempt == 2
    assert kit.hooks.attempts(record.id)[0]["error"] == error


def test_a_slow_receiver_does_not_hold_other_deliveries(receiver: WebhookReceiver) -> None:
    """Given one receiver that does not answer (held) and one that answers at once, when
    both deliveries run (each its own invocation, the slow one first), then the fast one
    is received and settled while the slow one is still unanswered."""
    kit = build_kit()
    held = threading.Event()
    add_endpoint(kit, receiver.behave("/slow", Behavior(hold=held)))
    add_endpoint(kit, receiver.behave("/fast", Behavior()))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    wakes = kit.pending_wakes()
    slow_first = sorted(wakes, key=lambda w: kit.hooks.delivery(w[0]).url.endswith("/fast"))  # type: ignore[union-attr]
    threads = [threading.Thread(target=delivery.attempt, args=(kit.services, d, n))
               for d, n in slow_first]
    for thread in threads:
        thread.start()
    threads[1].join(5)
    states = {d.url.rsplit("/", 1)[1]: d.state for d in kit.hooks.deliveries()}
    assert states == {"fast": DeliveryState.SUCCEEDED, "slow": DeliveryState.PENDING}
    assert [r.path for r in receiver.received] == ["/fast"]
    held.set()
    threads[0].join(5)
    assert sorted(r.path for r in receiver.received) == ["/fast", "/slow"]


def test_duplicate_and_stale_wake_ups_send_nothing(kit: Kit, receiver: WebhookReceiver) -> None:
    """Given a delivered event, when its wake-up arrives again (Pub/Sub redelivery) or an
    old attempt's arrives, then nothing is POSTed again."""
    add_endpoint(kit, receiver.behave("/ok", Behavior()))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    [(delivery_id, number)] = kit.pending_wakes()
    assert delivery.attempt(kit.services, delivery_id, number) is AttemptOutcome.SUCCEEDED
    assert delivery.attempt(kit.services, delivery_id, number) is AttemptOutcome.STALE
    assert delivery.attempt(kit.services, delivery_id, 7) is AttemptOutcome.STALE
    assert delivery.attempt(kit.services, "wh-missing", 1) is AttemptOutcome.MISSING
    assert len(receiver.at("/ok")) == 1


def test_the_sweeper_wakes_a_delivery_whose_wake_up_was_lost(kit: Kit,
                                                             receiver: WebhookReceiver) -> None:
    """Given an event whose wake-up publish failed, when the sweeper's pass runs after
    the grace period, then the delivery is woken and delivered."""
    add_endpoint(kit, receiver.behave("/late", Behavior()))
    kit.queue.fail_next = 1
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    assert kit.pending_wakes() == []
    assert kit.services.channels["api"].redeliver(kit.services) == 0  # not overdue yet
    kit.clock.advance(model.LOST_AFTER.total_seconds() + 1)
    assert kit.services.channels["api"].redeliver(kit.services) == 1
    assert run_wakes(kit) == [AttemptOutcome.SUCCEEDED]
    assert len(receiver.at("/late")) == 1


def test_replay_sends_the_same_event_again(kit: Kit, receiver: WebhookReceiver) -> None:
    """Given a delivered event, when an operator replays it, then the receiver gets it again
    with the same webhook-id (receivers de-duplicate), signed afresh."""
    add_endpoint(kit, receiver.behave("/r", Behavior()))
    event_id = events.emit(kit.services, tenant="acme", event_type="job.completed",
                           subject_id="j", data={})
    run_wakes(kit)
    assert len(delivery.replay(kit.services, event_id)) == 1
    assert run_wakes(kit) == [AttemptOutcome.SUCCEEDED]
    assert [r.webhook_id for r in receiver.at("/r")] == [event_id, event_id]


@pytest.mark.parametrize("url", [
    "https://10.0.0.8/hook", "https://192.168.1.1/h", "https://169.254.169.254/latest",
    "https://metadata.google.internal/x", "http://example.com/h", "https://[::1]/h",
    "https://user:pw@example.com/h", "ftp://example.com/h",
])
def test_private_loopback_and_metadata_urls_are_refused(url: str) -> None:
    """Given a webhook URL to private, loopback or metadata space (or not https), when it is
    checked outside local mode, then it is refused with invalid_webhook_url."""
    with pytest.raises(PermanentError) as info:
        check_webhook_url(url, allow_local=False, resolve=lambda _h, _p: ["10.1.2.3"])
    assert info.value.code == "invalid_webhook_url"
    assert "webhook URL was refused" in info.value.message


def test_a_private_address_is_refused_at_delivery_too(kit: Kit) -> None:
    """Given an endpoint stored with a private address (the rules are applied again at each
    attempt), when its delivery is attempted, then nothing is sent and the delivery fails
    for good (not retried)."""
    add_endpoint(kit, "https://10.0.0.8/h")
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    assert run_wakes(kit) == [AttemptOutcome.FAILED]
    [record] = kit.hooks.deliveries()
    assert record.last_error == "refused" and not kit.scheduler.pending


def test_the_worker_runs_a_wake_up_message(kit: Kit, receiver: WebhookReceiver) -> None:
    """Given a delivery's wake-up as it arrives from Pub/Sub (a job message with a ``wh-``
    id and the attempt as its check), when the worker handles it, then the attempt runs."""
    import base64

    from kiln.adapters.pubsub import encode_message
    from kiln.runtime.worker import RunOutcome, handle_message

    add_endpoint(kit, receiver.behave("/w", Behavior()))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    [(delivery_id, number)] = kit.pending_wakes()
    data, _attributes = encode_message(delivery_id, reason="webhook", check=number)
    message = {"message": {"data": base64.b64encode(data).decode()}}
    assert handle_message(message, kit.services) is RunOutcome.WEBHOOK
    assert kit.hooks.delivery(delivery_id).state is DeliveryState.SUCCEEDED  # type: ignore[union-attr]


def test_progress_is_coalesced_per_window_and_opt_in(kit: Kit) -> None:
    """Given an endpoint that opted in to job.progress and one that did not, when a job
    reports progress three times in one 10 s window and once in the next, then two
    progress events are recorded, each delivered only to the opted-in endpoint."""
    wants = add_endpoint(kit, "https://a.example/h", events_=("job.progress",))
    add_endpoint(kit, "https://b.example/h")
    job = finished_job(JobStatus.PROCESSING)
    channel = kit.services.channels["api"]
    kit.clock.advance(10 - kit.clock.now().timestamp() % 10)  # the start of a window
    for progress in (10, 20, 30):
        channel.on_progress(kit.services, job, progress, "generating")
        kit.clock.advance(1)
    kit.clock.advance(10)
    channel.on_progress(kit.services, job, 60, "generating")
    progress_events = [e for e in kit.hooks.events.values() if e.type == "job.progress"]
    assert len(progress_events) == 2
    assert {d.endpoint_id for d in kit.hooks.deliveries()} == {wants.id}
    import json
    assert sorted(json.loads(e.body)["data"]["progress"] for e in progress_events) == [10, 60]


def test_an_end_event_survives_a_store_blip(kit: Kit) -> None:
    """Given a webhook store that refuses the first write, when a job ends, then the
    channel tries again and the event is recorded once."""
    add_endpoint(kit, "https://a.example/h")
    real = kit.hooks.create_event
    calls = []

    def flaky(event: Any) -> bool:
        calls.append(event.id)
        if len(calls) == 1:
            raise RetryableError("The webhook store is unavailable.", code="store_unavailable")
        return real(event)

    kit.hooks.create_event = flaky  # type: ignore[method-assign]
    report = kit.services.channels["api"].on_finished(kit.services, finished_job())
    assert len(calls) == 2 and report["webhookEvent"] in kit.hooks.events
    assert len(kit.pending_wakes()) == 1


def test_the_schedule_scale_is_local_only() -> None:
    from kiln.core.errors import ConfigError
    from kiln.settings import Settings
    with pytest.raises(ConfigError):
        Settings(env="cloud", webhook_schedule_scale=0.1)
    assert Settings.from_env({"KILN_ENV": "local",
                              "KILN_WEBHOOK_SCHEDULE_SCALE": "0.02"}).webhook_schedule_scale == 0.02


def test_the_sweeper_stops_waking_at_the_first_lost_wake_up(kit: Kit,
                                                           receiver: WebhookReceiver) -> None:
    """Given three overdue deliveries and a queue that refuses, when the sweeper's pass runs,
    then it tries one publish and stops (each refusal can cost the publish timeout, 3 s:
    200 of them outlasted the sweeper's invocation); the next pass wakes all three."""
    for n in range(3):
        add_endpoint(kit, receiver.behave(f"/p{n}", Behavior()))
    kit.queue.fail_next = 1
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    assert len(kit.pending_wakes()) == 2
    kit.queue.published.clear()
    kit.clock.advance(model.LOST_AFTER.total_seconds() + 1)
    kit.queue.fail_next = 5
    assert kit.services.channels["api"].redeliver(kit.services) == 0
    assert kit.queue.fail_next == 4  # one publish tried, not three
    kit.queue.fail_next = 0
    assert kit.services.channels["api"].redeliver(kit.services) == 3
