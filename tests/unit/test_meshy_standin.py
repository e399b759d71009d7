"""The Meshy stand-in speaks Meshy API v2 as it is once v1 stops (March 15, 2027): one-call
creates answering the task object, every task read and deleted under
``/openapi/v2/tasks/{id}``, v1's routes gone, v2's 400 for a parameter an endpoint does
not define, its texture and model rules, flat errors, ``Retry-After`` only on
``rate_limit_exceeded``, and webhooks posting the task object (checked over HTTP, as
Kiln's adapter sees it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln_dev.standins import meshy_wire
from kiln_dev.standins.provider import ProviderServer
from support import Receiver, wait_for

TEXT, IMAGE, TASKS = "/openapi/v2/text-to-3d", "/openapi/v2/image-to-3d", "/openapi/v2/tasks"
CAT = "https://example.com/cat.png"
TASK_KEYS = {"id", "type", "status", "progress", "created_at", "started_at", "finished_at",
             "expires_at", "preceding_tasks", "consumed_credits", "task_error", "input", "output"}


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


def text(meshy: httpx.Client, prompt: str = "a mug", **extra: Any) -> httpx.Response:
    """A textured one-call text-to-3D create."""
    return meshy.post(TEXT, json={"prompt": prompt, "texture_model": "meshy-7", **extra})


def image(meshy: httpx.Client, url: str = CAT, **extra: Any) -> httpx.Response:
    return meshy.post(IMAGE, json={"image_url": url, "texture_model": "meshy-7", **extra})


def reaches(meshy: httpx.Client, task_id: str, status: str) -> dict[str, Any]:
    """The task once it has ``status`` (probed: the stand-in runs it in real time)."""
    return wait_for(lambda: (t := meshy.get(f"{TASKS}/{task_id}").json())["status"] == status
                    and t, timeout=10, what=f"the task to be {status}")


def flat(code: str, type_: str = "invalid_input") -> dict[str, str]:
    return {"type": type_, "code": code}


def picked(answer: httpx.Response) -> tuple[int, dict[str, str]]:
    """(status, the error's type and code), the error being Meshy's four flat fields."""
    body = answer.json()
    assert set(body) == {"type", "code", "message", "doc_url"} and body["message"], body
    return answer.status_code, {"type": body["type"], "code": body["code"]}


# --- creating and reading -------------------------------------------------------------


def test_one_text_call_makes_the_model(meshy: httpx.Client) -> None:
    """Given a one-call text-to-3D request, then the create answers 202 with the PENDING
    task object (request echoed in input, no output yet), and the task found under
    /openapi/v2/tasks/{id} runs to SUCCEEDED with a downloadable GLB, its thumbnail, its
    credits and its times in epoch milliseconds."""
    body = {"prompt": "a mug [slow:0.5]", "texture_model": "meshy-7", "ai_model": "meshy-7.1",
            "enable_pbr": True, "seed": 7, "target_formats": ["glb"]}
    created = meshy.post(TEXT, json=body)
    assert created.status_code == 202
    task = created.json()
    assert set(task) == TASK_KEYS
    assert (task["type"], task["status"], task["input"], task["output"]) == \
        ("text-to-3d", "PENDING", body, None)
    done = reaches(meshy, task["id"], "SUCCEEDED")
    assert (done["id"], done["progress"], done["input"], done["task_error"]) == \
        (task["id"], 100, body, None)
    assert done["consumed_credits"] == 20 and done["preceding_tasks"] == 0
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] < done["expires_at"]
    assert done["created_at"] > 1_700_000_000_000  # milliseconds, not seconds
    glb = httpx.get(done["output"]["model_urls"]["glb"])
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    assert httpx.get(done["output"]["thumbnail_url"]).content[:4] == b"\x89PNG"
    assert done["output"]["texture_urls"] == []


def test_a_pending_task_is_queued_without_times_or_output(meshy: httpx.Client) -> None:
    """Given a task that has not started, then it is PENDING: a place in the queue, no
    start, end or expiry, no credits, no output."""
    task = meshy.get(f"{TASKS}/{text(meshy, 'a mug [slow:30]').json()['id']}").json()
    assert task["status"] == "PENDING" and task["preceding_tasks"] >= 1
    assert [task[k] for k in ("started_at", "finished_at", "expires_at", "output")] == [None] * 4
    assert (task["progress"], task["consumed_credits"]) == (0, 0)


def test_an_untextured_text_task_needs_no_texture_model_and_still_yields_a_glb(
        meshy: httpx.Client) -> None:
    created = meshy.post(TEXT, json={"prompt": "a bare mug", "should_texture": False})
    assert created.status_code == 202
    done = reaches(meshy, created.json()["id"], "SUCCEEDED")
    assert done["output"]["texture_urls"] is None
    assert httpx.get(done["output"]["model_urls"]["glb"]).content[:4] == b"glTF"


def test_an_image_task_is_read_under_the_same_tasks_route(meshy: httpx.Client) -> None:
    created = image(meshy, enable_pbr=False)
    assert created.status_code == 202 and created.json()["type"] == "image-to-3d"
    done = reaches(meshy, created.json()["id"], "SUCCEEDED")
    assert done["input"] == {"image_url": CAT, "texture_model": "meshy-7", "enable_pbr": False}
    assert done["consumed_credits"] == 30
    assert httpx.get(done["output"]["model_urls"]["glb"]).content[:4] == b"glTF"


def test_an_image_task_may_start_from_an_input_task_instead_of_an_image(
        meshy: httpx.Client) -> None:
    source = text(meshy).json()["id"]
    created = meshy.post(IMAGE, json={"input_task_id": source, "should_texture": False})
    assert created.status_code == 202
    assert created.json()["input"] == {"input_task_id": source, "should_texture": False}


def test_the_result_tokens_still_shape_the_file(meshy: httpx.Client) -> None:
    """Given [size:N] and [redirect], then the GLB is N bytes, and its URL redirects once to
    the real file."""
    sized = reaches(meshy, text(meshy, "a mug [size:100k]").json()["id"], "SUCCEEDED")
    assert len(httpx.get(sized["output"]["model_urls"]["glb"]).content) == 100 * 1024
    moved = reaches(meshy, image(meshy, "https://example.com/c[redirect].png").json()["id"],
                    "SUCCEEDED")
    answer = httpx.get(moved["output"]["model_urls"]["glb"])
    assert answer.status_code == 302 and answer.headers["Location"].endswith(".glb.1")


# --- what v2 refuses ------------------------------------------------------------------


@pytest.mark.parametrize("path, extra, key", [
    (TEXT, {"mode": "preview"}, "mode"),
    (TEXT, {"art_style": "realistic"}, "art_style"),
    (TEXT, {"preview_task_id": "abc"}, "preview_task_id"),
    (IMAGE, {"model_type": "standard"}, "model_type"),
    (IMAGE, {"seed": 3}, "seed"),  # text-to-3D's, not image-to-3D's
])
def test_a_parameter_the_endpoint_does_not_define_is_a_400(
        server: ProviderServer, meshy: httpx.Client, path: str, extra: dict[str, Any],
        key: str) -> None:
    before = len(server.tasks)
    answer = (text if path == TEXT else image)(meshy, **extra)
    assert picked(answer) == (400, flat("unknown_parameter"))
    assert answer.json()["message"] == f"{key} is not a parameter of this endpoint."
    assert len(server.tasks) == before


@pytest.mark.parametrize("path, body", [
    (TEXT, {"prompt": "a mug"}),
    (TEXT, {"prompt": "a mug", "should_texture": True, "texture_model": ""}),
    (IMAGE, {"image_url": CAT}),
])
def test_a_textured_request_needs_a_texture_model(meshy: httpx.Client, path: str,
                                                  body: dict[str, Any]) -> None:
    assert picked(meshy.post(path, json=body)) == (400, flat("missing_parameter"))


@pytest.mark.parametrize("path", [TEXT, IMAGE])
def test_a_texture_prompt_and_a_texture_image_conflict(meshy: httpx.Client, path: str) -> None:
    both = {"texture_prompt": "rusty", "texture_image_url": CAT}
    answer = (text if path == TEXT else image)(meshy, **both)
    assert (answer.status_code, answer.json()) == (400, {
        "type": "invalid_input", "code": "parameters_conflict",
        "message": "texture_prompt and texture_image_url are mutually exclusive",
        "doc_url": None})


@pytest.mark.parametrize("model", ["meshy-7", "meshy-5", "meshy-4", "meshy-local"])
def test_a_retired_or_unknown_generation_model_is_a_400(meshy: httpx.Client, model: str) -> None:
    """Given meshy-7 (retired for generation on Dec 31, 2026, though still a texture
    model), meshy-5, meshy-4 or a model Meshy never had, then the create is refused and
    names it."""
    for answer in (text(meshy, ai_model=model), image(meshy, ai_model=model)):
        assert picked(answer) == (400, flat("invalid_parameter"))
        assert model in answer.json()["message"]


@pytest.mark.parametrize("model", meshy_wire.ACTIVE_MODELS)
def test_an_active_generation_model_is_taken(meshy: httpx.Client, model: str) -> None:
    assert text(meshy, ai_model=model).status_code == 202
    assert image(meshy, ai_model=model).status_code == 202


def test_a_prompt_is_at_most_600_characters(server: ProviderServer, meshy: httpx.Client) -> None:
    before = len(server.tasks)
    assert picked(text(meshy, "a" * 601)) == (400, flat("invalid_parameter"))
    assert len(server.tasks) == before
    assert text(meshy, "a" * 600).status_code == 202


@pytest.mark.parametrize("path, body", [
    (TEXT, {"texture_model": "meshy-7"}),
    (TEXT, {"prompt": "", "texture_model": "meshy-7"}),
    (IMAGE, {"texture_model": "meshy-7"}),
])
def test_the_prompt_or_image_is_required(meshy: httpx.Client, path: str,
                                         body: dict[str, Any]) -> None:
    assert picked(meshy.post(path, json=body)) == (400, flat("invalid_parameter"))


def test_v1_routes_and_per_type_reads_are_gone(meshy: httpx.Client) -> None:
    """Given a text and an image task, then every route but /openapi/v2/tasks/{id} (v1's,
    v2's per-type reads and deletes) answers 404 route_not_found, and the tasks stay."""
    ids = [text(meshy).json()["id"], image(meshy).json()["id"]]
    gone = [("GET", f"{TEXT}/{ids[0]}"), ("DELETE", f"{TEXT}/{ids[0]}"),
            ("GET", f"/openapi/v2/image-to-3d/{ids[1]}"), ("GET", f"/openapi/v1/image-to-3d/{ids[1]}"),
            ("DELETE", f"/openapi/v1/image-to-3d/{ids[1]}"), ("GET", f"/openapi/v1/text-to-3d/{ids[0]}"),
            ("POST", "/openapi/v1/image-to-3d"), ("POST", TASKS), ("GET", f"{TASKS}/{ids[0]}/stream")]
    for method, path in gone:
        answer = meshy.request(method, path, json={"image_url": CAT} if method == "POST" else None)
        assert (answer.status_code, answer.json()) == (404, {
            "type": "not_found", "code": "route_not_found",
            "message": "NoMatchingRoute: Please double check the path and method",
            "doc_url": None}), (method, path)
    assert [meshy.get(f"{TASKS}/{i}").status_code for i in ids] == [200, 200]


def test_an_unknown_task_is_not_found(meshy: httpx.Client) -> None:
    answer = meshy.get(f"{TASKS}/0190a8e4-0000-7000-8000-000000000000")
    assert (answer.status_code, answer.json()) == (404, {
        "type": "not_found", "code": "not_found", "message": "Task not found.", "doc_url": None})


def test_a_wrong_key_is_a_flat_401(server: ProviderServer) -> None:
    answer = httpx.post(f"{server.url}{TEXT}", headers={"Authorization": "Bearer nope"},
                        json={"prompt": "a mug", "texture_model": "meshy-7"})
    assert picked(answer) == (401, flat("http_401", "unauthorized"))


# --- deleting -------------------------------------------------------------------------


def test_deleting_a_pending_task_deletes_it(server: ProviderServer, meshy: httpx.Client) -> None:
    task_id = text(meshy, "a mug [slow:30]").json()["id"]
    answer = meshy.delete(f"{TASKS}/{task_id}")
    assert (answer.status_code, answer.json()) == (200, {})
    assert meshy.get(f"{TASKS}/{task_id}").json()["code"] == "not_found"
    assert server.cancels.count(task_id) == 1
    assert meshy.delete(f"{TASKS}/{task_id}").status_code == 404  # once only


def test_deleting_a_running_task_is_refused_and_it_runs_on(server: ProviderServer,
                                                            meshy: httpx.Client) -> None:
    task_id = reaches(meshy, text(meshy, "a mug [slow:3]").json()["id"], "IN_PROGRESS")["id"]
    answer = meshy.delete(f"{TASKS}/{task_id}")
    assert (answer.status_code, answer.json()) == (400, {
        "type": "invalid_input", "code": "task_in_progress",
        "message": "A task that is in progress cannot be deleted.", "doc_url": None})
    assert task_id not in server.cancels
    assert reaches(meshy, task_id, "SUCCEEDED")["output"]["model_urls"]["glb"]


@pytest.mark.parametrize("prompt, status", [("a mug", "SUCCEEDED"), ("a mug [fail:task]", "FAILED")])
def test_deleting_an_ended_task_deletes_it_and_its_files(
        server: ProviderServer, meshy: httpx.Client, prompt: str, status: str) -> None:
    task_id = reaches(meshy, text(meshy, prompt).json()["id"], status)["id"]
    assert meshy.delete(f"{TASKS}/{task_id}").status_code == 200
    assert meshy.get(f"{TASKS}/{task_id}").status_code == 404
    assert httpx.get(f"{server.url}/files/{task_id}.glb").status_code == 404
    assert task_id in server.cancels


# --- forced failures ------------------------------------------------------------------


@pytest.mark.parametrize("token, code, retry_after", [
    ("[fail:429]", "rate_limit_exceeded", "7"),
    ("[fail:pending-limit]", "pending_task_limit_reached", None),
])
def test_only_the_request_rate_limit_carries_retry_after(
        meshy: httpx.Client, token: str, code: str, retry_after: str | None) -> None:
    """Given Meshy's two 429s, then both are v2 errors of type rate_limited, and only
    rate_limit_exceeded says when to come back (a full task queue clears when a task ends)."""
    answer = text(meshy, f"a cup {token}")
    assert picked(answer) == (429, flat(code, "rate_limited"))
    assert answer.headers.get("Retry-After") == retry_after


def test_a_moderation_refusal_is_a_403_of_type_invalid_input(meshy: httpx.Client) -> None:
    for answer in (text(meshy, "a vase [fail:moderation]"), image(meshy, "/v[fail:moderation].png")):
        assert picked(answer) == (403, flat("moderation_blocked_nsfw"))


@pytest.mark.parametrize("token, status, error", [
    ("[fail:503]", 503, flat("http_503", "server_error")),
    ("[fail:402]", 402, flat("http_402", "payment_required")),
])
def test_a_forced_status_is_a_flat_error(meshy: httpx.Client, token: str, status: int,
                                         error: dict[str, str]) -> None:
    assert picked(text(meshy, f"a cup {token}")) == (status, error)


@pytest.mark.parametrize("token, error", [
    ("[fail:refused]", meshy_wire.MODERATION),
    ("[fail:input]", {"type": "invalid_input", "code": "invalid_image",
                      "message": "The input image could not be processed.", "doc_url": None}),
    ("[fail:task]", {"type": "server_error", "code": "generation_failed",
                     "message": "The model could not be generated; please try again.",
                     "doc_url": None}),
])
def test_a_failed_task_says_why_in_its_task_error(
        meshy: httpx.Client, token: str, error: dict[str, Any]) -> None:
    for created in (text(meshy, f"a jug {token}"), image(meshy, f"/jug-{token}.png")):
        task = reaches(meshy, created.json()["id"], "FAILED")
        assert task["task_error"] == error
        assert (task["output"], task["consumed_credits"]) == (None, 0)
        assert task["finished_at"] is not None


# --- webhooks -------------------------------------------------------------------------


def test_a_webhook_delivers_the_v2_task_object_with_the_token() -> None:
    """Given a webhook (payload version v2) and two tasks, one deleted while PENDING, then
    the other's end arrives as the task object GET /openapi/v2/tasks/{id} gives, the
    secret as ?token=, and the deleted one sends nothing (its end was due first)."""
    receiver = Receiver()
    server = ProviderServer(task_seconds=0.3, meshy_webhook_secret="meshy-standin-token",
                            meshy_webhook_url=receiver.url).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10,
                          headers={"Authorization": f"Bearer {server.api_key}"}) as meshy:
            deleted = text(meshy, "a mug [slow:2] [queued:1.5]").json()["id"]  # (deletable)
            assert meshy.delete(f"{TASKS}/{deleted}").status_code == 200
            kept = text(meshy, "a cup [slow:2.5]").json()["id"]
            [(query, _headers, raw)] = receiver.wait(1)
            body = json.loads(raw)
            assert body == meshy.get(f"{TASKS}/{kept}").json()
        assert server.meshy_webhooks is not None
        assert [s.task_id for s in server.meshy_webhooks.sent] == [kept]
    finally:
        server.stop()
        receiver.stop()
    assert query == {"token": "meshy-standin-token"}
    assert set(body) == TASK_KEYS and (body["id"], body["status"]) == (kept, "SUCCEEDED")
    assert body["output"]["model_urls"]["glb"].endswith(f"/files/{kept}.glb")
