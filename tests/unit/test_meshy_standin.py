"""The Meshy stand-in speaks Meshy's protocol as its docs give it: create answers 202, a
task lives under its own path only, v2 error bodies, ``Retry-After`` only on
``rate_limit_exceeded``, and the requests Meshy refuses (checked over HTTP, as Kiln's
adapter sees it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln_dev.standins.provider import ProviderServer
from support import wait_for

TEXT, IMAGE = "/openapi/v2/text-to-3d", "/openapi/v1/image-to-3d"


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    running = ProviderServer(task_seconds=0.2).start()
    yield running
    running.stop()


@pytest.fixture
def meshy(server: ProviderServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as client:
        yield client


def preview(meshy: httpx.Client, prompt: str = "a mug", **extra: Any) -> httpx.Response:
    return meshy.post(TEXT, json={"mode": "preview", "prompt": prompt, **extra})


def succeeded(meshy: httpx.Client, path: str, task_id: str) -> dict[str, Any]:
    """The task once it succeeded (probed, the stand-in runs it in real time)."""
    return wait_for(lambda: (t := meshy.get(f"{path}/{task_id}").json())["status"] == "SUCCEEDED"
                    and t, timeout=10, what="the task to succeed")


def test_creating_a_task_answers_202_with_its_id(meshy: httpx.Client) -> None:
    """Given Meshy's docs (a create call answers 202 Accepted), when a preview, a refine
    and an image task are created, then each answers 202 {"result": id}."""
    first = preview(meshy)
    image = meshy.post(IMAGE, json={"image_url": "https://example.com/cat.png"})
    assert (first.status_code, image.status_code) == (202, 202)
    succeeded(meshy, TEXT, first.json()["result"])
    refine = meshy.post(TEXT, json={"mode": "refine", "preview_task_id": first.json()["result"]})
    assert refine.status_code == 202 and refine.json()["result"]


def test_a_task_is_found_only_under_its_own_path(meshy: httpx.Client) -> None:
    """Given a text task and an image task, then each is served under its own path only:
    the other kind's path and the other API version answer a v2 404."""
    text = preview(meshy).json()["result"]
    image = meshy.post(IMAGE, json={"image_url": "https://example.com/cat.png"}).json()["result"]
    assert meshy.get(f"{TEXT}/{text}").status_code == 200
    assert meshy.get(f"{IMAGE}/{image}").status_code == 200
    for path in (f"{IMAGE}/{text}", "/openapi/v1/text-to-3d/" + text, f"{TEXT}/{image}",
                 "/openapi/v2/image-to-3d/" + image):
        answer = meshy.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["type"] == "not_found"
    assert meshy.delete(f"{IMAGE}/{text}").status_code == 404


@pytest.mark.parametrize("token, code, retry_after", [
    ("[fail:429]", "rate_limit_exceeded", "7"),
    ("[fail:pending-limit]", "pending_task_limit_reached", None),
])
def test_only_the_request_rate_limit_carries_retry_after(
        meshy: httpx.Client, token: str, code: str, retry_after: str | None) -> None:
    """Given Meshy's two 429s, then both are v2 errors of type rate_limited, and only
    rate_limit_exceeded says when to come back (a full task queue clears when a task ends)."""
    answer = preview(meshy, f"a cup {token}")
    assert answer.status_code == 429
    assert (answer.json()["type"], answer.json()["code"]) == ("rate_limited", code)
    assert answer.headers.get("Retry-After") == retry_after


def test_a_moderation_refusal_is_a_403_of_type_invalid_input(meshy: httpx.Client) -> None:
    answer = preview(meshy, "a vase [fail:moderation]")
    assert answer.status_code == 403
    body = answer.json()
    assert (body["type"], body["code"]) == ("invalid_input", "moderation_blocked_nsfw")
    assert body["message"] and set(body) == {"type", "code", "message", "doc_url"}


@pytest.mark.parametrize("token, error", [
    ("[fail:refused]", {"type": "invalid_input", "code": "moderation_blocked_nsfw"}),
    ("[fail:input]", {"type": "invalid_input", "code": "invalid_image"}),
    ("[fail:task]", {}),  # a pipeline failure: a message only
])
def test_a_failed_task_says_why_in_its_task_error(
        meshy: httpx.Client, token: str, error: dict[str, str]) -> None:
    task_id = preview(meshy, f"a jug {token}").json()["result"]
    task = wait_for(lambda: (t := meshy.get(f"{TEXT}/{task_id}").json())["status"] == "FAILED"
                    and t, timeout=10, what="the task to fail")
    assert task["task_error"]["message"]
    assert {k: task["task_error"][k] for k in ("type", "code") if k in task["task_error"]} == error


@pytest.mark.parametrize("body", [
    {"prompt": "a" * 601},
    {"prompt": "a bowl", "art_style": "watercolor"},
])
def test_a_preview_meshy_would_refuse_is_a_400(server: ProviderServer, meshy: httpx.Client,
                                              body: dict[str, Any]) -> None:
    """Given a prompt over Meshy's 600 characters, or an art_style it does not take, then the
    create answers 400 invalid_input and starts no task (600 characters and a style it
    takes start one)."""
    before = len(server.tasks)
    answer = meshy.post(TEXT, json={"mode": "preview", **body})
    assert answer.status_code == 400 and answer.json()["type"] == "invalid_input"
    assert len(server.tasks) == before
    assert preview(meshy, "a" * 600, art_style="sculpture").status_code == 202


def test_a_sculpture_refine_needs_pbr_off(meshy: httpx.Client) -> None:
    """Given a sculpture preview (whose task object says so), then its refine with
    enable_pbr true answers 400 parameters_conflict, and with false starts."""
    task_id = preview(meshy, "a bust", art_style="sculpture").json()["result"]
    assert succeeded(meshy, TEXT, task_id)["art_style"] == "sculpture"
    refine = {"mode": "refine", "preview_task_id": task_id}
    refused = meshy.post(TEXT, json={**refine, "enable_pbr": True})
    assert (refused.status_code, refused.json()["code"]) == (400, "parameters_conflict")
    assert meshy.post(TEXT, json={**refine, "enable_pbr": False}).status_code == 202
