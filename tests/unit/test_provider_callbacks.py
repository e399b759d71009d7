"""Provider callbacks are verified before anything is read from them: Standard Webhooks for
the task server (signature, 5-minute tolerance), a constant-time ``?token=`` for Meshy."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from standardwebhooks.webhooks import Webhook

from kiln.providers.callbacks import (
    CallbacksNotConfigured,
    CallbackUnauthenticated,
    MalformedCallback,
    ProviderEvent,
    callback_url,
    task_key,
    verify,
)
from kiln.settings import Settings

SECRET = "whsec_" + "dW5pdC10ZXN0LXNlY3JldC1ub3QtYS1yZWFsLW9uZQ=="
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
SETTINGS = Settings(project="demo-unit", taskserver_webhook_secret=SECRET,
                    meshy_webhook_secret="meshy-token", public_url="https://kiln.example/")


def signed(body: bytes, *, at: dt.datetime = NOW, msg_id: str = "msg-1",
           secret: str = SECRET) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body)}


def event(status: str = "succeeded", task_id: str = "task-1") -> bytes:
    return json.dumps({"type": "task.ended", "task_id": task_id, "status": status}).encode()


def test_a_signed_taskserver_event_is_read() -> None:
    body = event()
    assert verify("taskserver", signed(body), body, SETTINGS, NOW) == [
        ProviderEvent("msg-1", "task-1", ended=True, kind="task.ended")]


def test_a_progress_event_is_not_an_end() -> None:
    body = json.dumps({"type": "task.progress", "task_id": "t", "status": "running"}).encode()
    [only] = verify("taskserver", signed(body), body, SETTINGS, NOW)
    assert not only.ended and only.kind == "task.progress"


def test_a_signature_under_another_secret_or_body_is_refused() -> None:
    body = event()
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLXRoZS1zYW1lLWxlbmd0aA=="
    with pytest.raises(CallbackUnauthenticated) as refused:
        verify("taskserver", signed(body, secret=other), body, SETTINGS, NOW)
    assert refused.value.status == 401 and refused.value.code == "bad_signature"
    with pytest.raises(CallbackUnauthenticated):
        verify("taskserver", signed(body), event("failed"), SETTINGS, NOW)
    with pytest.raises(CallbackUnauthenticated):
        verify("taskserver", {}, body, SETTINGS, NOW)


def test_a_timestamp_more_than_five_minutes_off_is_refused() -> None:
    body = event()
    for skew in (-301, 301):
        with pytest.raises(CallbackUnauthenticated) as refused:
            verify("taskserver", signed(body, at=NOW + dt.timedelta(seconds=skew)), body,
                   SETTINGS, NOW)
        assert refused.value.code == "stale_timestamp"
    late = NOW + dt.timedelta(seconds=299)
    assert verify("taskserver", signed(body, at=late), body, SETTINGS, NOW)


def test_malformed_bodies_are_400_after_the_signature_holds() -> None:
    for body in (b"{not json", b"[1, 2]", json.dumps({"status": "succeeded"}).encode()):
        with pytest.raises(MalformedCallback) as refused:
            verify("taskserver", signed(body), body, SETTINGS, NOW)
        assert refused.value.status == 400


def test_unknown_providers_and_unset_secrets_are_404() -> None:
    body = event()
    with pytest.raises(CallbacksNotConfigured) as refused:
        verify("replicate", signed(body), body, SETTINGS, NOW)
    assert refused.value.status == 404
    bare = Settings(project="demo-unit")
    with pytest.raises(CallbacksNotConfigured):
        verify("taskserver", signed(body), body, bare, NOW)
    with pytest.raises(CallbacksNotConfigured):
        verify("meshy", b"{}", b"{}", bare, NOW, query={"token": ""})


def test_meshy_takes_its_task_object_with_the_shared_token() -> None:
    body = json.dumps({"id": "m-1", "status": "SUCCEEDED", "progress": 100}).encode()
    assert verify("meshy", {}, body, SETTINGS, NOW, query={"token": "meshy-token"}) == [
        ProviderEvent("m-1:SUCCEEDED:100", "m-1", ended=True, kind="succeeded")]
    running = json.dumps({"id": "m-1", "status": "IN_PROGRESS", "progress": 40}).encode()
    [update] = verify("meshy", {}, running, SETTINGS, NOW, query={"token": "meshy-token"})
    assert not update.ended
    for query in ({}, {"token": "meshy-tokeN"}):
        with pytest.raises(CallbackUnauthenticated):
            verify("meshy", {}, body, SETTINGS, NOW, query=query)


def test_meshy_takes_either_token_while_one_is_rotated() -> None:
    """Given two tokens (the old webhook's and the new one's, comma-separated), then an
    event with either is read and one with neither, or with both joined, is refused."""
    rotating = Settings(project="demo-unit", meshy_webhook_secret="old-token, new-token")
    body = json.dumps({"id": "m-2", "status": "IN_PROGRESS", "progress": 10}).encode()
    for token in ("old-token", "new-token"):
        assert verify("meshy", {}, body, rotating, NOW, query={"token": token})
    for token in ("", "other", "old-token, new-token", ","):
        with pytest.raises(CallbackUnauthenticated):
            verify("meshy", {}, body, rotating, NOW, query={"token": token})
    with pytest.raises(CallbacksNotConfigured):
        verify("meshy", {}, body, Settings(project="demo-unit", meshy_webhook_secret=" , "),
               NOW, query={"token": ""})


def test_task_keys_and_the_callback_url() -> None:
    assert [task_key("meshy", t) for t in ("text:abc", "image:abc", "refine:abc", "abc")] == ["abc"] * 4
    assert task_key("taskserver", "refine:abc") == "refine:abc"
    assert callback_url(SETTINGS, "meshy") == "https://kiln.example/v1/providers/meshy/events"
    assert callback_url(Settings(project="demo-unit"), "meshy") == ""


@pytest.mark.parametrize(("secret", "expected"), [
    (SECRET, "https://kiln.example/v1/providers/taskserver/events"), ("", None)])
def test_taskserver_asks_for_callbacks_only_where_it_can_verify_them(
        secret: str, expected: str | None) -> None:
    import httpx

    from kiln.providers.base import GenerationRequest
    from kiln.providers.taskserver import TaskServerProvider

    sent: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(202, json={"task_id": "t-1"})

    settings = Settings(project="demo-unit", taskserver_url="http://tasks.example",
                        public_url="https://kiln.example", taskserver_webhook_secret=secret)
    provider = TaskServerProvider(settings, client=httpx.Client(transport=httpx.MockTransport(answer)))
    assert provider.submit(GenerationRequest("job-1", "model", "a cube")) == "t-1"
    assert sent[0].get("callback_url") == expected


@pytest.mark.parametrize("task_id", ["a" * 3000, "a\ud800", "tab\there"])
def test_an_event_naming_an_id_kiln_cannot_index_is_malformed(task_id: str) -> None:
    """Given an authentic event whose task id is longer than a Firestore key takes, not
    valid Unicode, or not printable, then it is refused as malformed (400), not left to
    fail in the store (a 500)."""
    meshy = json.dumps({"id": task_id, "status": "SUCCEEDED"}).encode()
    with pytest.raises(MalformedCallback):
        verify("meshy", {}, meshy, SETTINGS, NOW, query={"token": "meshy-token"})
    body = event(task_id=task_id)
    with pytest.raises(MalformedCallback):
        verify("taskserver", signed(body), body, SETTINGS, NOW)


def test_a_signed_event_with_an_overlong_webhook_id_is_malformed() -> None:
    body = event()
    with pytest.raises(MalformedCallback):
        verify("taskserver", signed(body, msg_id="m" * 2000), body, SETTINGS, NOW)
    assert verify("taskserver", signed(body, msg_id="m" * 256), body, SETTINGS, NOW)


def test_a_meshy_progress_out_of_range_is_kept_within_it_in_the_event_id() -> None:
    """Given an authentic Meshy update whose progress is a 4000-digit number (or negative),
    then the event id holds it as 100 (or 0): the id stays a key Firestore takes."""
    for progress, shown in ((10**4000, 100), (-5, 0), (42, 42)):
        body = json.dumps({"id": "t-1", "status": "IN_PROGRESS", "progress": progress}).encode()
        [read] = verify("meshy", {}, body, SETTINGS, NOW, query={"token": "meshy-token"})
        assert read.event_id == f"t-1:IN_PROGRESS:{shown}"
