"""``POST /v1/providers/<provider>/events`` through the deployed ingress function (the
functions-framework test client, the real Firestore emulator behind it)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import functions_framework
import pytest
from standardwebhooks.webhooks import Webhook

import kiln_dev.functions
from kiln.compose import reset_services
from kiln_dev.stack import REPO

SECRET = "whsec_" + "ZnVuY3Rpb25zLXRlc3Qtc2VjcmV0LW5vdC1yZWFsLW9uZQ=="
MESHY_TOKEN = "meshy-functions-token"


@pytest.fixture(scope="module")
def ingress(stack: Any) -> Iterator[Any]:
    """The ingress with both providers' callback secrets in its environment."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in stack.client_env().items():
            patch.setenv(key, value)
        patch.setenv("KILN_TASKSERVER_WEBHOOK_SECRET", SECRET)
        patch.setenv("KILN_MESHY_WEBHOOK_SECRET", MESHY_TOKEN)
        reset_services()
        kiln_dev.functions.reset_services()
        yield functions_framework.create_app(
            target="ingress", source=str(REPO / "functions" / "ingress" / "main.py"),
            signature_type="http").test_client()
    reset_services()
    kiln_dev.functions.reset_services()


def post(ingress: Any, body: bytes, *, status: str = "succeeded", msg_id: str | None = None,
         secret: str = SECRET) -> Any:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.UTC)
    return ingress.post("/v1/providers/taskserver/events", data=body, headers={
        "Content-Type": "application/json", "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body)})


def ended(task_id: str, status: str = "succeeded") -> bytes:
    kind = "task.ended" if status in ("succeeded", "failed") else "task.progress"
    return json.dumps({"type": kind, "task_id": task_id, "status": status}).encode()


def test_a_signed_end_is_accepted_once_and_progress_is_ignored(ingress: Any) -> None:
    """A signed end answers accepted (remembered, its task not linked yet); the same
    delivery again answers duplicate; a progress event answers ignored."""
    task_id, msg_id = f"task-{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    first = post(ingress, ended(task_id), msg_id=msg_id)
    assert first.status_code == 200 and first.get_json() == {"status": "accepted"}
    again = post(ingress, ended(task_id), msg_id=msg_id)
    assert again.status_code == 200 and again.get_json() == {"status": "duplicate"}
    progress = post(ingress, ended(task_id, "running"))
    assert progress.get_json() == {"status": "ignored"}


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"code", "message"}
    return error  # type: ignore[no-any-return]


def test_refusals_answer_4xx_in_the_error_shape(ingress: Any) -> None:
    """Forged → 401, unknown provider → 404, malformed → 400, oversized → 413; no answer
    repeats a secret."""
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLXRoZS1zYW1lLWxlbmd0aA=="
    forged = error_of(post(ingress, ended("t"), secret=other), 401)
    assert forged["code"] == "bad_signature"
    assert error_of(ingress.post("/v1/providers/replicate/events", data=b"{}"), 404)
    assert error_of(post(ingress, b"{not json"), 400)["code"] == "invalid_event"
    assert error_of(post(ingress, b" " * (64 * 1024 + 1)), 413)["code"] == "body_too_large"
    meshy = json.dumps({"id": "m", "status": "SUCCEEDED", "progress": 100}).encode()
    wrong = ingress.post("/v1/providers/meshy/events?token=nope", data=meshy)
    assert MESHY_TOKEN not in wrong.get_data(as_text=True)
    assert error_of(wrong, 401)["code"] == "bad_token"
    right = ingress.post(f"/v1/providers/meshy/events?token={MESHY_TOKEN}", data=meshy)
    assert right.status_code == 200 and right.get_json()["status"] in ("accepted", "duplicate")
