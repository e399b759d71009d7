"""The Meshy adapter against the Meshy stand-in (real HTTP on 127.0.0.1, Meshy's API v2 as
it is after v1 and the preview/refine requests stop on 15 March 2027), through the real
worker, on the answers and limits Meshy's docs give: failed tasks, moderation, its two
429s, the prompt limit, styles, remote cancels, and task ids saved before API v2. The
harness (an in-process worker on the stack's emulators) is ``test_providers``'s."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_providers import LAST_JOB, Worker, build, run, stored

from kiln.core.errors import PermanentError, RetryableError
from kiln.providers.base import GenerationRequest, TaskState
from kiln.providers.meshy import MeshyProvider
from kiln.settings import Settings
from kiln_dev.standins.provider import ProviderServer
from support import wait_for


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    running = ProviderServer(task_seconds=0.5).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def settings(stack: Any, server: ProviderServer) -> Settings:
    return Settings.from_env({**stack.client_env(), **server.env()})


@pytest.fixture(scope="module")
def worker(stack: Any) -> Worker:
    return Worker(stack, project="demo-providers")  # the stack's own worker never sees these


def creates(server: ProviderServer, marker: str) -> list[dict[str, Any]]:
    """The create bodies Meshy received for the prompt (or image URL) holding ``marker``."""
    return [r["body"] for r in server.requests if r["method"] == "POST"
            and r["path"].startswith("/openapi/")
            and marker in str(r["body"].get("prompt") or r["body"].get("image_url"))]


def finished(provider: MeshyProvider, task_id: str) -> None:
    """Wait (polling, as the worker does) until the remote task has succeeded."""
    wait_for(lambda: provider.poll(task_id).state is TaskState.SUCCEEDED,
             what="the stand-in's task to finish")


def test_a_failed_meshy_task_is_retried_with_a_new_task(
        worker: Worker, settings: Settings, server: ProviderServer, uid: str) -> None:
    """Given Meshy's help (a failure from busy servers or a pipeline error is usually
    transient, and its credits are refunded), when the remote task ends FAILED with no
    moderation or input error, then the attempt is released: the job waits to retry,
    retryable, the failed task forgotten so the next attempt starts a new one."""
    with pytest.raises(RetryableError) as caught:
        run(worker, build("meshy", settings, server), uid, "a teapot [fail:task]")
    assert caught.value.code == "provider_failed"
    job = worker.view(LAST_JOB[uid])
    assert (job["status"], job["attempts"], job["error"]["code"]) == ("pending", 1, "provider_failed")
    assert job["error"]["retryable"] is True
    assert "could not make this model" in job["error"]["message"]
    assert not worker.store.get(LAST_JOB[uid]).server.provider_task_id


def test_task_ids_saved_before_api_v2_are_read_through_the_tasks_route(
        settings: Settings, server: ProviderServer) -> None:
    """Given jobs saved by the release before API v2, whose task ids name a stage
    (``preview:``, ``refine:``, ``mesh:``), then each is read through
    ``/openapi/v2/tasks/{id}``: a finished refine or mesh gives its GLB, while a finished
    preview (an untextured mesh whose refine Kiln no longer makes) starts the job over,
    retryable, instead of delivering a model without textures."""
    provider = build("meshy", settings, server)
    remote = provider.submit(GenerationRequest("job-legacy", "model", "a kettle")).partition(":")[2]
    finished(provider, f"text:{remote}")
    preview = provider.poll(f"preview:{remote}")
    assert (preview.state, preview.error_code, preview.retryable) == \
        (TaskState.FAILED, "provider_task_lost", True)
    for stage in ("refine", "mesh"):
        assert provider.poll(f"{stage}:{remote}").state is TaskState.SUCCEEDED
        artifact = provider.fetch(f"{stage}:{remote}", GenerationRequest("job-legacy", "model", "a kettle"))
        assert b"".join(artifact.chunks)[:4] == b"glTF"


def test_a_canceled_job_deletes_its_pending_meshy_task(
        settings: Settings, server: ProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a task still queued at Meshy, when its job is canceled, then Kiln deletes it
    through ``DELETE /openapi/v2/tasks/{id}`` (Meshy refunds a pending task); a task
    already in progress cannot be deleted, and that refusal is permanent, not retried."""
    monkeypatch.setattr(server, "task_seconds", 30.0)
    provider = build("meshy", settings, server)
    queued = provider.submit(GenerationRequest("job-cancel", "model", "a vase"))
    provider.cancel(queued)
    assert server.cancels[-1] == queued.partition(":")[2]
    assert provider.poll(queued).error_code == "provider_task_lost"  # gone: 404
    running = provider.submit(GenerationRequest("job-cancel", "model", "a cup"))
    wait_for(lambda: provider.poll(running).state is TaskState.RUNNING, interval=0.05,
             what="the stand-in's task to run")
    with pytest.raises(PermanentError):
        provider.cancel(running)
    assert provider.poll(running).state is TaskState.RUNNING


@pytest.mark.parametrize("prompt, options, code, says", [
    # refused at create: 403 with Meshy's moderation code
    ("a statue [fail:moderation]", {}, "content_refused", "rephrase"),
    # refused by the task: its task_error is moderation, or an input Meshy cannot use
    ("a statue [fail:refused]", {}, "content_refused", "rephrase"),
    ("from a picture", {"imageUrl": "/cat-[fail:refused].png"}, "content_refused", "image"),
    ("from a picture", {"imageUrl": "/cat-[fail:input].png"}, "provider_rejected",
     "could not be processed"),
    # a real credentials failure stays one
    ("a statue [fail:403]", {}, "provider_auth", "credentials"),
])
def test_refusals_fail_the_job_with_what_to_do(
        worker: Worker, settings: Settings, server: ProviderServer, uid: str,
        prompt: str, options: dict[str, Any], code: str, says: str) -> None:
    if "imageUrl" in options:
        options = {"imageUrl": server.url + options["imageUrl"]}
    outcome, job_id = run(worker, build("meshy", settings, server), uid, prompt, options=options)
    job = worker.view(job_id)
    assert (outcome, job["error"]["code"], job["error"]["retryable"]) == ("failed", code, False)
    assert says in job["error"]["message"].lower()
    assert stored(worker, uid, job_id) == []


def test_a_full_task_queue_is_retried_without_a_made_up_wait(
        worker: Worker, settings: Settings, server: ProviderServer, uid: str) -> None:
    """Given Meshy's pending_task_limit_reached (a 429 with no Retry-After: it clears when
    one of the account's tasks ends), then the job waits to retry on Kiln's own backoff."""
    with pytest.raises(RetryableError) as caught:
        run(worker, build("meshy", settings, server), uid, "a lamp [fail:pending-limit]")
    assert (caught.value.code, caught.value.retry_after) == ("provider_rate_limited", None)
    assert worker.view(LAST_JOB[uid])["status"] == "pending"


def test_a_prompt_over_meshys_limit_fails_before_any_paid_call(
        worker: Worker, settings: Settings, server: ProviderServer, uid: str) -> None:
    """Given a prompt Kiln accepts (up to 1000 characters) but Meshy does not (over 600),
    then the job fails at once saying so, and Meshy never heard of it."""
    marker = uuid.uuid4().hex
    prompt = f"{marker} " + "a very detailed castle " * 28  # 677 characters
    outcome, job_id = run(worker, build("meshy", settings, server), uid, prompt)
    job = worker.view(job_id)
    assert (outcome, job["error"]["code"]) == ("failed", "prompt_too_long")
    assert job["error"]["message"] == (
        "The 3D generation service takes prompts of up to 600 characters; this one has 677. "
        "Shorten it and try again.")
    assert creates(server, marker) == []


@pytest.mark.parametrize("options, textured", [
    ({"style": "sculpture"}, True),
    ({"texture": False}, False),
])
def test_what_a_text_to_3d_create_sends(
        worker: Worker, settings: Settings, server: ProviderServer, uid: str,
        options: dict[str, Any], textured: bool) -> None:
    """Given a job's options, then the one create call carries the pinned model, a
    textured model's texture model and PBR maps, and never ``mode`` or ``art_style``
    (deprecated, ignored since Meshy 6; API v2 refuses parameters it does not define):
    a style is noted in provenance as ignored, and the job completes."""
    marker = uuid.uuid4().hex
    outcome, job_id = run(worker, build("meshy", settings, server), uid, f"a bust {marker}",
                          options=options)
    job = worker.view(job_id)
    assert outcome == "completed", job.get("error")
    (create,) = creates(server, marker)
    assert create["ai_model"] == settings.meshy_model
    assert create["should_texture"] is textured
    assert ("texture_model" in create, create.get("enable_pbr")) == (textured, textured or None)
    assert not {"mode", "art_style"} & set(create)
    assert job["provenance"].get("styleIgnored", False) is ("style" in options)
