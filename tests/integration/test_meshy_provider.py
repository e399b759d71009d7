"""The Meshy adapter against the Meshy stand-in (real HTTP on 127.0.0.1), through the real
worker, on the answers and limits Meshy's docs give: failed tasks, moderation, its two
429s, the prompt limit, art styles and a sculpture's refine. The harness (an in-process
worker on the stack's emulators) is ``test_providers``'s."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_providers import LAST_JOB, Worker, build, run, stored

from kiln.core.errors import RetryableError
from kiln.settings import Settings
from kiln_dev.standins.provider import ProviderServer


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
    """The create bodies Meshy received for the prompt holding ``marker``, and their refines."""
    posts = [r["body"] for r in server.requests if r["method"] == "POST"
             and r["path"].startswith("/openapi/")]
    previews = [b for b in posts if marker in str(b.get("prompt") or b.get("image_url"))]
    ids = {server_id for server_id, task in server.tasks.items() if marker in task.prompt}
    return previews + [b for b in posts if b.get("preview_task_id") in ids]


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


def test_a_failed_meshy_refine_fails_the_job_instead_of_buying_a_new_preview(
        worker: Worker, settings: Settings, server: ProviderServer, uid: str) -> None:
    """Given a preview that succeeded and a refine that ends FAILED, then the job fails
    with a readable message and is not retried: a new attempt would start from a new,
    paid preview (Meshy refunds only the failed refine)."""
    outcome, job_id = run(worker, build("meshy", settings, server), uid, "a teapot [fail:refine]")
    job = worker.view(job_id)
    assert (outcome, job["error"]["code"], job["error"]["retryable"]) == \
        ("failed", "provider_failed", False)
    assert "textures" in job["error"]["message"] and "try again" in job["error"]["message"]


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


@pytest.mark.parametrize("style, art_style, pbr, provenance", [
    ("sculpture", "sculpture", False, {"artStyle": "sculpture"}),
    ("Realistic", "realistic", True, {"artStyle": "realistic"}),
    ("watercolor", None, True, {"styleIgnored": True}),  # Meshy takes no other style
])
def test_a_style_is_sent_only_as_an_art_style_meshy_takes(
        worker: Worker, settings: Settings, server: ProviderServer, uid: str,
        style: str, art_style: str | None, pbr: bool, provenance: dict[str, Any]) -> None:
    """Given a job's free-text style, then the preview carries it as art_style only when it
    is one Meshy takes (else the job still completes, the style noted as ignored), and a
    sculpture's refine turns PBR off as Meshy requires."""
    marker = uuid.uuid4().hex
    outcome, job_id = run(worker, build("meshy", settings, server), uid, f"a bust {marker}",
                          options={"style": style})
    job = worker.view(job_id)
    assert outcome == "completed", job.get("error")
    preview, refine = creates(server, marker)
    assert preview.get("art_style") == art_style
    assert refine["mode"] == "refine" and refine["enable_pbr"] is pbr
    assert {k: job["provenance"][k] for k in provenance} == provenance
