"""The fair queue at the moments between two writes: a place being taken, a provider's 429
on a job's first delivery, a cancel while a pass decides, a requeue late in a job's wait.
Each test stops one step at exactly that moment (the rig's fakes, a fake clock)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import flask
import pytest
from rig import Rig, SyncFake
from test_fair_queue import post, post_raw, recording_rig

from kiln.core import lifecycle
from kiln.core.errors import RetryableError
from kiln.core.job import JobStatus, new_job_id
from kiln.http.api import handle
from kiln.runtime import actions, dispatch, worker
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import RunOutcome, run_job


def running(rig: Rig) -> list[str]:
    """Jobs that hold their start: running, or started and not yet claimed."""
    return [job_id for job_id in rig.store.docs
            if (job := rig.job(job_id)).status is JobStatus.PROCESSING
            or (job.status is JobStatus.PENDING and not job.server.queued)]


def test_a_place_being_taken_is_not_given_to_another_job() -> None:
    """Given a provider of capacity 2 with bob's and dave's jobs running and dave's second
    waiting on his running limit, when dave's first ends and alice's new job takes the
    freed provider place, then a pass before alice's claim does not count her place free
    (her job still looks queued): dave's second waits, and never more than 2 jobs hold
    the provider. (Each step is taken by hand, in that order.)"""
    rig = recording_rig(provider_capacity="2")
    b1 = post(rig, "bob", "pro")[1]["jobId"]
    d1 = post(rig, "dave")[1]["jobId"]
    d2 = post(rig, "dave")[1]["jobId"]
    assert rig.job(d2).queue_reason == "running_limit"
    j = post_raw(rig)[1]["jobId"]
    # dave's first ends and gives its places back (as its worker's after_end does)...
    ended = rig.store.transact(d1, lambda job: (lifecycle.cancel(job), job))
    dispatch.release_places(rig.services, d1, ended.server.pools)
    # ...alice's arrival takes the freed places (its delivery, before its claim)...
    places = dispatch.arrive(rig.services, rig.job(j))
    pool = dispatch.provider_pool(rig.services, "image")[0]
    assert places and sorted(rig.slots.holders(pool)) == sorted([b1, j])
    assert rig.job(j).server.queued  # still an arrival: it looks queued
    # ...then the pass that dave's ending runs.
    dispatch.dispatch(rig.services)
    assert sorted(rig.slots.holders(pool)) == sorted([b1, j])
    assert rig.job(d2).server.queued and rig.job(d2).queue_reason == "provider_capacity"
    # Alice's delivery goes on: its claim takes the job out of the queue with its places.
    rig.store.transact(j, lambda job: (lifecycle.start(job, pools=places), None))
    assert sorted(running(rig)) == sorted([b1, j])  # two, the provider's capacity


def test_a_place_left_behind_by_a_taker_that_died_is_taken_after_a_while() -> None:
    """Given an arrival that took its places and died before its claim (its job still
    queued), when a waiting job's pass runs at once the place stays its taker's; once it
    has been held ``FRESH_PLACE_SECONDS``, the pass takes it."""
    rig = recording_rig(provider_capacity="1")
    j = post_raw(rig)[1]["jobId"]
    places, _seen = worker._arrival_places(j, rig.services)  # ... and the process dies
    assert places
    waiting = post(rig, "bob", "pro")[1]["jobId"]
    assert rig.job(waiting).queue_reason == "provider_capacity"
    assert dispatch.dispatch(rig.services) == 0
    rig.clock.advance(dispatch.FRESH_PLACE_SECONDS)
    assert dispatch.dispatch(rig.services) == 1
    assert not rig.job(waiting).server.queued


def test_a_provider_429_on_a_jobs_first_delivery_gives_its_places_back() -> None:
    """Given a new job whose first delivery takes its places and meets a provider 429
    (capacity 2, narrowed to 1), then it holds none afterwards: alice's next job starts
    in the narrowed window instead of waiting beside the refused job's places."""
    rig = recording_rig(provider_capacity="2")
    provider = rig.providers["image"]
    assert isinstance(provider, SyncFake)
    provider.error = RetryableError("slow down", code="provider_rate_limited", retry_after=5)
    j = post_raw(rig)[1]["jobId"]
    assert run_job(j, rig.services) is RunOutcome.QUEUED
    pool = dispatch.provider_pool(rig.services, "image")[0]
    assert rig.slots.holders(pool) == [] and rig.slots.holders("user:alice") == []
    provider.error = None
    k = post_raw(rig)[1]["jobId"]
    run_job(k, rig.services)  # it joins the refused job's queue, then a pass starts it
    assert not rig.job(k).server.queued and rig.job(j).server.queued


def test_a_job_canceled_while_its_delivery_decides_why_it_waits_keeps_no_reason() -> None:
    """Given a new job that finds no place, when its owner cancels it just before its
    delivery writes why it waits, then the canceled job shows no queue reason."""
    rig = recording_rig()
    post(rig)  # alice's one running place (free plan) is taken
    j = post_raw(rig)[1]["jobId"]
    real = dispatch._write_reason

    def canceled_first(services: Any, job_id: str, reason: str, position: int | None) -> None:
        actions.cancel(services, job_id, by="owner")
        real(services, job_id, reason, position)

    dispatch._write_reason = canceled_first  # type: ignore[assignment]
    try:
        assert run_job(j, rig.services) is RunOutcome.ARRIVED_WAITING
    finally:
        dispatch._write_reason = real  # type: ignore[assignment]
    job = rig.job(j)
    assert job.status is JobStatus.CANCELED and job.queue_reason is None


def test_a_job_sent_back_by_a_429_gets_its_whole_time_to_wait_again() -> None:
    """Given a job that waited 590 s of its 600 s queue time before its start, when the
    provider refuses it (429), then its time to wait starts again from the refusal (its
    place in the order is kept): the next sweep does not fail it ``expired``."""
    rig = recording_rig(provider_capacity="2")
    provider = rig.providers["image"]
    assert isinstance(provider, SyncFake)
    j = post_raw(rig)[1]["jobId"]
    queued_at = rig.job(j).server.queued_at
    rig.clock.advance(590)
    provider.error = RetryableError("slow down", code="provider_rate_limited", retry_after=5)
    refused_at = rig.clock.now()
    assert run_job(j, rig.services) is RunOutcome.QUEUED
    provider.error = None
    job = rig.job(j)
    assert job.server.queued_at == queued_at
    assert refused_at + dt.timedelta(seconds=600) <= job.server.queue_until \
        <= rig.clock.now() + dt.timedelta(seconds=600)
    rig.clock.advance(15)
    sweep(rig.services)
    assert rig.job(j).status is not JobStatus.FAILED


def test_a_job_beyond_the_pass_window_is_started_by_a_later_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given more jobs waiting than a pass reads (2 here), the lowest ids all dave's
    (held back by his running limit) and bob's job above them, when the provider frees a
    place, then a later pass reads bob's job and starts it: each pass reads a window of
    the waiting jobs that moves, not the same lowest ids (with which bob's job waited
    beside a free place until its TTL)."""
    monkeypatch.setattr(dispatch, "SCAN_LIMIT", 2)
    rig = recording_rig(provider_capacity="2")
    post(rig, "dave")
    alices = post(rig, "alice")[1]["jobId"]
    daves = [post(rig, "dave", None, **{"Idempotency-Key": f"d{i}"})[1]["jobId"]
             for i in range(2)]
    key = next(k for k in (f"b{i}" for i in range(1000))
               if new_job_id("bob", k) > max(*daves, "f"))  # far above: read in 1 of 4+
    bob = post(rig, "bob", "pro", **{"Idempotency-Key": key})[1]["jobId"]
    assert bob > max(daves) and rig.job(bob).server.queued
    assert run_job(alices, rig.services) is RunOutcome.COMPLETED  # a provider place frees
    for _ in range(60):  # missed by all: below 1e-7
        if not rig.job(bob).server.queued:
            break
        dispatch.dispatch(rig.services)
    assert not rig.job(bob).server.queued
    assert all(rig.job(job_id).server.queued for job_id in daves)


def test_a_job_the_sweeper_expires_gives_its_places_back() -> None:
    """Given a started job past its maximum age, when the sweeper fails it, then its
    places are given back at once (not left for a later pass to find ended)."""
    rig = recording_rig(provider_capacity="2")
    job_id = post(rig)[1]["jobId"]
    pool = dispatch.provider_pool(rig.services, "image")[0]
    assert rig.slots.holders(pool) == [job_id]
    rig.clock.advance(rig.services.settings.job_max_age_seconds + 1)
    sweep(rig.services)
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert rig.slots.holders(pool) == [] and rig.slots.holders("user:alice") == []


def test_a_batch_replayed_while_it_is_created_keeps_its_places() -> None:
    """Given a batch accepted with an Idempotency-Key (its two jobs hold alice's two
    running places), when the same request arrives again and reads the batch as absent
    (the first was committing), then its create finds the batch and it answers a replay
    without giving back the places the batch's jobs hold (the ids are the same)."""
    rig = recording_rig()
    body = {"items": [{"kind": "image", "prompt": f"tile {i}"} for i in range(2)]}

    def post_batch() -> Any:
        with flask.Flask("t").test_request_context(
                "/v1/batches", method="POST", json=body,
                headers={"Authorization": "Bearer uid:bob;plan=pro", "Idempotency-Key": "k"}):
            response = handle(flask.request, rig.services)
        return response.status_code, response.get_json(), response.headers

    status, first, _ = post_batch()
    assert status == 202
    held = sorted(rig.slots.holders("user:bob"))
    assert held == sorted(first["jobIds"])
    real_get, reads = rig.services.batches.get, []

    def not_yet(batch_id: str) -> Any:  # the replay's first read: before the commit
        reads.append(batch_id)
        return None if len(reads) == 1 else real_get(batch_id)

    rig.services.batches.get = not_yet  # type: ignore[method-assign]
    status, again, headers = post_batch()
    assert (status, again["jobIds"], headers.get("Idempotent-Replayed")) == \
        (202, first["jobIds"], "true")
    assert sorted(rig.slots.holders("user:bob")) == held
    pool = dispatch.provider_pool(rig.services, "image")[0]
    assert sorted(rig.slots.holders(pool)) == held
