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
    Job,
    KilnClient,
    KilnError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    UnavailableError,
    WaitTimeout,
    WebhookVerificationError,
    verify_webhook,
)
from rig import Rig
from standardwebhooks.webhooks import Webhook

from kiln.http.api import handle
from kiln.runtime.keys import create_key

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


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


def test_jobs_reads_every_job_page_by_page(kiln: KilnClient, rig: Rig) -> None:
    ids = [kiln.submit("image", f"cube {n}").job_id for n in range(7)]
    listed = list(kiln.jobs(page_size=3))
    assert sorted(job.job_id for job in listed) == sorted(ids) and len(listed) == 7
    assert [job.created_at for job in listed] == sorted(
        (job.created_at for job in listed), reverse=True)
    with pytest.raises(KilnError):
        next(kiln.jobs(page_size=101))


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


class Scripted:
    """A stand-in API answering a script of ``(status, body, headers)`` in turn (the last
    one again once the script is spent); every request it saw in ``seen``."""

    def __init__(self, *answers: tuple[int, dict[str, object], dict[str, str]]) -> None:
        self.answers = list(answers)
        self.seen: list[str] = []
        self.clock, self.sleeps = 0.0, list[float]()
        app = flask.Flask("scripted")

        @app.route("/<path:path>", methods=["GET", "POST"])
        def answer(path: str) -> flask.Response:
            self.seen.append(f"{flask.request.method} {flask.request.full_path.rstrip('?')}")
            status, body, headers = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            return flask.Response(json.dumps(body), status, headers, mimetype="application/json")

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock += seconds

        self.client = KilnClient("http://kiln.test", "kiln_x", transport=httpx.WSGITransport(app=app),
                                 sleep=sleep, clock=lambda: self.clock)


def busy(code: str, status: int, retry_after: int) -> tuple[int, dict[str, object], dict[str, str]]:
    return status, {"error": {"code": code, "message": "try later"}}, {"Retry-After": str(retry_after)}


JOB = {"jobId": "job1", "status": "running", "kind": "image", "prompt": "p", "progress": 10}


def test_a_spent_quota_is_raised_at_once_not_waited_out() -> None:
    """429 quota_exceeded asks to come back at midnight: one request, no pause."""
    api = Scripted(busy("quota_exceeded", 429, 41_000))
    with pytest.raises(QuotaExceededError) as caught:
        api.client.submit("image", "a cube")
    assert (caught.value.retry_after, api.sleeps, len(api.seen)) == (41_000, [], 1)
    assert isinstance(caught.value, UnavailableError)  # callers catching busy still catch it


def test_a_busy_answer_asking_for_a_long_wait_is_raised_at_once() -> None:
    api = Scripted(busy("overloaded", 503, 300))
    with pytest.raises(UnavailableError):
        api.client.get("job1")
    assert (api.sleeps, len(api.seen)) == ([], 1)


def test_wait_timeout_bounds_busy_answers_too() -> None:
    """wait(timeout=2) against a Kiln busy for 30 s at a time pauses 2 s in all, then
    raises WaitTimeout (before: four 30 s pauses and an UnavailableError)."""
    api = Scripted((200, JOB, {}), busy("overloaded", 503, 30))
    with pytest.raises(WaitTimeout):
        api.client.wait("job1", timeout=2.0, interval=0.5)
    assert sum(api.sleeps) == pytest.approx(2.0)


def test_a_cancel_is_retried_after_a_busy_answer() -> None:
    api = Scripted(busy("unavailable", 503, 1), (200, {"jobId": "job1", "status": "canceled"}, {}))
    assert api.client.cancel("job1") == "canceled"
    assert (api.seen, api.sleeps) == (["POST /v1/jobs/job1:cancel"] * 2, [1.0])


@pytest.mark.parametrize("job_id", ["../batches/0123456789abcdef0123", "x?limit=1", "..", "", "a/b",
                                    "a" * 65, "ключ"])
def test_an_id_kiln_could_not_have_made_is_refused_before_any_request(job_id: str) -> None:
    api = Scripted((200, JOB, {}))
    for call in (api.client.get, api.client.cancel, api.client.get_batch, api.client.cancel_batch,
                 api.client.wait):
        with pytest.raises(KilnError, match="not a Kiln id"):
            call(job_id)
    assert api.seen == []


def test_a_key_read_from_a_file_works_and_a_broken_one_is_never_shown(rig: Rig) -> None:
    """A key with the newline a file gives it is taken as the key; one with a character
    no header can carry is refused at once, without quoting the secret (it was retried as
    an outage, with the whole key in the error); so is a non-ASCII idempotency key."""
    key = create_key(rig.services.keys, rig.clock, tenant="acme",
                     scopes=["submit", "read"]).secret
    app = httpx.WSGITransport(app=wsgi_app(rig))
    with KilnClient("http://kiln.test", key + "\n", transport=app) as client:
        assert client.submit("image", "a red cube").status == "pending"
        with pytest.raises(KilnError) as refused_key:
            client.submit("image", "a red cube", idempotency_key="commande-é")
        assert "idempotency key" in str(refused_key.value)
    broken = key[:12] + "\n" + key[12:]
    with pytest.raises(KilnError) as refused:
        KilnClient("http://127.0.0.1:1", broken)
    assert key[12:] not in str(refused.value) and key[:12] not in str(refused.value)


def test_a_waiting_job_says_why_and_where() -> None:
    job = Job.from_api({**JOB, "status": "pending", "queueReason": "running_limit",
                        "queuePosition": 3, "updatedAt": "2026-12-07T00:00:01Z"})
    assert (job.queue_reason, job.queue_position, job.updated_at) == (
        "running_limit", 3, "2026-12-07T00:00:01Z")
    assert Job.from_api(JOB).queue_position is None


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_!!!!", None])
def test_a_missing_or_garbled_secret_is_a_verification_error(secret: object) -> None:
    body = b'{"type": "job.completed", "data": {}}'
    with pytest.raises(WebhookVerificationError, match="secret"):
        verify_webhook(body, signed(body), secret)  # type: ignore[arg-type]


@pytest.mark.parametrize("written", [SECRET + "\n", SECRET.rstrip("="), SECRET])
def test_a_secret_as_it_is_often_stored_still_verifies(written: str) -> None:
    """A secret read from a file (a trailing newline) or stored without base64's padding is
    the same key to the library: it verifies, as ``standardwebhooks`` itself would."""
    body = b'{"type": "job.completed", "data": {}}'
    assert verify_webhook(body, signed(body), written).type == "job.completed"




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
