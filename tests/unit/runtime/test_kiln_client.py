"""kiln-client (issue 13, item 4) against the in-process API over WSGI (a Kiln of fakes):
submit, get, wait with progress, batches, typed errors, Retry-After, and webhook
verification (Standard Webhooks)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator

import flask
import httpx
import pytest
from kiln_client import (
    AuthenticationError,
    BadRequestError,
    KilnClient,
    NotFoundError,
    PermissionDeniedError,
    WaitTimeout,
    WebhookVerificationError,
    verify_webhook,
)
from rig import Rig
from standardwebhooks.webhooks import Webhook

from kiln.http.api import handle
from kiln.runtime.keys import create_key


def wsgi_app(rig: Rig) -> flask.Flask:
    app = flask.Flask("kiln-under-test")

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def everything(path: str) -> flask.Response:
        return handle(flask.request, rig.services)

    return app


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def kiln(rig: Rig, sleeps: list[float]) -> Iterator[KilnClient]:
    """A client with every scope; at each of its pauses the clock moves, a store outage
    ends and the rig's next delivery runs."""
    key = create_key(rig.services.keys, rig.clock, tenant="acme",
                     scopes=["submit", "read", "cancel"]).secret

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        rig.clock.advance(seconds)
        rig.store.unavailable = False
        rig.deliver_next()

    with KilnClient("http://kiln.test", key, transport=httpx.WSGITransport(app=wsgi_app(rig)),
                    sleep=sleep, clock=rig.clock.monotonic) as client:
        yield client


def test_submit_and_wait_with_progress(kiln: KilnClient, rig: Rig) -> None:
    submitted = kiln.submit("image", "a red cube", {"seed": 7})
    assert submitted.status == "pending" and not submitted.replayed
    seen: list[tuple[str, int]] = []
    job = kiln.wait(submitted.job_id, on_progress=lambda j: seen.append((j.status, j.progress)))
    assert job.status == "completed" and job.result is not None
    assert job.result.content_type == "image/png" and job.result.bytes > 0
    assert seen[0] == ("pending", 0) and seen[-1] == ("completed", 100)
    assert rig.job(submitted.job_id).uid == "api:acme"


def test_a_retried_submission_returns_the_same_job(kiln: KilnClient) -> None:
    first = kiln.submit("image", "a fox", idempotency_key="order-17")
    again = kiln.submit("image", "a fox", idempotency_key="order-17")
    assert (again.job_id, again.replayed) == (first.job_id, True)


def test_wait_gives_up_with_a_typed_error(kiln: KilnClient, rig: Rig) -> None:
    rig.services.queue.fail_next = 1  # type: ignore[attr-defined]  # never published
    job_id = kiln.submit("image", "a cube").job_id
    with pytest.raises(WaitTimeout) as caught:
        kiln.wait(job_id, timeout=3.0)
    assert caught.value.job_id == job_id


def test_batches(kiln: KilnClient) -> None:
    batch = kiln.submit_batch([{"kind": "image", "prompt": f"tile {i}"} for i in range(3)])
    assert len(batch.job_ids) == 3
    assert kiln.get_batch(batch.batch_id).counts["pending"] == 3
    assert kiln.get(batch.job_ids[0]).batch_id == batch.batch_id
    assert kiln.cancel_batch(batch.batch_id) == 3
    view = kiln.get_batch(batch.batch_id)
    assert view.done and view.counts["canceled"] == 3


def test_refusals_are_typed(kiln: KilnClient, rig: Rig) -> None:
    with pytest.raises(BadRequestError) as bad:
        kiln.submit_batch([{"kind": "image", "prompt": "ok"}, {"kind": "image", "prompt": ""}])
    assert bad.value.code == "invalid_prompt" and "items[1].prompt" in bad.value.message
    with pytest.raises(NotFoundError):
        kiln.get("0123456789abcdef0123")
    app = httpx.WSGITransport(app=wsgi_app(rig))
    with KilnClient("http://kiln.test", "kiln_0123456789ab_" + "a" * 43, transport=app) as bad_key, \
            pytest.raises(AuthenticationError) as unauthorized:
        bad_key.get_batch("0123456789abcdef0123")
    assert unauthorized.value.code == "invalid_api_key"
    reader = create_key(rig.services.keys, rig.clock, tenant="acme", scopes=["read"]).secret
    with KilnClient("http://kiln.test", reader, transport=app) as read_only, \
            pytest.raises(PermissionDeniedError) as denied:
        read_only.submit("image", "a cube")
    assert denied.value.code == "insufficient_scope"
    assert rig.store.docs == {}


def test_a_busy_answer_is_retried_after_its_retry_after(kiln: KilnClient, rig: Rig,
                                                        sleeps: list[float]) -> None:
    job_id = kiln.submit("image", "a cube").job_id
    sleeps.clear()
    rig.store.unavailable = True  # the next read answers 503 with Retry-After: 1
    assert kiln.get(job_id).job_id == job_id
    assert sleeps == [1.0]


SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def signed(body: bytes, *, secret: str = SECRET, at: dt.datetime | None = None,
           msg_id: str = "msg_1") -> dict[str, str]:
    when = at or dt.datetime.now(dt.UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, when, body)}


def test_verify_webhook_accepts_a_genuine_event() -> None:
    body = json.dumps({"type": "batch.completed", "timestamp": "2026-12-06T00:00:00Z",
                       "data": {"batchId": "b1", "total": 14}}).encode()
    event = verify_webhook(body, signed(body), SECRET)
    assert (event.id, event.type, event.data["total"]) == ("msg_1", "batch.completed", 14)
    # header names in any case
    upper = {k.upper(): v for k, v in signed(body).items()}
    assert verify_webhook(body, upper, SECRET).id == "msg_1"


@pytest.mark.parametrize("tamper", ["body", "secret", "old", "future", "missing", "id"])
def test_verify_webhook_refuses_forgeries(tamper: str) -> None:
    body = b'{"type":"job.completed","timestamp":"t","data":{}}'
    headers = signed(body)
    secret = SECRET
    if tamper == "body":
        body = body.replace(b"completed", b"failed")
    elif tamper == "secret":
        secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    elif tamper == "old":
        headers = signed(body, at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6))
    elif tamper == "future":
        headers = signed(body, at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6))
    elif tamper == "missing":
        del headers["webhook-signature"]
    else:
        headers["webhook-id"] = "msg_2"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, secret)


def test_verify_webhook_tolerance_can_be_tightened() -> None:
    body = b'{"type":"job.completed","timestamp":"t","data":{}}'
    headers = signed(body, at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=90))
    assert verify_webhook(body, headers, SECRET).id == "msg_1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, SECRET, tolerance=60)
