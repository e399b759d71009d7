"""The worker's edges, run in this process against the emulators and a provider server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kiln.core.job import Change
from kiln.providers.base import GenerationRequest
from kiln.runtime import worker
from kiln_dev.standins.provider import ProviderServer
from support import create_job


@pytest.fixture(scope="module")
def provider_server() -> Iterator[ProviderServer]:
    server = ProviderServer(task_seconds=30).start()
    yield server
    server.stop()


def test_a_provider_without_its_key_fails_the_job_readably(stack: Any) -> None:
    """KILN_MODEL_PROVIDER=meshy with no key → failed 'provider_unconfigured', no retry loop."""
    services = stack.services(model_provider="meshy", meshy_api_key="")
    job_id = create_job(services)
    assert worker.run_job(job_id, services) is worker.RunOutcome.FAILED
    job = services.store.get(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert job.error["code"] == "provider_unconfigured"
    assert "3D models" in job.error["message"] and "KILN_" not in job.error["message"]


def test_canceling_a_job_nobody_holds_cancels_its_remote_task(stack: Any, api: Any,
                                                              provider_server: ProviderServer,
                                                              uid: str) -> None:
    """A job canceled while it waits on its remote task: the cancel's wake-up makes a worker
    cancel the task."""
    env = provider_server.env()
    services = stack.services(model_provider="taskserver", taskserver_url=env["KILN_TASKSERVER_URL"],
                              taskserver_api_key=env["KILN_TASKSERVER_API_KEY"])
    provider = services.provider("model")
    job_id = create_job(services, uid=uid)
    task_id = provider.submit(GenerationRequest(job_id=job_id, kind="model", prompt="a cube"))
    services.store.apply(job_id, Change({"status": "processing"}, {
        "providerTaskId": task_id, "provider": provider.name,
        "nextCheckAt": services.clock.now(), "checkSeq": 1}))
    canceled = api.post(f"/v1/jobs/{job_id}:cancel")
    assert canceled.status_code == 200
    # The stack's own worker uses the offline provider; this delivery is ours to run.
    assert worker.run_job(job_id, services) is worker.RunOutcome.TERMINAL
    assert task_id in provider_server.cancels
    assert services.store.get(job_id).server.remote_canceled is True
    worker.run_job(job_id, services)  # a second wake-up cancels nothing more
    assert provider_server.cancels.count(task_id) == 1
