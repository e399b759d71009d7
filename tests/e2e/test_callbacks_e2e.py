"""Provider callbacks on the local stack: a signed callback from the task server makes a
waiting job be checked at once, long before its scheduled check."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import new_job_id
from kiln_dev.chaos_tasks import SlowTaskServer
from kiln_dev.stack import LocalStack, StackConfig

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + "ZTJlLWNhbGxiYWNrcy1sb2NhbC1zZWNyZXQtbm90LXJlYWw="  # local stand-in only
FIRST_CHECK = 60.0  # the scheduled check comes a minute after the submit


@pytest.fixture(scope="module")
def tasks() -> SlowTaskServer:
    return SlowTaskServer(seconds=3.0, callback_secret=SECRET)


@pytest.fixture(scope="module")
def cstack(tasks: SlowTaskServer) -> Iterator[LocalStack]:
    env = {"KILN_MODEL_PROVIDER": "taskserver", "KILN_TASKSERVER_WEBHOOK_SECRET": SECRET,
           "KILN_POLL_FIRST_SECONDS": str(FIRST_CHECK), "KILN_POLL_MAX_SECONDS": str(FIRST_CHECK),
           "KILN_PENDING_REPUBLISH_SECONDS": "120", "KILN_LOG_LEVEL": "INFO"}
    stack = LocalStack(StackConfig(env=env, sweep_interval=30.0, companions=[tasks]))
    with stack:
        yield stack


def test_a_callback_completes_a_waiting_job_long_before_its_scheduled_check(
        cstack: LocalStack, tasks: SlowTaskServer) -> None:
    """Given a 3 s task whose first scheduled check is 60 s away, when the task server
    posts its signed end callback, then the job completes within seconds, after one
    provider task, and the callback was accepted."""
    services = cstack.services()
    uid, key = f"cb-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    job_id = new_job_id(uid, key)
    ended = threading.Event()

    def on_snapshot(docs: list[Any], _changes: Any, _time: Any) -> None:
        if any((doc.to_dict() or {}).get("status") in ("completed", "failed") for doc in docs):
            ended.set()

    watch = services.firestore.collection("jobs").document(job_id).on_snapshot(on_snapshot)
    try:
        with httpx.Client(base_url=cstack.ingress_url, timeout=15, headers={
                "Authorization": f"Bearer {emulator_id_token(uid, cstack.config.project)}"}) as api:
            started = time.monotonic()
            response = api.post("/v1/jobs", headers={"Idempotency-Key": key},
                                json={"kind": "model", "prompt": "a blue vase [task:3]"})
            assert response.status_code == 202 and response.json()["jobId"] == job_id
            assert ended.wait(FIRST_CHECK / 3), "the callback did not wake the job"
            took = time.monotonic() - started
    finally:
        watch.unsubscribe()
    job = services.store.get(job_id)
    assert job is not None and job.status == "completed", job and job.error
    assert took < FIRST_CHECK / 3
    assert tasks.submissions[job_id] == 1
    assert job.server.checks == 1  # the woken check was the only one: no scheduled check ran
    assert job_id in tasks.callback_times()  # the ingress answered 2xx to the signed end
