"""A canceled API job is announced to its backend (``job.canceled``, docs/webhooks.md),
once however often it is canceled; a cancel sends no push and no chat message."""

from __future__ import annotations

import json

import pytest
from rig import Rig, build_rig

from kiln.core.errors import RetryableError
from kiln.core.job import JobStatus
from kiln.runtime import actions
from kiln.runtime.worker import RunOutcome, run_job
from kiln.webhooks import model
from kiln.webhooks.model import DELIVERY_PREFIX, Endpoint

TENANT = "acme"


def api_rig() -> tuple[Rig, Endpoint]:
    rig = build_rig()
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
