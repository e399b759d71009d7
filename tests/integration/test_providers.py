"""The real provider adapters against the local provider server, through the real worker.

Each test creates a job document in the emulated Firestore and runs ``kiln.runtime.worker.run_job``
in this process with the adapter under test, so the whole fetch → validate → upload path
runs against the Storage emulator. Failures are steered by prompt tokens (see
``kiln_dev.standins.provider``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.adapters.clock import utcnow
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import RetryableError
from kiln.core.job import new_job_id
from kiln.core.policy import PollCadence
from kiln.core.requests import JobRequest
from kiln.providers.base import Provider, TaskStatus
from kiln.providers.gemini import GeminiImageProvider
from kiln.providers.meshy import MeshyProvider
from kiln.providers.taskserver import TaskServerProvider
from kiln.runtime.worker import RunOutcome, run_job
from kiln.settings import Settings
from kiln_dev.fakes import FakeScheduler, InMemoryTaskIndex, RecordingQueue
from kiln_dev.standins.provider import ProviderServer


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    running = ProviderServer(task_seconds=0.5, gemini_seconds=0.1, hang_seconds=20).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def settings(stack: Any, server: ProviderServer) -> Settings:
    return Settings.from_env({**stack.client_env(), **server.env()})


class Worker:
    """An in-process worker on the stack's emulators, with the provider under test."""

    def __init__(self, stack: Any, project: str | None = None) -> None:
        self.stack = stack
        self.services = stack.services(**({"project": project} if project else {}))
        self.store, self.blobs = self.services.store, self.services.blobs

    def with_provider(self, provider: Provider) -> Services:
        """Services with ``provider``; checks and wake-ups stay in this process (a fake
        scheduler over a recording queue), so the stack's own worker never runs them."""
        settings = dataclasses.replace(self.services.settings, image_provider="under-test",
                                       model_provider="under-test")
        queue = RecordingQueue()
        return Services(settings, providers={"under-test": lambda _s: provider},
                        store=self.store, devices=self.services.devices, queue=queue,
                        scheduler=FakeScheduler(queue), task_index=InMemoryTaskIndex(),
                        blobs=self.blobs, push=self.services.push)

    def view(self, job_id: str) -> dict[str, Any]:
        """The job as a client reads it, with its provenance (for the assertions)."""
        job = self.store.get(job_id)
        assert job is not None
        return {**job.public_view(), "provenance": job.provenance}


@pytest.fixture(scope="module")
def worker_services(stack: Any) -> Worker:
    # A project of its own on the stack's emulators: the stack's sweeper never sees these
    # jobs, so it never re-publishes one (a released "[hang]" job, say) to the stack's own
    # worker, whose offline generator would hold one of its pushes for as long as it hangs.
    return Worker(stack, project="demo-providers")


@pytest.fixture(scope="module")
def api_worker(stack: Any) -> Worker:
    """The same, on the stack's own project: for jobs its HTTP API must see."""
    return Worker(stack)


FAST = PollCadence(first=0.1, factor=1.0, max=0.1)


def build(name: str, settings: Settings, server: ProviderServer, **kw: Any) -> Provider:
    if name == "meshy":
        return MeshyProvider(settings, cadence=FAST, **kw)
    if name == "taskserver":
        return TaskServerProvider(settings, cadence=FAST, **kw)
    return GeminiImageProvider(settings, base_url=server.url, **kw)


def kind_of(name: str) -> str:
    return "image" if name == "gemini" else "model"


LAST_JOB: dict[str, str] = {}  # uid → the job ``run`` made last


def run(services: Worker, provider: Provider, uid: str, prompt: str, kind: str = "model",
        options: dict[str, Any] | None = None) -> tuple[str, str]:
    """Create a pending job, run it in the worker with ``provider``; (outcome, job id)."""
    job_id = LAST_JOB[uid] = new_job_id(uid)
    composed = services.with_provider(provider)
    assert services.store.create(lifecycle.new_job(
        job_id=job_id, uid=uid, channel="api", request=JobRequest(kind, prompt, options or {}),
        now=utcnow(), policy=composed.policy))
    return drive(composed, job_id), job_id


def drive(composed: Services, job_id: str, limit: int = 200) -> RunOutcome:
    """Run the first delivery, then each check the worker sends, when it is due (the
    provider's task runs in real time on the stand-in), until the job stops waiting."""
    queue, scheduler = composed.queue, composed.scheduler
    assert isinstance(queue, RecordingQueue) and isinstance(scheduler, FakeScheduler)
    outcome, seen = run_job(job_id, composed), len(queue.deliveries)
    ran: list[tuple[str, int | None, RunOutcome]] = [(job_id, None, outcome)]
    for _ in range(limit):
        if outcome is not RunOutcome.WAITING:
            return outcome
        if len(queue.deliveries) == seen:  # the next check is scheduled: wait until it is due
            due = scheduler.next_at()
            if due is None:
                job = composed.store.get(job_id)
                raise AssertionError(
                    f"a waiting job without a check: ran {ran}, scheduled {sorted(scheduler.names)}, "
                    f"server {job.server if job else None}")
            time.sleep(max(0.0, (due - utcnow()).total_seconds()))
            scheduler.fire(due)
        delivery, seen = queue.deliveries[seen], seen + 1
        outcome = run_job(delivery.job_id, composed, check=delivery.check)
        ran.append((delivery.job_id, delivery.check, outcome))
    raise AssertionError(f"still waiting after {limit} checks")


def stored(services: Worker, uid: str, job_id: str) -> list[str]:
    return services.blobs.list(f"generations/{uid}/{job_id}/")


# --- success ---------------------------------------------------------------------------


def test_meshy_text_to_3d_completes_in_one_v2_task_with_progress(
        worker_services: Any, settings: Settings, server: ProviderServer, uid: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given Meshy, whose polls are recorded, and whose task lasts 2 s: a poll sees it
    # running however slow the job's first delivery is on a busy machine
    monkeypatch.setattr(server, "task_seconds", 2.0)
    provider = build("meshy", settings, server)
    seen: list[TaskStatus] = []
    poll = provider.poll
    provider.poll = lambda task_id: seen.append(poll(task_id)) or seen[-1]  # type: ignore[method-assign]
    # when a text-to-3D job runs
    outcome, job_id = run(worker_services, provider, uid, "a gold star [size:300k]")
    # then one textured task made it (API v2: no preview/refine), read through the tasks
    # route; progress never went back; the GLB and the provider's thumbnail are stored
    job = worker_services.view(job_id)
    assert outcome == "completed" and job["status"] == "completed"
    progress = [s.progress for s in seen]
    assert progress == sorted(progress) and max(progress) == 90
    assert "modeling" in {s.stage for s in seen}
    task_id = worker_services.store.get(job_id).server.provider_task_id
    assert task_id.startswith("text:")
    (create,) = [r["body"] for r in server.requests
                 if r["method"] == "POST" and "a gold star" in str(r["body"].get("prompt"))]
    assert create == {"prompt": "a gold star [size:300k]", "ai_model": settings.meshy_model,
                      "should_texture": True, "texture_model": settings.meshy_texture_model,
                      "enable_pbr": True}
    assert {r["path"] for r in server.requests if r["method"] == "GET"
            and r["path"].startswith("/openapi/") and task_id[5:] in r["path"]} \
        == {f"/openapi/v2/tasks/{task_id[5:]}"}
    assert job["result"]["contentType"] == "model/gltf-binary"
    assert 300 * 1024 - 8 <= job["result"]["bytes"] <= 300 * 1024
    assert "thumbnailPath" in job["result"]
    assert job["provenance"]["provider"] == "meshy"
    assert job["provenance"]["model"] == settings.meshy_model
    assert job["provenance"]["textureModel"] == settings.meshy_texture_model
    assert sorted(stored(worker_services, uid, job_id))[0].endswith("result.glb")


def test_meshy_image_to_3d_completes(worker_services: Any, settings: Settings, server: ProviderServer,
                                     uid: str) -> None:
    provider = build("meshy", settings, server)
    outcome, job_id = run(worker_services, provider, uid, "from a picture",
                          options={"imageUrl": f"{server.url}/cat.png", "texture": False})
    job = worker_services.view(job_id)
    assert outcome == "completed", job.get("error")
    assert job["provenance"]["mode"] == "image-to-3d"
    (create,) = [r["body"] for r in server.requests if r["method"] == "POST"
                 and r["path"] == "/openapi/v2/image-to-3d"
                 and r["body"].get("image_url") == f"{server.url}/cat.png"][-1:]
    assert create["should_texture"] is False and "texture_model" not in create


def test_taskserver_image_completes_with_thumbnail_and_usage(
        worker_services: Any, settings: Settings, server: ProviderServer, uid: str) -> None:
    outcome, job_id = run(worker_services, build("taskserver", settings, server), uid,
                          "a teal sphere [redirect]", kind="image")
    job = worker_services.view(job_id)
    assert outcome == "completed", job.get("error")
    assert job["result"]["contentType"] == "image/png" and "thumbnailPath" in job["result"]
    assert job["provenance"] == {"provider": "taskserver", "taskId": job["provenance"]["taskId"],
                                 "model": "local-model-v1", "credits": 5, "costUsd": 0.02}


def test_gemini_jpeg_is_stored_as_png(worker_services: Any, settings: Settings, server: ProviderServer,
                                      uid: str) -> None:
    outcome, job_id = run(worker_services, build("gemini", settings, server), uid,
                          "a cat in a hat [jpeg]", kind="image", options={"aspectRatio": "4:3"})
    job = worker_services.view(job_id)
    assert outcome == "completed", job.get("error")
    png = worker_services.blobs.read(job["result"]["path"])
    assert png.startswith(b"\x89PNG")
    assert job["provenance"]["model"] == settings.gemini_model
    assert job["provenance"]["convertedFrom"] == "image/jpeg"
    request = [r for r in server.requests if r["path"].endswith(":generateContent")][-1]
    assert request["path"] == f"/v1beta/models/{settings.gemini_model}:generateContent"
    assert request["body"]["generationConfig"]["responseModalities"] == ["IMAGE"]


# --- failures --------------------------------------------------------------------------

PERMANENT = [
    ("meshy", "[fail:402]", "provider_credits"),
    ("taskserver", "[fail:402]", "provider_credits"),
    ("meshy", "[fail:401]", "provider_auth"),
    ("taskserver", "[fail:403]", "provider_auth"),
    ("gemini", "[fail:401]", "provider_auth"),
    ("meshy", "[fail:refused]", "content_refused"),  # a failed task is retried: test_meshy_provider
    ("taskserver", "[fail:refused]", "content_refused"),
    ("gemini", "[fail:refused]", "content_refused"),
    ("gemini", "[fail:image-safety]", "content_refused"),
    ("gemini", "[fail:quota-day]", "provider_quota_exhausted"),
    ("gemini", "[fail:quota-zero]", "provider_quota_exhausted"),
    ("gemini", "[fail:404]", "provider_model_not_found"),
    ("meshy", "[invalid]", "invalid_artifact"),
    ("taskserver", "[invalid]", "invalid_artifact"),
    ("meshy", "[redirect:169.254.169.254]", "unsafe_result_url"),
    ("taskserver", "[redirect:10.0.0.1]", "unsafe_result_url"),
]


@pytest.mark.parametrize("name, token, code", PERMANENT)
def test_permanent_failures_fail_the_job_and_store_nothing(
        worker_services: Any, settings: Settings, server: ProviderServer, uid: str,
        name: str, token: str, code: str) -> None:
    # when the provider answers with a permanent failure
    outcome, job_id = run(worker_services, build(name, settings, server), uid, f"a box {token}",
                          kind=kind_of(name))
    # then the job failed with a clear code, a readable message, no key, and nothing stored
    job = worker_services.view(job_id)
    assert (outcome, job["status"], job["error"]["code"]) == ("failed", "failed", code)
    assert job["error"]["message"] and server.api_key not in job["error"]["message"]
    assert stored(worker_services, uid, job_id) == []


def test_credits_message_is_the_users(worker_services: Any, settings: Settings, server: ProviderServer,
                                      uid: str) -> None:
    _, job_id = run(worker_services, build("meshy", settings, server), uid, "x [fail:402]")
    assert worker_services.view(job_id)["error"]["message"] == (
        "The generation service is out of credits.")


def test_a_wrong_gemini_key_is_an_auth_error_without_the_key(
        worker_services: Any, stack: Any, server: ProviderServer, uid: str) -> None:
    secret = "wrong-" + uuid.uuid4().hex
    settings = Settings.from_env({**stack.client_env(), **server.env(), "KILN_GEMINI_API_KEY": secret})
    outcome, job_id = run(worker_services, build("gemini", settings, server), uid, "a dog",
                          kind="image")
    error = worker_services.view(job_id)["error"]
    assert outcome == "failed" and error["code"] == "provider_auth" and secret not in str(error)


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def gemini_log() -> Iterator[list[logging.LogRecord]]:
    """The records the Gemini adapter logs for the operator, while the test runs."""
    handler, logger = Recorded(), logging.getLogger("kiln.providers.gemini")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def gemini_calls(server: ProviderServer, prompt: str) -> int:
    return sum(1 for r in server.requests if r["path"].endswith(":generateContent")
               and prompt in str(r["body"]))


@pytest.mark.parametrize("token, message, quota_id", [
    ("[fail:quota-day]", "The image service has used up its quota for today. "
     "Please try again later.", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
    ("[fail:quota-zero]", "The image service has no quota for making images at the moment. "
     "Please try again later.", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
])
def test_a_gemini_quota_that_minutes_cannot_clear_fails_the_job_at_once(
        worker_services: Any, settings: Settings, server: ProviderServer, uid: str,
        gemini_log: list[logging.LogRecord], token: str, message: str, quota_id: str) -> None:
    # given Gemini answering 429 RESOURCE_EXHAUSTED for a used-up daily quota, or for a
    # quota of 0 (the free tier's image model), each with a RetryInfo of under a minute
    prompt = f"a kite {uuid.uuid4().hex} {token}"
    # when an image job runs
    outcome, job_id = run(worker_services, build("gemini", settings, server), uid, prompt,
                          kind="image")
    # then it failed on its first call (not requeued to call again each minute), with a
    # message a user can read that names no quota or metric ...
    error = worker_services.view(job_id)["error"]
    assert (outcome, error["code"], error["retryable"]) == (
        "failed", "provider_quota_exhausted", False)
    assert error["message"] == message and gemini_calls(server, prompt) == 1
    # ... and the operator's log line holds the quota ids the answer named
    logged = [r for r in gemini_log if getattr(r, "fields", {}).get("quotaIds")]
    assert len(logged) == 1 and quota_id in logged[0].fields["quotaIds"]  # type: ignore[attr-defined]


def test_a_gemini_model_the_service_does_not_know_is_a_configuration_failure(
        worker_services: Any, settings: Settings, server: ProviderServer, uid: str,
        gemini_log: list[logging.LogRecord]) -> None:
    # when Gemini answers 404 NOT_FOUND for the configured model (retired or misspelled)
    outcome, job_id = run(worker_services, build("gemini", settings, server), uid,
                          "a lamp [fail:404]", kind="image")
    # then the job failed saying the service is not set up right (no task "expired"),
    # and the operator's log names the model
    error = worker_services.view(job_id)["error"]
    assert (outcome, error["code"]) == ("failed", "provider_model_not_found")
    assert error["message"] == ("The image service is not set up correctly: its image model "
                                "is not available. Please try again later.")
    logged = [r for r in gemini_log if getattr(r, "fields", {}).get("model")]
    assert [r.fields["model"] for r in logged] == [settings.gemini_model]  # type: ignore[attr-defined]


RETRYABLE = [
    ("meshy", "[fail:429]", "provider_rate_limited", 7.0),
    ("taskserver", "[fail:429]", "provider_rate_limited", 7.0),
    ("gemini", "[fail:429]", "provider_rate_limited", 7.0),
    ("meshy", "[fail:500]", "provider_unavailable", None),
    ("taskserver", "[fail:503]", "provider_unavailable", None),
    ("gemini", "[fail:500]", "provider_unavailable", None),
    ("meshy", "[hang]", "provider_timeout", None),
    ("taskserver", "[hang]", "provider_timeout", None),
    ("gemini", "[hang]", "provider_timeout", None),
]


@pytest.mark.parametrize("name, token, code, retry_after", RETRYABLE)
def test_passing_faults_release_the_job_for_a_retry(
        worker_services: Any, settings: Settings, server: ProviderServer, uid: str,
        name: str, token: str, code: str, retry_after: float | None) -> None:
    # given short timeouts, so a hang is noticed quickly
    provider = build(name, settings, server, timeout=1.0)
    # when the provider is busy, failing or hanging
    with pytest.raises(RetryableError) as caught:
        run(worker_services, provider, uid, f"a cone {token}", kind=kind_of(name))
    # then the worker nacks with the provider's wait, and the job waits to retry
    assert caught.value.code == code and caught.value.retry_after == retry_after
    job = worker_services.view(LAST_JOB[uid])
    assert (job["status"], job["error"]["code"]) == ("pending", code)
    assert job["error"]["retryable"] is True and server.api_key not in job["error"]["message"]


def test_an_oversized_result_fails_the_job(worker_services: Any, stack: Any, server: ProviderServer,
                                           uid: str) -> None:
    # given a 1 MiB limit
    settings = Settings.from_env({**stack.client_env(), **server.env(),
                                  "KILN_MAX_ARTIFACT_BYTES": str(1024 * 1024)})
    for name, token in (("meshy", "[size:2m]"), ("taskserver", "[size:2m]"),
                        ("meshy", "[size:2m] [chunked]")):
        # when the provider's result is 2 MiB (declared, or only found out while streaming)
        outcome, job_id = run(worker_services, build(name, settings, server), uid, f"a ring {token}")
        # then the job failed as too large and nothing was stored
        job = worker_services.view(job_id)
        assert (outcome, job["error"]["code"]) == ("failed", "artifact_too_large"), (name, token)
        assert stored(worker_services, uid, job_id) == []


def test_a_private_image_url_is_refused_before_the_provider_sees_it(
        worker_services: Any, settings: Settings, server: ProviderServer, uid: str) -> None:
    before = len(server.requests)
    outcome, job_id = run(worker_services, build("meshy", settings, server), uid, "from a picture",
                          options={"imageUrl": "http://169.254.169.254/latest/meta-data/"})
    job = worker_services.view(job_id)
    assert (outcome, job["error"]["code"]) == ("failed", "invalid_image_url")
    assert not any(r["method"] == "POST" for r in server.requests[before:])


@pytest.mark.parametrize("name", ["meshy", "taskserver"])
def test_canceling_the_job_cancels_the_remote_task(
        api_worker: Any, settings: Settings, server: ProviderServer, uid: str,
        api: httpx.Client, name: str) -> None:
    # given a long-running job waiting on its remote task (nothing holds it)
    job_id = new_job_id(uid)
    composed = api_worker.with_provider(build(name, settings, server))
    assert api_worker.store.create(lifecycle.new_job(
        job_id=job_id, uid=uid, channel="api", request=JobRequest("model", "a tower [slow:30]", {}),
        now=utcnow(), policy=composed.policy))
    assert run_job(job_id, composed) is RunOutcome.WAITING
    task_id = api_worker.store.get(job_id).server.provider_task_id
    # when the owner cancels it through the HTTP API
    assert api.post(f"/v1/jobs/{job_id}:cancel").status_code < 300
    # then the next delivery (the cancel's wake-up, or the check) cancels the remote task
    assert run_job(job_id, composed) is RunOutcome.TERMINAL
    assert task_id.rsplit(":", 1)[-1] in server.cancels
    assert api_worker.store.get(job_id).server.remote_canceled
