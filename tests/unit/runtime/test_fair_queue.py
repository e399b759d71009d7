"""Plans, admission and the fair queue (issue 14) on the fakes with a fake clock: the
quota's 429, backpressure's 503, the running limit, the fair and prioritised start,
ageing, the queue's TTL and a provider 429's narrowed window."""

from __future__ import annotations

from typing import Any

import flask
import pytest
from rig import Rig, SyncFake, build_rig
from rig import api_call as call

from kiln.core import fairness, lifecycle
from kiln.core.errors import ConfigError, RetryableError
from kiln.core.job import JobStatus
from kiln.http.api import handle
from kiln.runtime import actions, dispatch
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import RunOutcome, run_job
from kiln.settings import Settings

PLANS = "free:daily=3,running=1,priority=0;pro:daily=100,running=2,priority=10"


def post(rig: Rig, uid: str = "alice", plan: str | None = None, **headers: str) -> Any:
    """POST /v1/jobs through the real router, then the job's first delivery places it as
    the worker does (``dispatch.arrive``); the answer as (status, json, headers)."""
    token = f"uid:{uid}" + (f";plan={plan}" if plan else "")
    app = flask.Flask("t")
    with app.test_request_context("/v1/jobs", method="POST",
                                  json={"kind": "image", "prompt": "a red cube"},
                                  headers={"Authorization": f"Bearer {token}", **headers}):
        response = handle(flask.request, rig.services)
    body = response.get_json()
    if response.status_code == 202 and "Idempotent-Replayed" not in response.headers:
        job = rig.job(body["jobId"])
        assert job.server.queued and job.queue_reason is None  # an arrival
        places = dispatch.arrive(rig.services, job)
        if places:  # started: its delivery's claim takes it out of the queue (not run here)
            rig.store.transact(job.id, lambda j: (lifecycle.start(j, pools=places), None))
            _starts(rig).append(job.id)
    return response.status_code, body, response.headers


def post_raw(rig: Rig, kind: str = "image") -> Any:
    """POST /v1/jobs as alice, nothing more: (status, json, headers)."""
    with flask.Flask("t").test_request_context(
            "/v1/jobs", method="POST", json={"kind": kind, "prompt": "a red cube"},
            headers={"Authorization": "Bearer uid:alice"}):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json(), response.headers


def _starts(rig: Rig) -> list[str]:
    """The jobs that left the fair queue, in order: placed by their first delivery, or
    started by a pass (its 'start' message), or a batch's jobs created holding places."""
    starts: list[str] = rig.queue.__dict__.setdefault("starts", [])
    return starts


def started(rig: Rig) -> list[str]:
    return list(_starts(rig))


@pytest.fixture
def rig() -> Rig:
    return recording_rig()


def recording_rig(provider_capacity: str = "4") -> Rig:
    """A rig whose queue records the jobs a pass started (``started``)."""
    rig = build_rig(plans=PLANS, provider_capacity=provider_capacity,
                    queue_ttl_seconds=600.0, queue_ageing_seconds=60.0,
                    provider_backoff_seconds=120.0)
    publish = rig.queue.publish

    def recording(job_id: str, *, reason: str = "new", check: int | None = None) -> str:
        if reason == "start":
            _starts(rig).append(job_id)
        return publish(job_id, reason=reason, check=check)

    rig.queue.publish = recording  # type: ignore[method-assign]
    return rig


def test_over_the_daily_quota_is_429_and_creates_nothing(rig: Rig) -> None:
    """Given the free plan's 3 jobs a day, when a 4th is posted, then 429 with Retry-After
    (until midnight UTC) and the error shape, and no job is created."""
    assert [post(rig)[0] for _ in range(3)] == [202, 202, 202]
    status, body, headers = post(rig)
    assert status == 429 and body["error"]["code"] == "quota_exceeded"
    assert "3 jobs" in body["error"]["message"]
    assert 0 < int(headers["Retry-After"]) <= 86400
    assert len(rig.store.docs) == 3


def test_a_request_kiln_would_refuse_is_400_over_the_quota_too(rig: Rig) -> None:
    """Given the day's quota spent, when a request Kiln would refuse anyway is posted (an
    imageUrl at a private address), then 400 with its own code, not a 429 that tells the
    client to send it again after midnight."""
    assert [post(rig)[0] for _ in range(3)] == [202, 202, 202]
    status, body, _ = call(rig, "Bearer uid:alice", "POST", "/v1/jobs", {
        "kind": "model", "prompt": "a cube", "options": {"imageUrl": "https://10.0.0.1/x.png"}})
    assert (status, body["error"]["code"]) == (400, "invalid_image_url")


def test_a_plan_of_no_jobs_is_refused_for_good_not_told_to_wait() -> None:
    rig = build_rig(plans="free:daily=0,running=1")
    status, body, headers = post(rig)
    assert (status, body["error"]["code"]) == (400, "plan_allows_no_jobs")
    assert "Retry-After" not in headers and rig.store.docs == {}


def test_an_idempotent_replay_costs_no_quota(rig: Rig) -> None:
    for _ in range(5):
        assert post(rig, **{"Idempotency-Key": "k1"})[0] == 202
    assert len(rig.store.docs) == 1 and post(rig)[0] == 202


def test_too_many_waiting_jobs_is_503_with_retry_after(rig: Rig) -> None:
    """Given a cap of 2 waiting jobs, when a third would wait, then 503 + Retry-After."""
    rig.services.settings = Settings(**{**vars_of(rig.services.settings), "max_waiting": 2})
    assert post(rig, "a")[0] == 202 and post(rig, "b")[0] == 202
    status, body, headers = post(rig, "c")
    assert (status, body["error"]["code"]) == (503, "overloaded") and headers["Retry-After"]
    assert len(rig.store.docs) == 2


def vars_of(settings: Settings) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def test_over_the_running_limit_waits_queued_and_starts_when_a_place_frees(rig: Rig) -> None:
    """Given the free plan's 1 running job, when alice posts two, then the second is
    accepted but waits (pending, queued, running_limit, not published); when the first
    ends, it starts; alice never runs two at once."""
    first, second = post(rig)[1]["jobId"], post(rig)[1]["jobId"]
    waiting = rig.job(second)
    assert (waiting.status, waiting.stage, waiting.queue_reason) == \
        (JobStatus.PENDING, "queued", "running_limit")
    assert started(rig) == [first]
    assert run_job(second, rig.services) is RunOutcome.QUEUED  # a stray delivery: acked
    assert run_job(first, rig.services) is RunOutcome.COMPLETED
    assert started(rig) == [first, second] and rig.job(second).queue_reason is None
    assert run_job(second, rig.services) is RunOutcome.COMPLETED


def test_paid_first_then_users_take_turns() -> None:
    """Given waiting jobs of a heavy free user, another free user and a pro user, then the
    pro job starts first and the free users alternate (round-robin), oldest first."""
    from kiln_dev.fakes import EPOCH

    at = [EPOCH.replace(second=s) for s in range(6)]
    jobs = [fairness.Waiting("h1", "heavy", 0, at[0]), fairness.Waiting("h2", "heavy", 0, at[1]),
            fairness.Waiting("h3", "heavy", 0, at[2]), fairness.Waiting("f1", "free", 0, at[3]),
            fairness.Waiting("p1", "paid", 10, at[4]), fairness.Waiting("f2", "free", 0, at[5])]
    order = [w.job_id for w in fairness.order(jobs, now=at[5], ageing_seconds=60.0)]
    assert order == ["p1", "h1", "f1", "h2", "f2", "h3"]


def test_ageing_lets_a_long_waiting_free_job_pass_fresh_paid_ones() -> None:
    from kiln_dev.fakes import EPOCH

    old_free = fairness.Waiting("free", "f", 0, EPOCH)
    now = EPOCH.replace(minute=11)  # 11 ageing steps of 60 s: 0 + 11 > 10
    fresh_paid = fairness.Waiting("paid", "p", 10, now)
    order = fairness.order([fresh_paid, old_free], now=now, ageing_seconds=60.0)
    assert [w.job_id for w in order] == ["free", "paid"]


def test_a_job_waiting_past_its_ttl_fails_expired_with_a_readable_message(rig: Rig) -> None:
    first, second = post(rig)[1]["jobId"], post(rig)[1]["jobId"]
    rig.clock.advance(601)
    sweep(rig.services)
    job = rig.job(second)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["code"] == "expired" and "waited too long" in job.error["message"]
    assert job.queue_reason is None
    assert rig.job(first).status is JobStatus.PENDING  # started: no TTL any more


def test_provider_capacity_is_shared_fairly_and_never_exceeded(rig: Rig) -> None:
    """Given capacity 4, when 3 users post 3 jobs each (pro plan: 2 running each), then 4
    start; as each ends the next user in turn starts; never more than 4 at once, nor
    more than 2 of one user."""
    ids = {uid: [post(rig, uid, "pro")[1]["jobId"] for _ in range(3)] for uid in "abc"}
    owner = {job_id: uid for uid, jobs in ids.items() for job_id in jobs}
    done: list[str] = []
    while len(done) < 9:
        running = [j for j in started(rig) if j not in done]
        assert len(running) <= 4
        assert max(sum(1 for j in running if owner[j] == u) for u in "abc") <= 2
        reasons = {rig.job(j).queue_reason for j in owner if j not in started(rig)}
        assert reasons <= {"provider_capacity", "running_limit"}
        assert run_job(running[0], rig.services) is RunOutcome.COMPLETED
        done.append(running[0])
    assert [owner[j] for j in started(rig)][:4] == ["a", "a", "b", "b"]


def test_a_provider_429_narrows_its_window_and_spends_no_attempt(rig: Rig) -> None:
    """Given a provider that answers 429, when a job runs, then it goes back to the queue
    (attempts not spent), the provider's window halves for the backoff time, and after it
    the job starts again."""
    provider = rig.providers["image"]
    assert isinstance(provider, SyncFake)
    provider.error = RetryableError("slow down", code="provider_rate_limited", retry_after=5)
    job_id = post(rig, "a", "pro")[1]["jobId"]
    assert run_job(job_id, rig.services) is RunOutcome.QUEUED
    job = rig.job(job_id)
    assert (job.status, job.attempts, job.queue_reason) == \
        (JobStatus.PENDING, 0, "provider_capacity")
    pool = dispatch.provider_pool(rig.services, "image")
    assert pool[1:] == (4, 2)
    provider.error = None
    others = [post(rig, uid, "pro")[1]["jobId"] for uid in "bcd"]
    # One waits for the provider already: new jobs join the queue, and while the narrowed
    # window has room each one's arrival runs a pass, which starts it: two of them
    # (window 2), not the refused job (not before its Retry-After).
    assert [j for j in others if not rig.job(j).server.queued] == others[:2]
    assert rig.job(others[2]).queue_reason == "provider_capacity"
    assert dispatch.dispatch(rig.services) == 0
    rig.clock.advance(121)
    assert dispatch.provider_pool(rig.services, "image")[2] == 4
    sweep(rig.services)
    assert not rig.job(job_id).server.queued


def test_a_provider_that_keeps_refusing_for_capacity_costs_attempts_in_the_end(rig: Rig) -> None:
    """A 429 that never clears must not keep a job queued until its maximum age: within a
    queue's wait (``KILN_QUEUE_TTL_SECONDS``) of when the job first queued, a 429 sends it
    back to the queue for free; after it, a 429 still narrows the provider's window but
    spends an attempt like any retryable error, so the job fails readably after them.
    Its retries run on the places it holds: its owner's running limit (free: 1) keeps a
    second job of theirs queued until it ends."""
    provider = rig.providers["image"]
    assert isinstance(provider, SyncFake)
    provider.error = RetryableError("slow down", code="provider_rate_limited", retry_after=5)
    job_id = post(rig, "a")[1]["jobId"]
    assert run_job(job_id, rig.services) is RunOutcome.QUEUED
    ttl = rig.services.settings.queue_ttl_seconds
    first = rig.job(job_id).server.queued_at
    assert first is not None
    rig.clock.advance(ttl - 200)  # still within its wait: back to the queue again
    sweep(rig.services)
    assert run_job(job_id, rig.services) is RunOutcome.QUEUED
    assert rig.job(job_id).server.requeues == 2
    rig.clock.advance(300)  # turned away for longer than a queue's wait
    sweep(rig.services)
    assert not rig.job(job_id).server.queued
    with pytest.raises(RetryableError):  # released for a retry: an attempt spent
        run_job(job_id, rig.services)
    job = rig.job(job_id)
    assert (job.status, job.attempts, job.server.queued) == (JobStatus.PENDING, 1, False)
    assert dispatch.provider_pool(rig.services, "image")[1:] == (4, 2)  # still narrowed
    assert rig.slots.holders("user:a") == [job_id]  # its retry runs on its places
    second = post(rig, "a")[1]["jobId"]
    assert second not in started(rig) and rig.job(second).queue_reason == "running_limit"
    provider.error = None
    rig.clock.advance(60)
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert started(rig)[-1] == second and rig.slots.holders("user:a") == [second]


@pytest.mark.parametrize("settings, message", [
    ({"plans": "free:daily=5,running=1;gold:daily=-1,running=1"}, "must not be negative"),
    ({"default_plan": "platinum"}, "unknown plan 'platinum'"),
    ({"telegram_plan": "vip"}, "unknown plan 'vip'"),
    ({"plans": "free:daily=5,running=1,speed=2"}, "unknown field 'speed'"),
    ({"plans": "free:daily=5,running=0"}, "at least 1"),
    ({"provider_capacity": "meshy=-2"}, "at least 1"),
    ({"max_waiting": 0}, "KILN_MAX_WAITING must be positive"),
])
def test_bad_plan_settings_are_refused_at_start_up(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**settings)


def test_plan_settings_from_the_environment() -> None:
    settings = Settings.from_env({"KILN_PLANS": PLANS, "KILN_PLAN_GRANTS": "alice=pro"})
    assert settings.plan_table()["pro"].running == 2 and settings.grants() == {"alice": "pro"}
    with pytest.raises(ConfigError, match="KILN_PLAN_GRANTS"):
        Settings.from_env({"KILN_PLAN_GRANTS": "alice=diamond"})


def test_canceling_a_running_job_starts_the_next_one(rig: Rig) -> None:
    from kiln.runtime import actions

    first, second = post(rig)[1]["jobId"], post(rig)[1]["jobId"]
    assert started(rig) == [first]
    actions.cancel(rig.services, first, by="owner")
    assert started(rig) == [first, second]
    assert run_job(second, rig.services) is RunOutcome.COMPLETED


def test_which_plan_a_caller_has() -> None:
    """A grant wins; a chat has the Telegram plan whatever it claims; a claimed plan the
    table lacks falls back to the default; no claim is the default."""
    from kiln.runtime.admission import plan_for

    rig = build_rig(plans=PLANS, telegram_plan="pro", plan_grants="vip=pro")
    services = rig.services
    assert plan_for(services, uid="vip", channel="app", claimed=None).name == "pro"
    assert plan_for(services, uid="telegram:1", channel="telegram", claimed="free").name == "pro"
    assert plan_for(services, uid="u", channel="app", claimed="diamond").name == "free"
    assert plan_for(services, uid="u", channel="app", claimed=None).name == "free"
    assert plan_for(services, uid="u", channel="api", claimed="pro").name == "pro"


def test_admit_counts_a_batch_as_many_jobs(rig: Rig) -> None:
    """A batch of n takes n of the day's jobs at once, or none of them."""
    from kiln.core.errors import QuotaExceededError
    from kiln.runtime.admission import admit

    assert admit(rig.services, uid="b", channel="api", plan=None, count=2).tickets == (1, 2)
    with pytest.raises(QuotaExceededError):
        admit(rig.services, uid="b", channel="api", plan=None, count=2)
    assert admit(rig.services, uid="b", channel="api", plan=None, count=1).tickets == (3,)


def post_batch(rig: Rig, n: int, uid: str = "alice") -> Any:
    """POST /v1/batches of ``n`` images through the real router: (status, json)."""
    with flask.Flask("t").test_request_context(
            "/v1/batches", method="POST", headers={"Authorization": f"Bearer uid:{uid}"},
            json={"items": [{"kind": "image", "prompt": f"tile {i}"} for i in range(n)]}):
        response = handle(flask.request, rig.services)
    body = response.get_json()
    for job_id in body.get("jobIds", []) if response.status_code == 202 else []:
        if not rig.job(job_id).server.queued:  # created holding its places
            _starts(rig).append(job_id)
    return response.status_code, body


def test_a_batch_is_admitted_as_its_items_and_waits_beyond_the_running_limit(rig: Rig) -> None:
    """Given the free plan (3 jobs a day, 1 running), when alice posts a batch of 4, then
    400 (no day takes it) and nothing is created; a batch of 3 is accepted whole, one job
    starts and the others wait their turns (running_limit), one starting as each one
    before ends; then a batch of 1 is 429 (the day's 3 are spent)."""
    status, body = post_batch(rig, 4)
    assert (status, body["error"]["code"]) == (400, "batch_exceeds_quota") and not rig.store.docs
    status, body = post_batch(rig, 3)
    assert status == 202
    first, *rest = body["jobIds"]
    assert started(rig) == [first]
    assert [rig.job(job_id).queue_reason for job_id in rest] == ["running_limit"] * 2
    for _ in body["jobIds"]:
        running = [job_id for job_id in started(rig) if not rig.job(job_id).terminal]
        assert len(running) == 1  # one at a time: the plan's running limit
        assert run_job(running[0], rig.services) is RunOutcome.COMPLETED
    assert sorted(started(rig)) == sorted(body["jobIds"])
    assert post_batch(rig, 1)[0] == 429  # the day's 3 are spent


def test_a_batch_whose_every_job_must_wait_is_accepted(rig: Rig) -> None:
    """Given alice's one running place taken, when she posts a batch, then it is accepted
    with every job waiting (nothing to publish now: no 5xx)."""
    assert post(rig)[0] == 202
    status, body = post_batch(rig, 2)
    assert status == 202
    assert [rig.job(job_id).queue_reason for job_id in body["jobIds"]] == ["running_limit"] * 2


def test_a_place_freed_while_a_batch_is_created_starts_one_of_its_jobs(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alice's running job holds her one place while her batch of two takes places: both
    must wait. Before the batch's commit lands, that job ends and its pass finds nobody
    waiting. The batch, once created, sees the place free and runs the pass: one of its
    jobs starts at once, the other waits its turn."""
    first = post(rig)[1]["jobId"]
    create = rig.services.batches.create

    def ending_first(batch: Any, jobs: Any, **key: Any) -> Any:
        monkeypatch.setattr(rig.services.batches, "create", create)
        assert run_job(first, rig.services) is RunOutcome.COMPLETED  # its pass finds nobody
        return create(batch, jobs, **key)

    monkeypatch.setattr(rig.services.batches, "create", ending_first)
    status, body = post_batch(rig, 2)
    assert status == 202
    now, later = sorted(body["jobIds"], key=lambda job_id: job_id not in started(rig))
    assert set(started(rig)) == {first, now}  # (post_batch records it again: not queued)
    assert not rig.job(now).server.queued and rig.job(later).queue_reason == "running_limit"


def test_a_batch_is_accepted_when_its_second_look_at_the_pools_fails(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's jobs are created waiting; the store is unavailable when it reads the
    pool once more. The batch is still a 202 (it is accepted, its jobs wait visibly for
    the next pass), not a 503 a client would send again as a new batch."""
    assert post(rig)[0] == 202  # alice's one running place is taken
    create, holders = rig.services.batches.create, rig.services.slots.holders

    def created_then_unavailable(batch: Any, jobs: Any, **key: Any) -> Any:
        def unavailable(pool: str) -> list[str]:
            raise RetryableError("The admission store is unavailable.",
                                 code="store_unavailable")

        monkeypatch.setattr(rig.services.slots, "holders", unavailable)
        return create(batch, jobs, **key)

    monkeypatch.setattr(rig.services.batches, "create", created_then_unavailable)
    status, body = post_batch(rig, 2)
    monkeypatch.setattr(rig.services.slots, "holders", holders)
    assert status == 202
    assert [rig.job(job_id).queue_reason for job_id in body["jobIds"]] == ["running_limit"] * 2


def test_an_arrivals_first_delivery_takes_its_places_and_runs_or_records_why_it_waits(
        rig: Rig) -> None:
    """Acceptance reads and writes no place: the job is an arrival (queued, no reason)
    and its message is published. Its first delivery starts and runs it when its places
    are free; when they are not, the delivery records why it waits and acks, and the job
    starts when a place frees (free plan: one running)."""
    from kiln.runtime import actions

    def accept(kind: str = "image") -> str:
        body = post_raw(rig, kind)[1]
        job = rig.job(body["jobId"])
        assert job.server.queued and job.queue_reason is None and not job.server.pools
        assert rig.queue.published[-1] == (job.id, "new")
        assert not any(job.id in held for held in rig.slots.places.values())
        return job.id

    assert run_job(accept(), rig.services) is RunOutcome.COMPLETED  # places free: runs
    model = accept("model")
    assert run_job(model, rig.services) is RunOutcome.WAITING  # its remote task holds it
    image = accept()
    assert run_job(image, rig.services) is RunOutcome.ARRIVED_WAITING
    assert rig.job(image).queue_reason == "running_limit" and rig.job(image).server.queued
    assert run_job(image, rig.services) is RunOutcome.QUEUED  # a duplicate: acked
    actions.cancel(rig.services, model, by="owner")  # its place frees: the image starts
    assert not rig.job(image).server.queued
    assert run_job(image, rig.services) is RunOutcome.COMPLETED


def test_an_arrivals_first_transaction_is_its_claim(rig: Rig) -> None:
    """An arrival's delivery finds it an arrival with a plain read and takes its places
    first: its first transaction already claims it (one transaction, not two), written on
    what that read saw."""
    job_id = post_raw(rig)[1]["jobId"]
    after: list[tuple[str, Any]] = []
    transact = rig.services.store.transact

    def recording(tx_job_id: str, decide: Any, *, seen: Any = None) -> Any:
        value = transact(tx_job_id, decide, seen=seen)
        after.append((rig.job(tx_job_id).status.value, seen))
        return value

    rig.services.store.transact = recording  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    status, seen = after[0]
    assert status == "processing" and seen is not None and seen.status is JobStatus.PENDING


def test_an_arrival_canceled_after_its_read_is_not_claimed(rig: Rig) -> None:
    """The owner cancels between the delivery's plain read and its claim: the claim
    written on that read does not land, and the job is decided again (canceled)."""
    job_id = post_raw(rig)[1]["jobId"]
    transact = rig.services.store.transact

    def cancel_first(tx_job_id: str, decide: Any, *, seen: Any = None) -> Any:
        rig.services.store.transact = transact  # type: ignore[method-assign]
        assert seen is not None and seen.status is JobStatus.PENDING
        actions.cancel(rig.services, tx_job_id, by="owner")
        return transact(tx_job_id, decide, seen=seen)

    rig.services.store.transact = cancel_first  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.TERMINAL
    job = rig.job(job_id)
    assert job.status is JobStatus.CANCELED and job.attempts == 0 and job.result is None


def test_an_arrival_whose_message_was_lost_is_republished_by_the_sweeper(rig: Rig) -> None:
    rig.queue.fail_next = 1
    status, body, _headers = post_raw(rig)
    assert status == 202 and rig.queue.published == []  # accepted all the same
    rig.clock.advance(61)
    sweep(rig.services)
    assert rig.queue.ids() == [body["jobId"]]
    assert run_job(body["jobId"], rig.services) is RunOutcome.COMPLETED


def test_two_dispatchers_starting_one_job_leave_its_places_held(rig: Rig) -> None:
    """A pass and the job's own delivery start the same job at once: the one whose start
    did not commit gives back no place the started job holds."""
    job_id = post(rig, "a", "pro")[1]["jobId"]  # placed and started by its arrival
    job = rig.job(job_id)
    assert not job.server.queued and job.server.pools
    queued_view = job.__class__.from_docs(job_id, {**rig.store.docs[job_id]},
                                          {**rig.store.servers[job_id], "queued": True})
    assert dispatch.try_start(rig.services, queued_view) is None  # the loser
    held = {pool: rig.slots.holders(pool) for pool in rig.job(job_id).server.pools}
    assert all(job_id in holders for holders in held.values())


def test_a_pass_that_read_a_job_waiting_does_not_mark_it_waiting_once_started(rig: Rig) -> None:
    """A pass read alice's second job waiting; another pass started it meanwhile. The
    first pass's note of why it waits is decided on the job as it is now: nothing is
    written, so the running job shows no queueReason (and the store's index of waiting
    jobs gets no entry for it)."""
    first, second = post(rig)[1]["jobId"], post(rig)[1]["jobId"]
    stale = rig.job(second)
    assert stale.queue_reason == "running_limit"
    assert run_job(first, rig.services) is RunOutcome.COMPLETED  # its end's pass starts it
    assert rig.job(second).queue_reason is None
    dispatch._write_reason(rig.services, stale.id, "provider_capacity", 1)
    assert rig.job(second).queue_reason is None and not rig.job(second).server.queued


@pytest.mark.parametrize("reason", ["running_limit", "provider_capacity"])
def test_a_place_freed_while_an_arrival_writes_why_it_waits_starts_it(
        monkeypatch: pytest.MonkeyPatch, reason: str) -> None:
    """Alice's arrival finds no place (her running job holds hers, or the provider's pool
    is full) and goes to write why it waits. Before that write lands, the running job
    ends: its pass looks for waiting jobs and finds none yet. The arrival, having written
    its reason, sees the place free and runs the pass itself: it starts at once, not at
    the next sweep (the benchmark and tests run with none)."""
    rig = recording_rig(provider_capacity="1" if reason == "provider_capacity" else "4")
    # bob's job holds the provider's one place, or alice's job her one running place
    first = post(rig, "bob", "pro")[1]["jobId"] if reason == "provider_capacity" \
        else post(rig)[1]["jobId"]
    assert started(rig) == [first]
    second = post_raw(rig)[1]["jobId"]
    write_reason = dispatch._write_reason

    def ending_first(services: Any, job_id: str, why: str, position: int | None) -> None:
        monkeypatch.setattr(dispatch, "_write_reason", write_reason)
        assert why == reason and job_id == second
        assert run_job(first, rig.services) is RunOutcome.COMPLETED  # its pass finds nobody
        assert started(rig) == [first]
        write_reason(services, job_id, why, position)

    monkeypatch.setattr(dispatch, "_write_reason", ending_first)
    assert run_job(second, rig.services) is RunOutcome.ARRIVED_WAITING
    assert started(rig) == [first, second] and rig.job(second).queue_reason is None
    assert run_job(second, rig.services) is RunOutcome.COMPLETED


def test_an_arrival_that_waits_while_places_are_held_runs_no_pass(rig: Rig) -> None:
    """The look after writing the reason is one read of the pool it waits for: while the
    place is held, no pass runs (a backlog's arrivals do not each scan the queue)."""
    first = post(rig)[1]["jobId"]
    passes: list[int] = []
    real = dispatch.dispatch

    def counting(services: Any, **kwargs: Any) -> int:
        passes.append(1)
        return real(services, **kwargs)

    dispatch.dispatch = counting  # type: ignore[assignment]
    try:
        second = post_raw(rig)[1]["jobId"]
        assert run_job(second, rig.services) is RunOutcome.ARRIVED_WAITING
    finally:
        dispatch.dispatch = real  # type: ignore[assignment]
    assert passes == [] and started(rig) == [first]
    assert rig.job(second).queue_reason == "running_limit"


def test_tickets_reserved_at_admission_are_created_in_the_jobs_commit(rig: Rig) -> None:
    """POST /v1/jobs reserves its ticket's number and creates it in the job's commit. A
    number another instance took meanwhile is replaced by the next free one; when the
    quota ran out meanwhile the caller gets the 429 and nothing is created."""
    counters = rig.services.counters
    reserve = counters.reserve

    def racing_reserve(key: str, count: int, limit: int) -> list[int] | None:
        numbers = reserve(key, count, limit)
        if numbers:  # another instance takes these numbers first
            assert counters.confirm(key, numbers, "elsewhere")
        return numbers

    counters.reserve = racing_reserve  # type: ignore[method-assign]
    status, body, _ = post_raw(rig)  # its number (1) was taken: it takes the next one (2)
    assert status == 202 and counters.used(f"quota:alice:{rig.clock.now().date()}") == 2
    status, body, _ = post_raw(rig)  # the last number (3) was taken: the quota ran out
    assert (status, body["error"]["code"]) == (429, "quota_exceeded")
    assert len(rig.store.docs) == 1 and counters.used(f"quota:alice:{rig.clock.now().date()}") == 3
