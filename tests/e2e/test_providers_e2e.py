"""Jobs through a whole local stack whose providers are the local provider server.

This module runs its own stack: the worker function (a separate process) is configured
with ``KILN_MODEL_PROVIDER=meshy`` and ``KILN_IMAGE_PROVIDER=gemini``, and the provider
server is the stack's companion, so every byte goes provider → worker → Storage emulator.
Meshy posts its webhooks to the ingress (``/v1/providers/meshy/events?token=``) and a
waiting job's first scheduled check is a minute away, so a model job that completes in
seconds was woken by its callbacks (the polling path runs in ``test_reliability``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.adapters.firebase_auth import emulator_id_token
from kiln_dev.stack import LocalStack, StackConfig
from kiln_dev.standins.provider import ProviderServer
from support import STACK_ENV, wait_terminal

pytestmark = pytest.mark.e2e

MESHY_TOKEN = "meshy-e2e-webhook-token"  # the local stand-in's only
FIRST_CHECK = 60.0  # seconds: no scheduled check comes within any wait below


@pytest.fixture(scope="module")
def provider_stack(borrowed: Any) -> Iterator[tuple[LocalStack, ProviderServer]]:
    server = ProviderServer(task_seconds=0.8, gemini_seconds=0.2, hang_seconds=20,
                            meshy_webhook_secret=MESHY_TOKEN)
    env = {**STACK_ENV, "KILN_MODEL_PROVIDER": "meshy", "KILN_IMAGE_PROVIDER": "gemini",
           "KILN_MESHY_WEBHOOK_SECRET": MESHY_TOKEN,
           "KILN_POLL_FIRST_SECONDS": str(FIRST_CHECK), "KILN_POLL_MAX_SECONDS": str(FIRST_CHECK)}
    stack = LocalStack(StackConfig(env=env, companions=[server], sweep_interval=1.0,
                                   **borrowed()))
    # As an operator sets it in Meshy's dashboard (the ingress's port is chosen by now).
    server.meshy_webhook_url = f"{stack.ingress_url}/v1/providers/meshy/events"
    with stack:
        yield stack, server


def submit(stack: LocalStack, uid: str, kind: str, prompt: str) -> str:
    token = emulator_id_token(uid, stack.config.project)
    response = httpx.post(f"{stack.ingress_url}/v1/jobs", json={"kind": kind, "prompt": prompt},
                          headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert response.status_code == 202, response.text
    return str(response.json()["jobId"])


def test_a_meshy_model_job_completes_with_its_result_in_storage(
        provider_stack: tuple[LocalStack, ProviderServer]) -> None:
    stack, server = provider_stack
    services: Any = stack.services()
    # when the app asks for a model
    job_id = submit(stack, "user-e2e-meshy", "model", "a purple torus [size:2m]")
    job = wait_terminal(services, job_id, timeout=FIRST_CHECK / 3)
    # then Meshy's webhook woke it when its one task ended (no scheduled check came), and
    # the worker made the model in one v2 call and stored the GLB
    assert job.status == "completed", job.error
    assert job.server.checks == 1
    assert job.progress == 100 and job.provenance["provider"] == "meshy"
    data = services.blobs.read(job.result["path"])
    assert data[:4] == b"glTF" and len(data) == job.result["bytes"]
    (create,) = [r["body"] for r in server.requests if r["method"] == "POST"
                 and "purple torus" in str(r["body"].get("prompt"))]
    assert "mode" not in create and create["should_texture"] is True


def test_a_gemini_image_job_completes_with_a_thumbnail(
        provider_stack: tuple[LocalStack, ProviderServer]) -> None:
    stack, _server = provider_stack
    services: Any = stack.services()
    job = wait_terminal(services, submit(stack, "user-e2e-gemini", "image", "a red fox [jpeg]"),
                        timeout=60)
    assert job.status == "completed", job.error
    assert services.blobs.read(job.result["path"]).startswith(b"\x89PNG")
    assert services.blobs.exists(job.result["thumbnailPath"])
    assert job.provenance["provider"] == "gemini"


def test_an_invalid_glb_fails_the_job_and_leaves_no_object(
        provider_stack: tuple[LocalStack, ProviderServer]) -> None:
    stack, _server = provider_stack
    services: Any = stack.services()
    uid = "user-e2e-invalid"
    job_id = submit(stack, uid, "model", "a broken cube [invalid] [size:9m]")
    job = wait_terminal(services, job_id, timeout=FIRST_CHECK / 3)
    assert (job.status, job.error["code"]) == ("failed", "invalid_artifact")
    assert services.blobs.list(f"generations/{uid}/{job_id}/") == []
