"""Reliability end to end: failures, crashes, hand-offs, sweeps, cancels, operator tools.

One stack of its own for this module (faults would disturb the shared session stack):
two gunicorn worker processes, fault proxies in front of Storage and Pub/Sub for the
functions, a slow remote-task server for 3D models checked every 1–2 s, and a 2 s worker
budget for synchronous generators.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.adapters.clock import utcnow
from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import new_job_id
from kiln.runtime.sweeper import sweep
from kiln_dev.chaos_tasks import SlowTaskServer
from kiln_dev.stack import DEAD_TOPIC, LocalStack, StackConfig, emulator_publisher
from support import create_job, publish_raw, wait_for, wait_terminal

pytestmark = pytest.mark.e2e

ENV = {
    "KILN_OFFLINE_IMAGE_SECONDS": "0.5",
    "KILN_OFFLINE_MODEL_SECONDS": "1.0",
    "KILN_PROGRESS_INTERVAL_SECONDS": "0.3",
    "KILN_LEASE_SECONDS": "5",
    "KILN_RETRY_BACKOFF_SECONDS": "0.5",
    "KILN_PENDING_REPUBLISH_SECONDS": "3",
    "KILN_MAX_ATTEMPTS": "3",
    "KILN_WORKER_BUDGET_SECONDS": "2",
    "KILN_MODEL_PROVIDER": "taskserver",
    # Checks of waiting jobs at 1, 2.5, 4.5, 6.5 s… (the task server's own cadence is 2 s ×1.5)
    "KILN_POLL_FIRST_SECONDS": "1",
    "KILN_POLL_MAX_SECONDS": "2",
    "KILN_LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="module")
def tasks() -> SlowTaskServer:
    return SlowTaskServer(seconds=2.0)


@pytest.fixture(scope="module")
def rstack(tasks: SlowTaskServer, borrowed: Any) -> Iterator[LocalStack]:
    config = StackConfig(env=dict(ENV), sweep_interval=1.0, worker_processes=2,
                         fault_proxies=("storage", "pubsub"), proxy_seed=11, companions=[tasks],
                         **borrowed())
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def svc(rstack: LocalStack) -> Any:
    return rstack.services()


class User:
    """A signed-in user with one registered device."""

    def __init__(self, stack: LocalStack, services: Any) -> None:
        self.uid = f"rel-{uuid.uuid4().hex[:10]}"
        self.token = f"tok-{self.uid}"
        services.firestore.collection("users").document(self.uid).collection("devices").document(
            "phone").set({"token": self.token, "platform": "android", "updatedAt": time.time()})
        self.stack = stack
        self.http = httpx.Client(base_url=stack.ingress_url, timeout=30, headers={
            "Authorization": f"Bearer {emulator_id_token(self.uid, stack.config.project)}"})

    def submit(self, prompt: str, kind: str = "image") -> str:
        response = self.http.post("/v1/jobs", json={"kind": kind, "prompt": prompt})
        assert response.status_code == 202, response.text
        return str(response.json()["jobId"])

    def pushes(self, job_id: str) -> list[dict[str, Any]]:
        return [m["message"] for m in self.stack.fcm.messages
                if m["message"]["data"].get("jobId") == job_id]


@pytest.fixture
def user(rstack: LocalStack, svc: Any) -> Iterator[User]:
    person = User(rstack, svc)
    yield person
    person.http.close()


def job_lines(stack: LocalStack, job_id: str) -> list[dict[str, Any]]:
    out = []
    for line in stack.worker_log_lines():
        if job_id in line and line.startswith("{"):
            out.append(json.loads(line))
    return out


def create_direct(services: Any, uid: str, prompt: str, *, status: str = "pending",
                  kind: str = "image", **fields: Any) -> str:
    """A job document written straight to Firestore, never published (a lost publish)."""
    server = fields.pop("server", {})
    return create_job(services, status, uid=uid, kind=kind, prompt=prompt, fields=fields, **server)


def delivery_lines(stack: LocalStack) -> list[dict[str, Any]]:
    """The worker's one structured line per delivery: its outcome (and jobId)."""
    out = []
    for line in stack.worker_log_lines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("message") == "delivery done":
                out.append(entry)
    return out


def notified(services: Any, job_id: str) -> None:
    """Wait until the job's one notification is recorded as sent (the push goes first)."""
    wait_for(lambda: (services.store.get(job_id).server.notify or {}).get("state") == "sent",
             20, what=f"the notification of {job_id}")


def stored_sha(services: Any, job: dict[str, Any]) -> tuple[str, str]:
    """The stored result's SHA-256 and its version (generation; the emulator leaves it
    unset on an object whose resumable upload was retried, so then its update time)."""
    blob = services.blobs.bucket.get_blob(job.result["path"])
    version = str(blob.generation or blob._properties.get("updated"))
    return hashlib.sha256(blob.download_as_bytes()).hexdigest(), version


# --- 1. error classification and attempts -------------------------------------------


def test_permanent_provider_failure_fails_at_once_with_its_code(user: User, svc: Any) -> None:
    """Given a prompt the provider refuses, when it runs, then the job fails on the first
    attempt with the provider's code and one failure push."""
    job_id = user.submit("a red cube [fail:permanent]")
    job = wait_terminal(svc, job_id)
    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error["code"] == "content_refused" and job.error["retryable"] is False
    notified(svc, job_id)
    assert [p["data"]["type"] for p in user.pushes(job_id)] == ["generation_failed"]


def test_retryable_failure_is_retried_with_backoff_then_gives_up(user: User, svc: Any,
                                                                 rstack: LocalStack) -> None:
    """Given a provider that keeps failing retryably, when the job runs, then it is tried
    KILN_MAX_ATTEMPTS times, each release waits a growing backoff before the next claim,
    and it ends failed with the provider's code, counted attempts and one push."""
    job_id = user.submit("a teal cone [fail:retryable]")
    job = wait_terminal(svc, job_id, 60)
    assert job.status == "failed"
    assert job.attempts == 3
    assert job.error["code"] == "provider_unavailable"
    assert "Gave up after 3 attempts" in job.error["message"]
    lines = job_lines(rstack, job_id)
    claims = [_ts(x) for x in lines if x["message"] == "job claimed"]
    releases = [(x["backoffSeconds"], _ts(x)) for x in lines
                if x["message"] == "job released for retry"]
    assert [b for b, _ in releases] == [0.5, 1.0]
    assert len(claims) == 3
    for (backoff, released), claimed in zip(releases, claims[1:], strict=True):
        assert (claimed - released).total_seconds() >= backoff - 0.05
    wait_for(lambda: user.pushes(job_id), 10, what="failure push")


def _ts(line: dict[str, Any]) -> dt.datetime:
    return dt.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")


def test_hung_provider_is_released_at_the_budget_then_fails(user: User, svc: Any) -> None:
    """Given a generator that never answers, when the job runs, then each attempt is
    released at the 2 s worker budget (not held until the job's maximum age) and the job
    fails with provider_timeout once its attempts are spent."""
    started = time.monotonic()
    job_id = user.submit("a grey sphere [hang]")
    job = wait_terminal(svc, job_id, 60)
    assert job.status == "failed"
    assert job.error["code"] == "provider_timeout"
    assert job.attempts == 3
    assert time.monotonic() - started < 30


def test_flaky_storage_is_absorbed(user: User, svc: Any, rstack: LocalStack) -> None:
    """Given Storage answering 503 or resetting a third of requests, when jobs upload, then
    they complete (the client's retries absorb it) with the object the job records."""
    proxy = rstack.storage_proxy
    assert proxy is not None
    before = proxy.stats["error"] + proxy.stats["reset"]
    proxy.error_rate, proxy.reset_rate = 0.2, 0.15
    try:
        ids = [user.submit(f"a gold star {i}") for i in range(4)]
        jobs = [wait_terminal(svc, job_id, 90) for job_id in ids]
    finally:
        proxy.calm()
    assert proxy.stats["error"] + proxy.stats["reset"] > before, "no fault was injected"
    for job in jobs:
        assert job.status == "completed", job.error
        assert stored_sha(svc, job)[0] == job.result["sha256"]


def test_storage_outage_then_emulator_restart(user: User, svc: Any, rstack: LocalStack) -> None:
    """Given Storage unreachable for 3 s and then restarted, when a job uploads meanwhile,
    then it completes once Storage is back (nothing is lost, the job is not failed)."""
    proxy = rstack.storage_proxy
    assert proxy is not None
    proxy.down = True
    job_id = user.submit("a navy torus")
    # The upload met the outage (the proxy refused it) before Storage comes back.
    wait_for(lambda: proxy.stats["reset_down"] > 0, 60, what="an upload refused by the outage")
    proxy.down = False
    rstack.restart("storage")
    job = wait_terminal(svc, job_id, 120)
    assert job.status == "completed", job.error
    assert proxy.stats["reset_down"] > 0


def test_poison_messages_are_acked_and_logged_not_looped(rstack: LocalStack, svc: Any) -> None:
    """Given unreadable messages and one for an unknown job published to the jobs topic,
    when the worker receives them, then each is logged once and acked (never redelivered)."""
    publisher = emulator_publisher(svc.settings.pubsub_emulator_host)
    topic = publisher.topic_path(rstack.config.project, svc.settings.jobs_topic)
    unknown = f"nosuchjob{uuid.uuid4().hex[:12]}"
    start = counts(rstack, unknown)[0]
    for data in (b"not json at all", json.dumps({"jobId": "../../etc"}).encode(),
                 json.dumps({"jobId": unknown}).encode()):
        publish_raw(publisher, topic, data)

    wait_for(lambda: counts(rstack, unknown)[0] >= start + 2 and counts(rstack, unknown)[1] >= 1,
             20, what="poison logs")
    # Each delivery returned an acking outcome (a 2xx: Pub/Sub does not redeliver).
    outcomes = [line["outcome"] for line in delivery_lines(rstack) if line.get("jobId") == unknown]
    assert outcomes and set(outcomes) == {"missing"}
    poison = [line for line in delivery_lines(rstack) if line["outcome"] == "poison"]
    assert len(poison) >= 2


def counts(stack: LocalStack, unknown: str) -> tuple[int, int]:
    """(poison deliveries, deliveries for the unknown job) from the worker's outcomes."""
    lines = delivery_lines(stack)
    poison = sum(1 for x in lines if x["outcome"] == "poison")
    missing = sum(1 for x in lines if x.get("jobId") == unknown and x["outcome"] == "missing")
    return poison, missing


# --- 2. leases that heal --------------------------------------------------------------


def test_killed_worker_loses_no_waiting_job(user: User, svc: Any, rstack: LocalStack,
                                            tasks: SlowTaskServer) -> None:
    """Given a model job waiting on its remote task, when the whole worker function is
    killed -9 and stays down while the job's check comes due, then the check is delivered
    once the worker is back and the job completes on its one provider task, in its first
    attempt, with exactly one push."""
    job_id = user.submit("a gold sphere [task:4]", kind="model")
    job = wait_for(lambda: (j := svc.store.get(job_id)).server.waiting and j, 20, what="waiting")
    rstack.kill("worker")
    try:
        due = job.server.next_check_at
        wait_for(lambda: utcnow() > due + dt.timedelta(seconds=1), 10, what="the check due")
    finally:
        rstack.start_part("worker")
    job = wait_terminal(svc, job_id, 60)
    assert job.status == "completed"
    assert job.attempts == 1  # waiting holds no lease: nothing to expire, nothing re-run
    assert tasks.submissions[job_id] == 1
    notified(svc, job_id)
    assert len(user.pushes(job_id)) == 1


def test_expired_lease_out_of_attempts_or_past_deadline_fails(user: User, svc: Any) -> None:
    """Given processing jobs whose lease expired, one with no attempts left and one past
    its maximum age, when the sweeper runs, then both fail with a code and one push."""
    expired = utcnow() - dt.timedelta(seconds=30)
    out_of_attempts = create_direct(svc, user.uid, "a red ring", status="processing",
                                    attempts=3, server={"leaseOwner": "dead-worker",
                                                        "leaseExpiresAt": expired})
    too_old = create_direct(svc, user.uid, "a red ring", status="processing", attempts=1,
                            server={"leaseOwner": "dead-worker", "leaseExpiresAt": expired,
                                    "deadlineAt": expired})
    first = wait_terminal(svc, out_of_attempts, 30)
    assert first.status == "failed" and first.error["code"] == "attempts_exhausted"
    second = wait_terminal(svc, too_old, 30)
    assert second.status == "failed" and second.error["code"] == "deadline_exceeded"
    for job_id in (out_of_attempts, too_old):
        wait_for(lambda j=job_id: user.pushes(j), 10, what="failure push")


# --- 3. long jobs wait without a worker ------------------------------------------------


def test_long_model_job_waits_on_scheduled_checks_without_a_second_task(
        user: User, svc: Any, tasks: SlowTaskServer, rstack: LocalStack) -> None:
    """Given a 5 s provider task, when the job runs, then it completes through several
    scheduled checks (Cloud Tasks emulator → Pub/Sub), in one attempt, with one provider
    task, and the progress a listener sees never goes backwards."""
    seen: list[int] = []
    key = uuid.uuid4().hex
    job_id = new_job_id(user.uid, key)  # known before submit: the listener misses nothing
    done = threading.Event()
    dispatched = rstack.tasks_stats()["dispatched"]

    def on_snapshot(docs: list[Any], _changes: Any, _time: Any) -> None:
        for doc in docs:
            data = doc.to_dict() or {}
            seen.append(int(data.get("progress") or 0))
            if data.get("status") in ("completed", "failed", "canceled"):
                done.set()

    watch = svc.firestore.collection("jobs").document(job_id).on_snapshot(on_snapshot)
    try:
        response = user.http.post("/v1/jobs", headers={"Idempotency-Key": key},
                                  json={"kind": "model", "prompt": "a teal torus [task:5]"})
        assert response.json()["jobId"] == job_id
        assert done.wait(60), "the long job did not end"
    finally:
        watch.unsubscribe()
    job = svc.store.get(job_id)
    assert job.status == "completed", job.error
    assert job.attempts == 1
    assert job.server.checks >= 2
    assert rstack.tasks_stats()["dispatched"] > dispatched, "no check went through Cloud Tasks"
    assert tasks.submissions[job_id] == 1
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    # Live progress between the ends; how many values depends on when the checks land,
    # which moves by seconds on a loaded machine ({0, 63, 100} once in a parallel run).
    assert any(0 < p < 100 for p in seen) and seen[-1] == 100, seen


# --- 4. the sweeper -------------------------------------------------------------------


def test_sweeper_republishes_a_lost_publish(user: User, svc: Any) -> None:
    """Given a pending job that was never published, when the sweeper runs, then the
    job is published and completes."""
    job_id = create_direct(svc, user.uid, "a lime box")
    job = wait_terminal(svc, job_id, 30)
    assert job.status == "completed"


def test_concurrent_sweeps_with_workers_are_safe(user: User, svc: Any,
                                                 rstack: LocalStack) -> None:
    """Given lost publishes and jobs past their maximum age, when two sweeps run at once
    (beside the stack's own sweeper, every second, and the workers), then every lost job
    completes once, every old job fails once (one push each) and no job is failed twice.

    Which sweeper gets to a job first is a race: the stack's own may take all of them
    before these two start (it did under load), so the counts here are bounds."""
    sweepers = [rstack.services() for _ in range(2)]  # built first: the sweeps start together
    stale = {"updatedAt": utcnow() - dt.timedelta(seconds=60)}
    lost = [create_direct(svc, user.uid, f"a pink cube {i}", **stale) for i in range(6)]
    past = utcnow() - dt.timedelta(seconds=1)
    old = [create_direct(svc, user.uid, f"an old cube {i}", server={"deadlineAt": past},
                         **stale) for i in range(3)]
    reports: list[dict[str, int]] = []
    barrier = threading.Barrier(2)

    def run(services: Any) -> None:
        barrier.wait()
        reports.append(sweep(services))

    threads = [threading.Thread(target=run, args=(services,)) for services in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(reports) == 2
    assert all("scanned" in r for r in reports)
    assert sum(r.get("republished_pending", 0) for r in reports) <= 2 * len(lost)
    failed_here = sum(r.get("failed_expired", 0) for r in reports)
    for job_id in lost:
        assert wait_terminal(svc, job_id, 30).status == "completed"
    for job_id in old:
        job = wait_terminal(svc, job_id, 30)
        assert job.status == "failed" and job.error["code"] == "deadline_exceeded"
    assert failed_here <= 3  # each expired job was failed by exactly one sweep
    for job_id in lost + old:
        notified(svc, job_id)
        assert len(user.pushes(job_id)) == 1, job_id


# --- 5. side effects exactly once -----------------------------------------------------


def test_redeliveries_do_not_push_or_upload_again(user: User, svc: Any, rstack: LocalStack) -> None:
    """Given a completed job, when its message is delivered five more times, then no
    second push is sent and the stored object is the same generation and content."""
    job_id = user.submit("a silver star")
    job = wait_terminal(svc, job_id)
    wait_for(lambda: user.pushes(job_id), 10, what="push")
    sha, generation = stored_sha(svc, job)
    assert sha == job.result["sha256"]
    for _ in range(5):
        svc.queue.publish(job_id, reason="test-duplicate")
    wait_for(lambda: sum(1 for x in delivery_lines(rstack)
                         if x.get("jobId") == job_id and x["outcome"] == "terminal") >= 5, 20,
             what="duplicates ignored")
    assert len(user.pushes(job_id)) == 1
    assert stored_sha(svc, job) == (sha, generation)
    assert svc.blobs.list(f"generations/{user.uid}/{job_id}/") == [job.result["path"],
                                                                    job.result["thumbnailPath"]]


def test_publish_failure_after_accept_is_recovered(user: User, svc: Any, rstack: LocalStack) -> None:
    """Given Pub/Sub unreachable from the ingress, when a job is submitted, then it is
    still accepted (202) and the sweeper publishes it, so it completes."""
    proxy = rstack.pubsub_proxy
    assert proxy is not None
    proxy.down()
    try:
        job_id = user.submit("a purple planet")
    finally:
        proxy.up()
    assert proxy.stats["refused"] > 0
    job = wait_terminal(svc, job_id, 40)
    assert job.status == "completed"
    wait_for(lambda: user.pushes(job_id), 10, what="push")


# --- 6. cancel and retry --------------------------------------------------------------


def test_cancel_pending_job(user: User, svc: Any, rstack: LocalStack) -> None:
    """Given a pending job, when its owner cancels it (twice), then it ends canceled,
    never runs, and nobody is notified."""
    job_id = create_direct(svc, user.uid, "a brown box")
    first = user.http.post(f"/v1/jobs/{job_id}:cancel")
    assert first.status_code == 200 and first.json()["status"] == "canceled"
    again = user.http.post(f"/v1/jobs/{job_id}:cancel")
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    svc.queue.publish(job_id, reason="test")
    wait_for(lambda: [line for line in delivery_lines(rstack) if line.get("jobId") == job_id],
             20, what="the delivery of the canceled job")
    assert {line["outcome"] for line in delivery_lines(rstack) if line.get("jobId") == job_id} \
        == {"terminal"}
    job = svc.store.get(job_id)
    assert job.status == "canceled" and job.attempts == 0
    assert job.server.notify is None  # nothing was claimed, so nothing will be sent
    assert user.pushes(job_id) == []


def test_cancel_of_a_waiting_job_cancels_its_remote_task_at_once(
        user: User, svc: Any, tasks: SlowTaskServer) -> None:
    """Given a model job waiting on its remote task (no worker holds it), when its owner
    cancels it, then within seconds the provider's task is canceled, no result is stored
    and no push is sent."""
    job_id = user.submit("a cyan cylinder [task:20]", kind="model")
    wait_for(lambda: svc.store.get(job_id).server.waiting, 20, what="waiting")
    answer = user.http.post(f"/v1/jobs/{job_id}:cancel")
    assert answer.status_code == 200
    asked = time.monotonic()
    wait_for(lambda: any(t["canceled"] for t in tasks.tasks.values() if t["jobId"] == job_id),
             10, what="the provider task canceled")
    assert time.monotonic() - asked < 6
    job = svc.store.get(job_id)
    assert job.status == "canceled" and job.result is None
    assert job.server.notify is None  # no notification claimed: none will be sent
    assert user.pushes(job_id) == []
    assert svc.blobs.list(f"generations/{user.uid}/{job_id}/") == []


def test_retry_failed_job_resets_attempts_and_completes(user: User, svc: Any) -> None:
    """Given a job that failed after all its attempts, when its owner retries it (twice),
    then attempts start again and it completes; retrying a completed job is a 409."""
    # A model job (a 2 s task) so the second retry surely finds it pending or running.
    job_id = create_direct(svc, user.uid, "a gold cube", kind="model", status="failed", attempts=3,
                           error={"code": "provider_unavailable", "message": "down",
                                  "retryable": False})
    first = user.http.post(f"/v1/jobs/{job_id}:retry")
    assert first.status_code == 202 and first.json()["status"] == "pending", first.text
    again = user.http.post(f"/v1/jobs/{job_id}:retry")
    assert again.status_code == 202, again.text
    job = wait_terminal(svc, job_id, 30)
    assert job.status == "completed" and job.attempts == 1 and job.error is None, job
    late = user.http.post(f"/v1/jobs/{job_id}:retry")
    assert late.status_code == 409, late.text
    assert late.json()["error"] == {
        "code": "invalid_transition",
        "message": "Only a failed job can be retried; this one is completed."}
    wait_for(lambda: user.pushes(job_id), 10, what="push")


def test_cancel_and_retry_are_owner_only_and_checked(user: User, svc: Any,
                                                     rstack: LocalStack) -> None:
    """Given someone else's job, when another user cancels or retries it, then 404 (as
    for a missing job) and nothing changes; cancelling a completed job is a 409."""
    job_id = user.submit("a white sphere")
    wait_terminal(svc, job_id)
    other = User(rstack, svc)
    try:
        for action in (":cancel", ":retry"):
            response = other.http.post(f"/v1/jobs/{job_id}{action}")
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
    finally:
        other.http.close()
    conflict = user.http.post(f"/v1/jobs/{job_id}:cancel")
    assert conflict.status_code == 409
    assert conflict.json()["error"] == {
        "code": "invalid_transition",
        "message": "This job is already completed and cannot be canceled."}
    assert svc.store.get(job_id).status == "completed"


# --- 7. operator tools and logs -------------------------------------------------------


@pytest.fixture
def ops_env(svc: Any) -> Any:
    """Operator commands bound to this module's stack: the CLI is handed its services."""
    from kiln_dev.cli import main

    return lambda argv: main(argv, services=lambda: svc)


def test_jobs_commands(user: User, svc: Any, ops_env: Any,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """Given jobs, when an operator lists, shows, cancels and retries them, then the
    commands act on Firestore and say what they did; an invalid one exits 1."""
    ops = ops_env
    failed = create_direct(svc, user.uid, "a red cone", status="failed", attempts=3,
                           error={"code": "x_failed", "message": "x", "retryable": False})
    pending = create_direct(svc, user.uid, "a red cone", updatedAt=utcnow() + dt.timedelta(hours=1))
    assert ops(["jobs", "list", "--uid", user.uid]) == 0
    listing = capsys.readouterr().out
    assert failed in listing and pending in listing
    assert ops(["jobs", "show", failed]) == 0
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "x_failed"
    assert ops(["jobs", "cancel", pending]) == 0
    assert svc.store.get(pending).status == "canceled"
    assert ops(["jobs", "cancel", pending]) == 0  # idempotent
    assert ops(["jobs", "retry", failed]) == 0
    assert wait_terminal(svc, failed, 30).status == "completed"
    capsys.readouterr()
    assert ops(["jobs", "retry", pending]) == 1
    assert "Only a failed job can be retried; this one is canceled." in capsys.readouterr().out


def test_dead_letters_list_and_replay(user: User, svc: Any, ops_env: Any, rstack: LocalStack,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Given messages dead-lettered for two jobs (and one unreadable), when an operator
    lists and replays them, then listing leaves them in place, replaying one re-publishes
    just that job (it completes), --all the other, and the unreadable one stays."""
    ops = ops_env
    later = {"updatedAt": utcnow() + dt.timedelta(hours=1)}  # the sweeper leaves them be
    first = create_direct(svc, user.uid, "a gold ball", **later)
    second = create_direct(svc, user.uid, "a teal ball", **later)
    publisher = emulator_publisher(svc.settings.pubsub_emulator_host)
    dead = publisher.topic_path(rstack.config.project, DEAD_TOPIC)
    ids = {}
    for job_id in (first, second):
        ids[job_id] = publish_raw(publisher, dead, json.dumps({"jobId": job_id}).encode())
    poison = publish_raw(publisher, dead, base64.b64encode(b"\xff garbage"))
    assert ops(["dlq", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(x in listing for x in (first, second, ids[first], poison, "(unreadable)"))
    assert ops(["dlq", "list"]) == 0  # still there
    assert ids[second] in capsys.readouterr().out
    assert ops(["dlq", "replay", ids[first]]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == [ids[first]]
    assert wait_terminal(svc, first, 30).status == "completed"
    assert svc.store.get(second).status == "pending"
    assert ops(["dlq", "replay", "--all"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replayed"] == [ids[second]] and out["unreadable"] == [poison]
    assert wait_terminal(svc, second, 30).status == "completed"
    assert ops(["dlq", "replay", "no-such-message"]) == 1
    capsys.readouterr()
    assert ops(["dlq", "replay", "--all", "--drop-unreadable"]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable"] == [poison]
    assert ops(["dlq", "list"]) == 0
    assert "0 dead letter(s)" in capsys.readouterr().out


def test_every_worker_log_line_of_a_job_carries_its_id(user: User, svc: Any,
                                                       rstack: LocalStack) -> None:
    """Given a job that completes, when reading the worker's log file, then its lines are
    JSON with the job id, and every line of the job's loggers carries some job id."""
    job_id = user.submit("a violet pyramid")
    wait_terminal(svc, job_id)
    wait_for(lambda: any(x["message"] == "push sent" for x in job_lines(rstack, job_id)), 10,
             what="push log")
    mine = [x for x in job_lines(rstack, job_id) if x.get("jobId") == job_id]
    assert {"job claimed", "job completed", "push sent"} <= {x["message"] for x in mine}
    assert all(x["logging.googleapis.com/labels"] == {"jobId": job_id} for x in mine)
    for line in rstack.worker_log_lines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("logger") in ("kiln.worker", "kiln.notify", "kiln.push", "kiln.progress") \
                and entry["message"] != "poison message acked" and entry.get("outcome") != "poison":
            assert entry.get("jobId"), f"a job's log line without jobId: {line}"

