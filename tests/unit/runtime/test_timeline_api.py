"""``GET /v1/jobs/{jobId}/timeline`` on fakes (the in-process router): the owner reads the
rows ``kiln trace`` draws; anyone else is answered as for a missing job; nothing of the
server state but step names and times leaves (docs/timeline.md, "In the web app")."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from typing import Any

import flask
import pytest
from rig import Rig

from kiln.core import timeline
from kiln.core.contract import JobTimeline
from kiln.http.api import handle
from kiln.runtime.worker import RunOutcome, handle_message


def get(rig: Rig, path: str, authorization: str | None = "Bearer uid:alice") -> tuple[int, Any]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with flask.Flask(__name__).test_request_context(path, method="GET", headers=headers):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json()


def completed_job(rig: Rig) -> str:
    job_id = rig.submit()
    data = base64.b64encode(json.dumps({"jobId": job_id}).encode()).decode()
    rig.clock.advance(0.25)
    assert handle_message({"message": {"data": data}}, rig.services) is RunOutcome.COMPLETED
    return job_id


def test_the_owner_gets_every_step_in_order_with_its_milliseconds(rig: Rig) -> None:
    """Given alice's completed job, when she reads its timeline, then the steps come oldest
    first, each with its time since accepted and its gap, the same rows ``kiln trace``
    draws, and the answer is valid against the contract's JobTimeline."""
    job_id = completed_job(rig)
    status, answer = get(rig, f"/v1/jobs/{job_id}/timeline")
    assert status == 200
    JobTimeline.model_validate(answer)  # extra="forbid": no field the contract lacks
    names = [s["step"] for s in answer["steps"]]
    assert names == ["accepted", "delivered", "claimed", "submitted", "generated", "stored",
                     "completed", "notified"]
    assert (answer["jobId"], answer["status"], answer["kind"]) == (job_id, "completed", "image")
    recorded = rig.job(job_id).server.timeline or {}
    accepted = recorded["accepted"]
    for row in answer["steps"]:
        at = dt.datetime.fromisoformat(row["at"])
        assert at == recorded[row["step"]].astimezone(dt.UTC)
        assert row["sinceAcceptedMs"] == pytest.approx((at - accepted).total_seconds() * 1000,
                                                       abs=0.05)
    since = [row["sinceAcceptedMs"] for row in answer["steps"]]
    assert since[0] == 0 and since[1] == pytest.approx(250, abs=0.05)  # the push came 0.25 s later
    assert [row["gapMs"] for row in answer["steps"]] == pytest.approx(
        [0.0] + [b - a for a, b in itertools.pairwise(since)], abs=0.1)
    assert answer["totalMs"] == since[-1] >= 2000  # the fake provider's two 1 s steps
    rows = timeline.rows(recorded)
    assert [(r.step, round(r.since_accepted_ms, 1)) for r in rows] == [
        (s["step"], s["sinceAcceptedMs"]) for s in answer["steps"]]


@pytest.mark.parametrize("path", ["/v1/jobs/{bob}/timeline", "/v1/jobs/nosuchjob0001/timeline"])
def test_another_users_or_an_unknown_job_is_not_found(rig: Rig, path: str) -> None:
    """Given bob's job, when alice asks for its timeline (or for a job that does not exist),
    then both are 404 not_found "No such job.", the same answer as GET /v1/jobs/{jobId}."""
    bob = rig.submit(uid="bob")
    status, answer = get(rig, path.format(bob=bob))
    assert (status, answer) == (404, {"error": {"code": "not_found", "message": "No such job."}})
    assert get(rig, path.format(bob=bob).removesuffix("/timeline")) == (status, answer)
    assert get(rig, f"/v1/jobs/{bob}/timeline", "Bearer uid:bob")[0] == 200


def test_a_caller_without_credentials_is_401(rig: Rig) -> None:
    job_id = rig.submit()
    status, answer = get(rig, f"/v1/jobs/{job_id}/timeline", authorization=None)
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")


def test_a_job_with_no_timeline_has_no_steps(rig: Rig) -> None:
    """Given a job accepted before timelines existed (no ``timeline`` in its server
    state), then its timeline is empty, not an error."""
    job_id = rig.submit()
    del rig.store.servers[job_id][timeline.FIELD]
    status, answer = get(rig, f"/v1/jobs/{job_id}/timeline")
    assert status == 200
    assert (answer["steps"], answer["totalMs"], answer["status"]) == ([], 0.0, "pending")


def test_nothing_but_step_names_and_times_leaves_the_server_state(rig: Rig) -> None:
    """Given a job whose server state holds a provider task id, a fingerprint, an
    idempotency key, a lease and a webhook URL, when its owner reads the timeline, then
    none of those values is in the answer, and its fields are exactly the contract's."""
    job_id = completed_job(rig)
    secrets = {"providerTaskId": "task-7f3e-private", "idempotencyKey": "idem-key-private",
               "leaseOwner": "worker-private", "webhook": "https://backend.example/private"}
    rig.store.servers[job_id].update(secrets)
    server = rig.store.servers[job_id]
    assert server.get("fingerprint")  # a real one, written at accept
    status, answer = get(rig, f"/v1/jobs/{job_id}/timeline")
    assert status == 200
    text = json.dumps(answer)
    for value in [*secrets.values(), server["fingerprint"]]:
        assert value not in text
    assert set(answer) == {"jobId", "kind", "status", "attempts", "totalMs", "steps"}
    assert {key for row in answer["steps"] for key in row} == {"step", "at", "sinceAcceptedMs",
                                                               "gapMs"}
