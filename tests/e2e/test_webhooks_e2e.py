"""End to end: a backend's job ends in a signed webhook (issue 13, item 2).

The local stack, for real: an API key registers an endpoint over HTTP, submits a job, and
the worker's notification delivers ``job.completed`` (through a Pub/Sub wake-up message)
to a receiver on 127.0.0.1, signed with the endpoint's secret and carrying the result's
download URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from kiln.runtime.keys import create_key
from kiln_dev.standins.webhook_receiver import Behavior, WebhookReceiver
from support import wait_terminal

pytestmark = pytest.mark.e2e


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def test_a_completed_jobs_webhook_arrives_signed(stack: Any, services: Any,
                                                 receiver: WebhookReceiver) -> None:
    tenant = f"e2e-{uuid.uuid4().hex[:8]}"
    key = create_key(services.keys, services.clock, tenant=tenant,
                     scopes=["submit", "read"]).secret
    with httpx.Client(base_url=stack.ingress_url, timeout=15,
                      headers={"Authorization": f"Bearer {key}"}) as api:
        created = api.post("/v1/webhooks", json={"url": receiver.url("/kiln")})
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        receiver.behave("/kiln", Behavior(secret=secret))
        answer = api.post("/v1/jobs", json={"kind": "image", "prompt": "a signed cube"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["jobId"]
    job = wait_terminal(services, job_id)
    assert job.status == "completed"
    [got] = receiver.wait(lambda r: any(x.path == "/kiln" for x in r), timeout=30)
    body = Webhook(secret).verify(got.body, got.headers)
    assert got.verified is True
    assert body["type"] == "job.completed"
    assert body["data"]["jobId"] == job_id
    assert body["data"]["resultUrl"] == job.result["downloadUrl"]
    assert got.webhook_id.startswith("msg_")
