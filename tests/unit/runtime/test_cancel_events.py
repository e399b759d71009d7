"""A canceled API job is announced to its backend (``job.canceled``, docs/webhooks.md),
once however often it is canceled, and at least once: the cancel claims the notification
in its own write, so an emit that failed, or a process that died after the cancel's
commit, is repaired by the sweeper. A cancel sends no push and no chat message."""

from __future__ import annotations

import json

import pytest
from rig import Killed, Rig, build_rig, kill_at
from test_batches import call, items

from kiln.core.errors import RetryableError
from kiln.core.job import JobStatus
from kiln.runtime import actions
from kiln.runtime.keys import create_key
from kiln.runtime.sweeper import UNSENT_GRACE_SECONDS, sweep
from kiln.runtime.worker import RunOutcome, run_job
from kiln.webhooks import channel as webhook_channel
from kiln.webhooks import model
from kiln.webhooks.channel import ApiChannel
from kiln.webhooks.model import DELIVERY_PREFIX, Endpoint

TENANT = "acme"


def api_rig(**settings: str) -> tuple[Rig, Endpoint]:
    """A tenant endpoint for every event; the API channel composed as in production (the
    rig composes only a recording Telegram channel)."""
    rig = build_rig(**settings)
    rig.services.channels = {**rig.services.channels, "api": ApiChannel()}
    endpoint = Endpoint(model.new_endpoint_id(), TENANT, "https://hooks.example/kiln",
                        model.new_secret(), (), created_at=rig.clock.now())
    rig.services.webhooks.put_endpoint(endpoint)
    rig.devices.register(f"api:{TENANT}", "phone", fid="f")  # would get a push, if any
    return rig, endpoint


def canceled_events(rig: Rig) -> list[dict[str, object]]:
    return [json.loads(event.body) for event in rig.services.webhooks.events.values()
            if event.type == "job.canceled"]


def webhook_wakes(rig: Rig) -> list[str]:
    return [d.job_id for d in rig.queue.deliveries if d.job_id.startswith(DELIVERY_PREFIX)]


def test_a_canceled_api_job_sends_one_job_canceled_event() -> None:
    rig, endpoint = api_rig()
    job_id = rig.submit(uid=f"api:{TENANT}", channel="api", webhook="https://own.example/h")
    assert actions.cancel(rig.services, job_id, by="owner").changed
    [body] = canceled_events(rig)
    assert body["type"] == "job.canceled"
    assert body["data"] == {"jobId": job_id, "status": "canceled", "kind": "image",
                            "progress": 0}
    [event] = rig.services.webhooks.events.values()
    targets = {d.url for d in rig.services.webhooks.deliveries(event_id=event.id)}
    assert targets == {endpoint.url, "https://own.example/h"}
    assert len(webhook_wakes(rig)) == 2  # each delivery's first attempt, at once
    assert rig.push.sent == [] and rig.channel.finished == []

    again = actions.cancel(rig.services, job_id, by="owner")
    assert not again.changed and again.status is JobStatus.CANCELED
    assert len(canceled_events(rig)) == 1 and len(webhook_wakes(rig)) == 2


def test_a_running_job_canceled_after_a_retry_carries_no_error() -> None:
    """The documented data has no ``error``: a job released by a retryable failure still
    holds that failure's error when it is canceled."""
    rig, _endpoint = api_rig()

    class Down:
        name = "down"

        def generate(self, *_args: object) -> object:
            raise RetryableError("Down.", code="provider_unavailable")

    rig.providers["image"] = Down()
    job_id = rig.submit(uid=f"api:{TENANT}", channel="api")
    with pytest.raises(RetryableError):
        run_job(job_id, rig.services)
    assert rig.job(job_id).error is not None
    actions.cancel(rig.services, job_id, by="owner")
    [body] = canceled_events(rig)
    assert body["data"] == {"jobId": job_id, "status": "canceled", "kind": "image",
                            "progress": 0}
    rig.clock.advance(60)
    assert run_job(job_id, rig.services) is RunOutcome.TERMINAL
    assert len(canceled_events(rig)) == 1 and rig.push.sent == []


def test_an_app_users_cancel_emits_no_event_and_a_store_outage_does_not_fail_it() -> None:
    rig, _endpoint = api_rig()
    app_job = rig.submit()
    assert actions.cancel(rig.services, app_job, by="owner").changed
    assert rig.services.webhooks.events == {}

    api_job = rig.submit(uid=f"api:{TENANT}", channel="api")
    real = rig.services.webhooks.create_event

    def down(_event: object) -> bool:
        raise RetryableError("The webhook store is unavailable.", code="store_unavailable")

    rig.services.webhooks.create_event = down  # type: ignore[method-assign]
    assert actions.cancel(rig.services, api_job, by="owner").changed  # logged, not raised
    assert rig.job(api_job).status is JobStatus.CANCELED
    assert rig.clock.sleeps == [0.2, 1.0, 3.0]  # the emit's brief tries, on the fake clock
    rig.services.webhooks.create_event = real  # type: ignore[method-assign]


def notify_state(rig: Rig, job_id: str) -> str | None:
    return (rig.job(job_id).server.notify or {}).get("state")


def test_a_cancel_whose_event_the_store_refused_is_announced_by_the_sweeper() -> None:
    """Given an API job canceled while the webhook store is unreachable, then the cancel
    stands with its notification ``claimed``, and once the store is back the sweeper's
    pass past the grace emits ``job.canceled`` once and records it ``sent``."""
    rig, _endpoint = api_rig()
    job_id = rig.submit(uid=f"api:{TENANT}", channel="api")
    real = rig.services.webhooks.create_event

    def down(_event: object) -> bool:
        raise RetryableError("The webhook store is unavailable.", code="store_unavailable")

    rig.services.webhooks.create_event = down  # type: ignore[method-assign]
    assert actions.cancel(rig.services, job_id, by="owner").changed
    assert canceled_events(rig) == [] and notify_state(rig, job_id) == "claimed"
    rig.services.webhooks.create_event = real  # type: ignore[method-assign]
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert [e["data"]["jobId"] for e in canceled_events(rig)] == [job_id]  # type: ignore[index]
    assert notify_state(rig, job_id) == "sent"
    sweep(rig.services)
    assert len(canceled_events(rig)) == 1
    assert rig.push.sent == [] and rig.channel.finished == []


def test_a_cancel_whose_process_died_before_the_event_is_announced_by_the_sweeper(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an API job whose cancel committed and whose process then died before the
    event was emitted, then the sweeper, past the grace, emits ``job.canceled`` once."""
    rig, _endpoint = api_rig()
    job_id = rig.submit(uid=f"api:{TENANT}", channel="api")
    revive = kill_at(monkeypatch, webhook_channel, "announce_end")
    with pytest.raises(Killed):
        actions.cancel(rig.services, job_id, by="owner")
    revive()
    assert rig.job(job_id).status is JobStatus.CANCELED and canceled_events(rig) == []
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert [e["data"]["jobId"] for e in canceled_events(rig)] == [job_id]  # type: ignore[index]
    sweep(rig.services)
    assert len(canceled_events(rig)) == 1


@pytest.mark.parametrize("uid,channel", [("alice", "app"), ("telegram:42", "telegram")])
def test_an_app_or_chat_cancel_claims_no_notification(uid: str, channel: str) -> None:
    """A cancel of an app or a chat job claims nothing: no push and no chat message, now
    or from the sweeper."""
    rig, _endpoint = api_rig()
    rig.devices.register(uid, "phone", fid="f")
    job_id = rig.submit(uid=uid, channel=channel)
    assert actions.cancel(rig.services, job_id, by="owner").changed
    assert rig.job(job_id).server.notify is None
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert rig.push.sent == [] and rig.channel.finished == []
    assert rig.services.webhooks.events == {}


def test_a_canceled_api_batch_announces_each_job_before_the_batch() -> None:
    """Given an API batch of two pending jobs, when the batch is canceled, then each job's
    ``job.canceled`` comes before the one ``batch.completed``, each job's notification
    is recorded sent, and a later sweep emits nothing more."""
    rig, _endpoint = api_rig(plans="free:daily=1000,running=200;pro:daily=1000,running=200",
                             provider_capacity="200")
    key = create_key(rig.services.keys, rig.clock, tenant=TENANT,
                     scopes=["submit", "read", "cancel"]).secret
    status, body, _ = call(rig, f"Bearer {key}", "POST", "/v1/batches", {"items": items(2)})
    assert status == 202
    batch = rig.services.batches.get(body["batchId"])
    assert batch is not None
    status, _body, _ = call(rig, f"Bearer {key}", "POST", f"/v1/batches/{batch.id}:cancel")
    assert status == 200, _body
    order = [e.type for e in rig.services.webhooks.events.values()]
    assert order == ["job.canceled", "job.canceled", "batch.completed"]
    assert [notify_state(rig, j) for j in batch.job_ids] == ["sent", "sent"]
    rig.clock.advance(UNSENT_GRACE_SECONDS + 1)
    sweep(rig.services)
    assert len(rig.services.webhooks.events) == 3
