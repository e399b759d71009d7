"""Batches (issue 13, items 3 and 5): 1–100 jobs accepted together, all or nothing, with
the same ids on a replay; a bad item is a 400 naming it and nothing is created; counts come
from the jobs; one batch.completed (API tenants) or one push (app users) when every job has
ended; cancel ends every job not yet ended."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rig import Rig, build_rig
from rig import api_call as call

from kiln.core.batches import new_batch_id
from kiln.core.errors import PermanentError, RetryableError
from kiln.core.job import new_job_id
from kiln.runtime import batch_end
from kiln.runtime.keys import create_key
from kiln.runtime.sweeper import sweep
from kiln.webhooks.model import event_id

CUBE = {"kind": "image", "prompt": "a red cube"}


@pytest.fixture
def rig() -> Rig:
    """Limits no batch here reaches, so every item starts at once (how a batch meets the
    running limit and the quota: tests/unit/runtime/test_fair_queue.py)."""
    return build_rig(plans="free:daily=1000,running=200;pro:daily=1000,running=200,priority=10",
                     provider_capacity="200")


def items(n: int) -> list[dict[str, Any]]:
    return [{"kind": "image", "prompt": f"tile {i}"} for i in range(n)]


def run_all(rig: Rig) -> None:
    while rig.deliver_next() is not None:
        pass


def batch_events(rig: Rig) -> list[dict[str, Any]]:
    """The ``batch.completed`` events recorded (``kiln.webhooks.events.emit`` on the fake
    webhook store)."""
    store = rig.services.webhooks.events  # type: ignore[attr-defined]
    return [{"id": e.id, "tenant": e.tenant, "data": json.loads(e.body)["data"]}
            for e in store.values() if e.type == "batch.completed"]


def test_a_batch_is_accepted_whole_and_published(rig: Rig) -> None:
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches",
                             {"items": items(14)}, key="k-1")
    assert status == 202 and len(answer["jobIds"]) == 14
    jobs = [rig.job(job_id) for job_id in answer["jobIds"]]
    assert {(j.uid, j.channel, j.batch_id, j.status.value) for j in jobs} == \
        {("alice", "app", answer["batchId"], "pending")}
    assert [j.prompt for j in jobs] == [f"tile {i}" for i in range(14)]
    assert sorted(rig.queue.ids()) == sorted(answer["jobIds"])


def test_a_replay_returns_the_same_ids_without_publishing_again(rig: Rig) -> None:
    first = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(3)}, key="k")
    again = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(3)}, key="k")
    assert first[1] == again[1] and again[2].get("Idempotent-Replayed") == "true"
    assert len(rig.queue.ids()) == 3 and len(rig.store.docs) == 3
    other = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(4)}, key="k")
    assert (other[0], other[1]["error"]["code"]) == (422, "idempotency_key_reused")


@pytest.mark.parametrize("body, code, named", [
    ({"items": []}, "invalid_items", "'items'"),
    ({"items": items(101)}, "invalid_items", "got 101"),
    ({"items": "x"}, "invalid_items", "'items'"),
    ({}, "invalid_items", "'items'"),
    ({"items": items(1), "extra": 1}, "unknown_field", "extra"),
    # shown escaped: a lone surrogate no strict JSON parser reads, a bidi override
    ({"items": items(1), "\ud800": 1}, "unknown_field", "'\\ud800'"),
    ({"items": items(1), "\u202eevil": 1}, "unknown_field", "'\\u202eevil'"),
    ({"items": [*items(3), {"kind": "image", "prompt": ""}]}, "invalid_prompt", "items[3].prompt"),
    ({"items": [*items(2), {"kind": "vase", "prompt": "x"}]}, "invalid_kind", "items[2].kind"),
    ({"items": [CUBE, {**CUBE, "options": {"seed": "x"}}]}, "invalid_options",
     "items[1].options.seed"),
    ({"items": [CUBE, 7]}, "invalid_body", "items[1]"),
    ({"items": [CUBE, {"kind": "model", "prompt": "x",
                         "options": {"imageUrl": "https://169.254.169.254/x"}}]},
     "invalid_image_url", "items[1].options.imageUrl"),
])
def test_a_bad_batch_is_400_naming_the_item_and_creates_nothing(
        rig: Rig, body: Any, code: str, named: str) -> None:
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", body, key="k")
    assert (status, answer["error"]["code"]) == (400, code)
    assert named in answer["error"]["message"]
    assert answer["error"]["message"].encode("utf-8") and answer["error"]["message"].isprintable()
    assert rig.store.docs == {} and rig.services.batches.batches == {}  # type: ignore[attr-defined]
    assert rig.queue.ids() == []


def test_all_or_nothing_when_a_job_id_is_taken(rig: Rig) -> None:
    # given a batch whose second job id already exists (a collision the store refuses)
    from kiln.core.batches import item_job_id, new_batch_id

    taken = item_job_id(new_batch_id("alice", "k"), 1)
    rig.store.docs[taken] = {"status": "completed", "uid": "alice"}
    rig.store.servers[taken] = {}
    status, _, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(3)},
                        key="k")
    # then nothing of the batch was written
    assert status == 422 and list(rig.store.docs) == [taken]
    assert rig.queue.ids() == []


def test_a_user_named_after_a_batch_cannot_take_its_job_ids(rig: Rig) -> None:
    """Given a user whose uid is the id alice's keyed batch will have, when that user
    submits a job with ``Idempotency-Key: 0``, then alice's batch is still made (its jobs'
    ids are tagged apart from any (uid, key) job id), and the user's job is theirs."""
    from kiln.core.batches import new_batch_id

    squatter = new_batch_id("alice", "vk-1")
    status, answer, _ = call(rig, f"Bearer uid:{squatter}", "POST", "/v1/jobs",
                             {"kind": "image", "prompt": "a squat"}, key="0")
    assert status == 202
    status, batch, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(2)},
                            key="vk-1")
    assert status == 202, batch
    assert answer["jobId"] not in batch["jobIds"]


def test_counts_come_from_the_jobs_and_an_app_user_gets_one_push(rig: Rig) -> None:
    rig.devices.register("alice", "phone", fid="fid-1", platform="android")
    _, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(3)})
    batch_id = answer["batchId"]
    status, view, _ = call(rig, "Bearer uid:alice", "GET", f"/v1/batches/{batch_id}")
    assert status == 200 and view["counts"]["pending"] == 3 and not view["done"]
    run_all(rig)
    _, view, _ = call(rig, "Bearer uid:alice", "GET", f"/v1/batches/{batch_id}")
    assert view["counts"] == {"pending": 0, "processing": 0, "completed": 3, "failed": 0,
                              "canceled": 0} and view["done"]
    # one push for the whole batch, none per job
    assert [p.data for p in rig.push.sent] == [{"type": "batch_completed", "batchId": batch_id,
                                                "total": "3", "completed": "3"}]
    assert rig.services.batches.batches[batch_id].id == batch_id  # type: ignore[attr-defined]
    # another user cannot see it
    assert call(rig, "Bearer uid:bob", "GET", f"/v1/batches/{batch_id}")[0] == 404


def test_an_api_tenant_gets_one_batch_completed_event(rig: Rig) -> None:
    key = create_key(rig.services.keys, rig.clock, tenant="acme",
                     scopes=["submit", "read", "cancel"]).secret
    status, answer, _ = call(rig, f"Bearer {key}", "POST", "/v1/batches", {"items": items(4)})
    assert status == 202
    assert {rig.job(j).uid for j in answer["jobIds"]} == {"api:acme"}
    run_all(rig)
    # a late redelivery of the last job's end does not announce it twice
    from kiln.runtime.batch_end import on_job_ended

    on_job_ended(rig.services, rig.job(answer["jobIds"][-1]))
    assert [(e["id"], e["tenant"], e["data"]["counts"]["completed"]) for e in batch_events(rig)] \
        == [(event_id("batch.completed", answer["batchId"]), "acme", 4)]
    assert rig.push.sent == []


def test_cancel_ends_every_job_not_yet_ended_and_announces_once(rig: Rig) -> None:
    key = create_key(rig.services.keys, rig.clock, tenant="acme",
                     scopes=["submit", "read", "cancel"]).secret
    _, answer, _ = call(rig, f"Bearer {key}", "POST", "/v1/batches", {"items": items(3)})
    batch_id, job_ids = answer["batchId"], answer["jobIds"]
    from kiln.runtime.worker import run_job

    run_job(job_ids[0], rig.services)  # the first one completes
    status, result, _ = call(rig, f"Bearer {key}", "POST", f"/v1/batches/{batch_id}:cancel")
    assert status == 200 and result["canceled"] == 2
    assert result["counts"] == {"pending": 0, "processing": 0, "completed": 1, "failed": 0,
                                "canceled": 2}
    assert [e["id"] for e in batch_events(rig)] == [event_id("batch.completed", batch_id)]
    # cancelling again changes nothing
    assert call(rig, f"Bearer {key}", "POST", f"/v1/batches/{batch_id}:cancel")[1]["canceled"] == 0


def test_batch_routes_check_their_scopes(rig: Rig) -> None:
    key = create_key(rig.services.keys, rig.clock, tenant="acme", scopes=["read"]).secret
    status, answer, _ = call(rig, f"Bearer {key}", "POST", "/v1/batches", {"items": items(2)})
    assert (status, answer["error"]["code"]) == (403, "insufficient_scope")
    assert rig.store.docs == {}
    submit = create_key(rig.services.keys, rig.clock, tenant="acme", scopes=["submit"]).secret
    batch_id = call(rig, f"Bearer {submit}", "POST", "/v1/batches", {"items": items(2)})[1]["batchId"]
    assert call(rig, f"Bearer {key}", "POST", f"/v1/batches/{batch_id}:cancel")[0] == 403
    assert call(rig, f"Bearer {submit}", "GET", f"/v1/batches/{batch_id}")[0] == 403
    assert call(rig, f"Bearer {key}", "GET", f"/v1/batches/{batch_id}")[0] == 200


def test_a_batch_header_is_judged_after_who_sends_it() -> None:
    """A bad Idempotency-Key from a stranger is 401, from a read-only key 403 (as for
    single jobs), and only from a caller who may submit 400."""
    rig = build_rig()
    read_only = create_key(rig.services.keys, rig.clock, tenant="acme", scopes=["read"]).secret
    body = {"items": items(1)}
    assert call(rig, "", "POST", "/v1/batches", body, key="é")[0] == 401
    assert call(rig, f"Bearer {read_only}", "POST", "/v1/batches", body, key="é")[0] == 403
    assert call(rig, "Bearer uid:alice", "POST", "/v1/batches", body, key="é")[0] == 400


def test_a_batch_larger_than_a_days_quota_is_refused_for_good_not_told_to_wait() -> None:
    """Given a plan of 10 jobs a day, a batch of 11 is 400 ``batch_exceeds_quota`` (a 429
    with Retry-After at midnight would be answered the same every day); 10 are taken."""
    rig = build_rig(plans="free:daily=10,running=20", provider_capacity="50")
    status, answer, headers = call(rig, "Bearer uid:alice", "POST", "/v1/batches",
                                   {"items": items(11)})
    assert (status, answer["error"]["code"]) == (400, "batch_exceeds_quota")
    assert "Retry-After" not in headers and rig.store.docs == {}
    assert call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(10)})[0] == 202


def test_a_retry_is_a_run_the_days_quota_counts() -> None:
    """Given a plan of 2 jobs a day and a job that fails, then its retry takes the day's
    second ticket (202), another job is refused (429), and once the retry fails too, a
    further retry is refused 429 ``quota_exceeded`` with nothing changed; a retry of a job
    already running again costs nothing."""
    rig = build_rig(plans="free:daily=2,running=5")
    provider = rig.providers["image"]
    provider.error = PermanentError("It was refused.", code="content_refused")
    job_id = call(rig, "Bearer uid:alice", "POST", "/v1/jobs", CUBE)[1]["jobId"]
    run_all(rig)
    assert call(rig, "Bearer uid:alice", "POST", f"/v1/jobs/{job_id}:retry")[0] == 202
    assert call(rig, "Bearer uid:alice", "POST", f"/v1/jobs/{job_id}:retry")[0] == 202  # free
    assert call(rig, "Bearer uid:alice", "POST", "/v1/jobs", CUBE)[0] == 429
    run_all(rig)
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", f"/v1/jobs/{job_id}:retry")
    assert (status, answer["error"]["code"]) == (429, "quota_exceeded")
    assert rig.job(job_id).status.value == "failed" and rig.job(job_id).server.retries == 1


def test_a_key_names_one_request_a_job_or_a_batch(rig: Rig) -> None:
    """A key used for a single job is 422 for a batch, and a batch's key 422 for a single
    job (each checked in the other's commit: no read before it), with nothing created;
    each request still replays as itself, and another caller's same key is its own."""
    alice = "Bearer uid:alice"
    assert call(rig, alice, "POST", "/v1/jobs", CUBE, key="order-42")[0] == 202
    status, answer, _ = call(rig, alice, "POST", "/v1/batches", {"items": [CUBE]},
                             key="order-42")
    assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused")
    assert rig.services.batches.get(new_batch_id("alice", "order-42")) is None
    replay = call(rig, alice, "POST", "/v1/jobs", CUBE, key="order-42")
    assert replay[0] == 202 and replay[2].get("Idempotent-Replayed") == "true"
    assert call(rig, "Bearer uid:bob", "POST", "/v1/batches", {"items": [CUBE]},
                key="order-42")[0] == 202

    batch = call(rig, alice, "POST", "/v1/batches", {"items": [CUBE]}, key="order-43")
    assert batch[0] == 202
    status, answer, _ = call(rig, alice, "POST", "/v1/jobs", CUBE, key="order-43")
    assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused")
    assert rig.services.store.get(new_job_id("alice", "order-43")) is None
    again = call(rig, alice, "POST", "/v1/batches", {"items": [CUBE]}, key="order-43")
    assert again[:2] == (202, batch[1]) and again[2].get("Idempotent-Replayed") == "true"


def test_a_key_reused_across_jobs_and_batches_at_the_quota_is_422_not_429() -> None:
    """Given a batch that spent the day's quota, when a single job is sent with the
    batch's key, then the answer is 422 idempotency_key_reused (the key's mistake), not a
    429 a client would wait out and send again; nothing is created. The same for a job's
    key reused for a batch."""
    rig = build_rig(plans="free:daily=2,running=200", provider_capacity="200")
    assert call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(2)},
                key="lot-7")[0] == 202
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/jobs", CUBE, key="lot-7")
    assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused")
    assert rig.services.store.get(new_job_id("alice", "lot-7")) is None
    # and the other way: a job's key reused for a batch when no quota is left
    rig = build_rig(plans="free:daily=1,running=200", provider_capacity="200")
    assert call(rig, "Bearer uid:alice", "POST", "/v1/jobs", CUBE, key="lot-8")[0] == 202
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches",
                             {"items": items(1)}, key="lot-8")
    assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused")


def test_a_replayed_batch_is_answered_as_the_first_time_after_a_limit_was_lowered(
        rig: Rig) -> None:
    """Given a keyed batch with a 700-character model prompt, when the model service is
    switched to one that takes 600, then the same batch again is its replay (202, the same
    ids), while a new batch with that prompt is refused."""
    from dataclasses import replace

    body = {"items": [{"kind": "model", "prompt": "p" * 700}]}
    first = call(rig, "Bearer uid:alice", "POST", "/v1/batches", body, key="lot-1")
    assert first[0] == 202
    rig.services.settings = replace(rig.services.settings, model_provider="meshy")
    again = call(rig, "Bearer uid:alice", "POST", "/v1/batches", body, key="lot-1")
    assert again[:2] == first[:2] and again[2].get("Idempotent-Replayed") == "true"
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", body, key="lot-2")
    assert (status, answer["error"]["code"]) == (400, "prompt_too_long")


def test_a_device_store_blip_at_the_batch_end_loses_no_push(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an app user's batch whose last job ends while the device store blips, then
    the batch is left open (its end marker not yet made) and the sweeper's pass sends its
    one push, once."""
    rig.devices.register("alice", "phone", fid="fid-1", platform="android")
    batch_id = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(2)})[1][
        "batchId"]
    devices, faults = rig.devices.devices, [True]

    def blip(uid: str) -> Any:
        if faults and faults.pop():
            raise RetryableError("The device store is unavailable.", code="store_unavailable")
        return devices(uid)

    monkeypatch.setattr(rig.devices, "devices", blip)
    run_all(rig)
    assert rig.push.sent == [] and not faults
    for _ in range(2):
        rig.clock.advance(120)
        sweep(rig.services)
    assert [p.data["batchId"] for p in rig.push.sent] == [batch_id]


def test_the_sweeper_announces_a_batch_whose_end_check_failed(rig: Rig) -> None:
    # given an API batch whose last job's own end check failed (the store was unreachable)
    key = create_key(rig.services.keys, rig.clock, tenant="acme", scopes=["submit"]).secret
    _, answer, _ = call(rig, f"Bearer {key}", "POST", "/v1/batches", {"items": items(2)})
    from kiln.runtime import batch_end, sweeper

    rig.services.batches.fail_counts = 2  # type: ignore[attr-defined]
    run_all(rig)
    assert batch_events(rig) == [] and rig.services.batches.fail_counts == 0  # type: ignore[attr-defined]
    # when the sweeper runs
    assert sweeper.sweep(rig.services).get("batches_ended") == 1
    # then batch.completed was emitted once, and the closed batch is not looked at again
    assert [e["data"]["batchId"] for e in batch_events(rig)] == [answer["batchId"]]
    assert batch_end.sweep(rig.services) == 0
    assert rig.services.batches.open_batches(10) == []


def test_a_job_retried_after_its_batch_was_announced_is_pushed_on_its_own(rig: Rig) -> None:
    """Given an app batch announced with one job failed, when that job is retried and
    completes, then its own push is sent (a batch's jobs send none while the batch's one
    push is still to come; this one came already)."""
    from kiln.core.errors import PermanentError
    from kiln.runtime import actions
    from kiln.runtime.worker import run_job

    rig.devices.register("alice", "phone", fid="f")
    _, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(2)})
    batch_id, (done, failing) = answer["batchId"], answer["jobIds"]
    run_job(done, rig.services)
    rig.providers["image"].error = PermanentError("No.", code="content_refused")
    run_job(failing, rig.services)
    assert [p.data["type"] for p in rig.push.sent] == ["batch_completed"]
    rig.providers["image"].error = None
    assert actions.retry(rig.services, failing, by="owner").changed
    run_all(rig)
    assert rig.job(failing).status.value == "completed"
    assert [(p.data["type"], p.data.get("jobId", p.data.get("batchId")))
            for p in rig.push.sent] == [("batch_completed", batch_id),
                                        ("generation_completed", failing)]


def test_a_retried_job_whose_ending_announces_its_batch_sends_only_the_batch_push(
        rig: Rig) -> None:
    from kiln.core.errors import PermanentError
    from kiln.runtime import actions
    from kiln.runtime.worker import run_job

    rig.devices.register("alice", "phone", fid="f")
    _, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(2)})
    failing, other = answer["jobIds"]
    rig.providers["image"].error = PermanentError("No.", code="content_refused")
    run_job(failing, rig.services)
    rig.providers["image"].error = None
    assert actions.retry(rig.services, failing, by="owner").changed
    run_job(other, rig.services)  # not the last: no push
    assert rig.push.sent == []
    run_all(rig)  # the retried job ends last and announces the batch
    assert [p.data["type"] for p in rig.push.sent] == ["batch_completed"]


def test_a_job_retried_before_its_batch_was_announced_rides_the_batch_push(rig: Rig) -> None:
    """Given an app batch of three, one job failed and retried while another still runs,
    when the retried job completes before the last one, then it sends no push of its own:
    the batch's one push, when the last job ends, covers it."""
    from kiln.core.errors import PermanentError
    from kiln.runtime import actions
    from kiln.runtime.worker import run_job

    rig.devices.register("alice", "phone", fid="f")
    _, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(3)})
    failing, first, last = answer["jobIds"]
    rig.providers["image"].error = PermanentError("No.", code="content_refused")
    run_job(failing, rig.services)
    rig.providers["image"].error = None
    assert actions.retry(rig.services, failing, by="owner").changed
    run_job(first, rig.services)
    run_job(failing, rig.services)  # retried, ends before the batch's last job
    assert rig.push.sent == []
    run_job(last, rig.services)
    assert [p.data["type"] for p in rig.push.sent] == ["batch_completed"]


@pytest.mark.parametrize("key", ["k-late", None])
def test_a_batch_whose_commit_landed_but_answered_late_keeps_its_quota(
        monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    """Given a plan of 50 jobs a day, when a batch of 50's commit is applied but answers
    with a timeout (Firestore's ambiguous commit), then the request is accepted (202, its
    jobs published) and the quota stays taken: a replay is free, and 50 more are 429."""
    rig = build_rig(plans="free:daily=50,running=200", provider_capacity="200")
    store, landed_late = rig.services.batches, list[str]()

    def applied_then_timeout(batch: Any, jobs: Any, **key: Any) -> bool:
        created = type(store).create(store, batch, jobs, **key)
        if not landed_late:
            landed_late.append(batch.id)
            raise RetryableError("The batch store is unavailable.", code="store_unavailable")
        return created

    monkeypatch.setattr(store, "create", applied_then_timeout)
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(50)},
                             key=key)
    assert (status, answer["batchId"]) == (202, landed_late[0])
    assert len({d.job_id for d in rig.queue.deliveries}) == 50
    if key is not None:
        again, replayed, headers = call(rig, "Bearer uid:alice", "POST", "/v1/batches",
                                        {"items": items(50)}, key=key)
        assert (again, replayed["jobIds"], headers["Idempotent-Replayed"]) == (
            202, answer["jobIds"], "true")
    more, refused, _ = call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(50)})
    assert (more, refused["error"]["code"]) == (429, "quota_exceeded")
    assert len(rig.store.find(uid="alice", limit=1000)) == 50


def test_one_batch_whose_end_cannot_be_announced_stops_no_other_in_the_sweep(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given two ended batches left open (their end checks failed), when the sweeper's
    pass meets one whose announcement raises, then it still announces the other."""
    rig.devices.register("alice", "phone", fid="fid-1", platform="android")
    ids = [call(rig, "Bearer uid:alice", "POST", "/v1/batches", {"items": items(1)})[1][
        "batchId"] for _ in range(2)]
    announce = batch_end.announce_if_ended
    monkeypatch.setattr(batch_end, "announce_if_ended", lambda *_a: False)
    run_all(rig)
    assert rig.push.sent == []
    broken = rig.services.batches.batches[ids[0]]  # type: ignore[attr-defined]

    def announce_but_the_first(services: Any, batch: Any) -> bool:
        if batch.id == broken.id:
            raise RuntimeError("unreadable")
        return announce(services, batch)

    monkeypatch.setattr(batch_end, "announce_if_ended", announce_but_the_first)
    rig.clock.advance(120)
    sweep(rig.services)
    assert [p.data["batchId"] for p in rig.push.sent] == [ids[1]]
