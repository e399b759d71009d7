"""The deployed entry points, driven through functions-framework's own test client."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import functions_framework
import pytest

import kiln_dev.functions
from kiln.compose import reset_services
from kiln_dev.stack import REPO
from support import create_job, load_event, wait_for


@pytest.fixture(scope="module", autouse=True)
def _function_environment(stack: Any) -> Iterator[None]:
    """A deployed function reads its settings from its environment at start-up: give this
    process the stack's (for these in-process functions), and forget them afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in stack.client_env().items():
            patch.setenv(key, value)
        reset_services()
        kiln_dev.functions.reset_services()
        yield
    reset_services()
    kiln_dev.functions.reset_services()


def app(name: str, signature: str) -> Any:
    return functions_framework.create_app(
        target=name, source=str(REPO / "functions" / name / "main.py"), signature_type=signature
    ).test_client()


@pytest.fixture(scope="module")
def ingress(stack: Any) -> Any:
    return app("ingress", "http")


@pytest.fixture(scope="module")
def worker(stack: Any) -> Any:
    return app("worker", "cloudevent")


@pytest.fixture(scope="module")
def dev_worker(stack: Any) -> Any:
    """The worker as the local stack runs it: with the generators that plant failures."""
    return functions_framework.create_app(
        target="worker", source=kiln_dev.functions.__file__, signature_type="cloudevent",
    ).test_client()


def push_body(job_id: str) -> dict[str, Any]:
    body = copy.deepcopy(load_event("pubsub_push.json"))
    body["message"]["data"] = base64.b64encode(json.dumps({"jobId": job_id}).encode()).decode()
    body["message"]["attributes"]["jobId"] = job_id
    return body


def test_healthz(ingress: Any) -> None:
    """GET /healthz answers 200 ok."""
    response = ingress.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_create_then_get_through_the_function(ingress: Any, token: Any, uid: str) -> None:
    """POST /v1/jobs → 202 {jobId, status}; the owner can GET it; another user gets 404."""
    auth = {"Authorization": f"Bearer {token(uid)}"}
    created = ingress.post("/v1/jobs", json=load_event("create_job.json"), headers=auth)
    assert created.status_code == 202
    job_id = created.get_json()["jobId"]
    assert created.get_json()["status"] == "pending"
    got = ingress.get(f"/v1/jobs/{job_id}", headers=auth)
    assert got.status_code == 200
    body = got.get_json()
    assert (body["kind"], body["prompt"], body["options"]) == ("model", "a blue cube",
                                                               {"seed": 7, "texture": True})
    assert "_server" not in body
    other = ingress.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token('x')}"})
    assert other.status_code == 404 and other.get_json()["error"]["code"] == "not_found"


def test_unknown_routes_and_methods(ingress: Any, token: Any, uid: str) -> None:
    """Unknown paths are 404 and wrong methods 405, both in the error envelope."""
    auth = {"Authorization": f"Bearer {token(uid)}"}
    assert ingress.get("/v2/nothing", headers=auth).get_json()["error"]["code"] == "not_found"
    wrong = ingress.delete("/v1/jobs", headers=auth)
    assert wrong.status_code == 405 and wrong.get_json()["error"]["code"] == "method_not_allowed"


def test_worker_function_runs_a_job_from_a_push_body(ingress: Any, worker: Any, services: Any,
                                                     token: Any, uid: str) -> None:
    """A raw Pub/Sub push body → CloudEvent → the job ends completed (in this process)."""
    auth = {"Authorization": f"Bearer {token(uid)}"}
    job_id = ingress.post("/v1/jobs", json={"kind": "image", "prompt": "a green star"},
                          headers=auth).get_json()["jobId"]
    response = worker.post("/", json=push_body(job_id))
    assert response.status_code in (200, 204)
    job = wait_for(lambda: (j := services.store.get(job_id)) and j.status in (
        "completed", "failed") and j, what="terminal job")
    assert job.status == "completed"
    assert job.result["path"] == f"generations/{uid}/{job_id}/result.png"


def test_worker_acks_poison_messages(worker: Any) -> None:
    """Undecodable data and unknown job ids are acked (2xx), never retried forever."""
    body = load_event("pubsub_push.json")
    body["message"]["data"] = base64.b64encode(b"not json").decode()
    assert worker.post("/", json=body).status_code in (200, 204)
    assert worker.post("/", json=push_body("doesnotexist123")).status_code in (200, 204)


def test_worker_nacks_a_retryable_failure(dev_worker: Any, services: Any, uid: str) -> None:
    """A retryable provider failure returns 5xx (so Pub/Sub redelivers), spends an attempt
    and leaves the job pending with a retryable error until its backoff has passed."""
    # Recorded but not published: only this delivery runs it (the stack's worker never sees it).
    job_id = create_job(services, uid=uid, kind="image", prompt="x [fail:retryable]")
    response = dev_worker.post("/", json=push_body(job_id))
    assert response.status_code >= 500
    job = services.store.get(job_id)
    assert (job.status, job.attempts) == ("pending", 1)
    assert job.error == {"code": "provider_unavailable", "retryable": True,
                            "message": job.error["message"]}
    assert job.server.not_before > job.updated_at  # a backoff before the next try
