"""kiln-client against the whole local stack (issue 13): an API key submits a batch, the
jobs run on the real worker, one signed ``batch.completed`` webhook arrives at a receiver
on 127.0.0.1 and verifies with the client library; a key without a scope is refused."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kiln_client import KilnClient, PermissionDeniedError, verify_webhook

from kiln.runtime.keys import create_key
from kiln.webhooks.model import Endpoint, new_endpoint_id, new_secret
from kiln_dev.stack import LocalStack
from kiln_dev.standins.webhook_receiver import WebhookReceiver


def test_a_backend_batch_ends_with_one_verified_webhook(stack: LocalStack, services: Any) -> None:
    # given a tenant with a key and a webhook endpoint for batch.completed
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    key = create_key(services.keys, services.clock, tenant=tenant,
                     scopes=["submit", "read", "cancel"]).secret
    secret = new_secret()
    with WebhookReceiver() as receiver, KilnClient(stack.ingress_url, key) as kiln:
        services.webhooks.put_endpoint(Endpoint(new_endpoint_id(), tenant,
                                                receiver.url("/events"), secret,
                                                events=("batch.completed",)))
        # when it submits a batch of two images with the client
        batch = kiln.submit_batch([{"kind": "image", "prompt": "a red fox"},
                                   {"kind": "image", "prompt": "a blue fox"}])
        # then one signed batch.completed arrives, and the client verifies it
        (got,) = receiver.wait(lambda received: received, timeout=45)
        event = verify_webhook(got.body, got.headers, secret)
        assert (event.type, event.data["batchId"], event.data["counts"]["completed"]) == \
            ("batch.completed", batch.batch_id, 2)
        view = kiln.get_batch(batch.batch_id)
        assert view.done and view.counts["completed"] == 2
        job = kiln.get(batch.job_ids[0])
        assert job.status == "completed" and job.result is not None
        assert services.store.get(job.job_id).uid == f"api:{tenant}"
    # and a key without the submit scope is refused, creating nothing
    reader = create_key(services.keys, services.clock, tenant=tenant, scopes=["read"]).secret
    with KilnClient(stack.ingress_url, reader) as read_only, \
            pytest.raises(PermissionDeniedError) as denied:
        read_only.submit("image", "a cube")
    assert denied.value.code == "insufficient_scope"
