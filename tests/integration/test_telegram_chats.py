"""A chat's running places and daily quota on the Firestore emulator: taken atomically,
given back when the job ends, refunded when it was never created."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import pytest

from kiln.channels.telegram.chats import ORPHAN_PLACE_SECONDS, ChatStore, Reservation, chat_uid
from kiln.core import lifecycle
from kiln.core.job import JobStatus
from kiln.core.requests import parse_job_request

DAY = "2026-11-23"


@pytest.fixture
def chats(services: Any) -> ChatStore:
    return ChatStore(services.firestore)


@pytest.fixture
def chat() -> int:
    return random.randint(10**8, 10**9)


def job_id() -> str:
    return f"tg-{uuid.uuid4().hex[:16]}"


def reserve(chats: ChatStore, chat: int, job: str, *, quota: int = 10, max_running: int = 2,
            now: float | None = None) -> Reservation:
    return chats.reserve(chat, job_id=job, day=DAY, quota=quota, max_running=max_running,
                         now=time.time() if now is None else now)


def test_concurrent_updates_never_exceed_the_running_limit(chats: ChatStore, chat: int) -> None:
    """Given 8 updates of one chat arriving at once (distinct jobs), when each reserves with a
    limit of 2 running, then exactly 2 get a place, the others are refused for "running",
    and the quota counted exactly 2."""
    results: list[Reservation] = []
    gate = threading.Barrier(8)

    def one() -> None:
        gate.wait()
        results.append(reserve(chats, chat, job_id()))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.refused for r in results) == [""] * 2 + ["running"] * 6
    doc = chats.get(chat)
    assert doc["quotaUsed"] == 2 and len(doc["running"]) == 2


def test_the_same_job_counts_once(chats: ChatStore, chat: int) -> None:
    """Given a job that already holds its place (a redelivered update), when it reserves
    again, then it keeps the place and the quota is not counted twice."""
    job = job_id()
    assert reserve(chats, chat, job) == Reservation()
    assert reserve(chats, chat, job) == Reservation(new=False)
    assert chats.get(chat)["quotaUsed"] == 1


def test_an_ended_job_gives_its_place_back(chats: ChatStore, chat: int, services: Any) -> None:
    """Given the only place held by a job, when that job runs and then ends (canceled), then
    the next job waits while it runs, then gets the place and the map forgets the ended one."""
    first, second = job_id(), job_id()
    assert reserve(chats, chat, first, max_running=1).refused == ""
    store, now = services.store, services.clock.now()
    assert store.create(lifecycle.new_job(
        job_id=first, uid=chat_uid(chat), channel="telegram", now=now, policy=services.policy,
        request=parse_job_request({"kind": "image", "prompt": "a red sphere"})))
    store.transact(first, lambda job: (lifecycle.claim(
        job, worker_id="test-worker", now=now, policy=services.policy,
        claim_token=uuid.uuid4().hex).change, None))
    assert store.get(first).status is JobStatus.PROCESSING
    assert reserve(chats, chat, second, max_running=1).refused == "running"
    store.transact(first, lambda job: (lifecycle.cancel(job), None))
    assert store.get(first).status is JobStatus.CANCELED
    assert reserve(chats, chat, second, max_running=1).refused == ""
    assert set(chats.get(chat)["running"]) == {second}


def test_a_place_whose_job_never_came_is_given_back_later(chats: ChatStore, chat: int) -> None:
    """Given a place taken for a job that was never created, then it still counts for a
    while (the create may be in flight) and is given back after ORPHAN_PLACE_SECONDS."""
    orphan = job_id()
    now = time.time()
    assert reserve(chats, chat, orphan, max_running=1, now=now).refused == ""
    assert reserve(chats, chat, job_id(), max_running=1, now=now + 5).refused == "running"
    later = now + ORPHAN_PLACE_SECONDS + 1
    assert reserve(chats, chat, job_id(), max_running=1, now=later).refused == ""


def test_quota_and_refund(chats: ChatStore, chat: int) -> None:
    """Given a quota of 2, when a third job asks, then it is refused for "quota"; a refund
    (the job was not created) gives back the place and one of the quota."""
    first, second = job_id(), job_id()
    assert reserve(chats, chat, first, quota=2, max_running=5).refused == ""
    assert reserve(chats, chat, second, quota=2, max_running=5).refused == ""
    assert reserve(chats, chat, job_id(), quota=2, max_running=5).refused == "quota"
    chats.refund(chat, job_id=second, day=DAY)
    chats.refund(chat, job_id=second, day=DAY)  # twice: still one refund
    doc = chats.get(chat)
    assert doc["quotaUsed"] == 1 and set(doc["running"]) == {first}
    assert reserve(chats, chat, job_id(), quota=2, max_running=5).refused == ""


def test_a_new_day_resets_the_quota_but_not_the_places(chats: ChatStore, chat: int) -> None:
    """Given yesterday's quota used up and a job still running, when today starts, then the
    quota is fresh but the running job still holds its place."""
    running = job_id()
    assert reserve(chats, chat, running, quota=1, max_running=1).refused == ""
    tomorrow = chats.reserve(chat, job_id=job_id(), day="2026-11-24", quota=1, max_running=1,
                             now=time.time())
    assert tomorrow.refused == "running"
    assert chats.reserve(chat, job_id=job_id(), day="2026-11-24", quota=1, max_running=2,
                         now=time.time()).refused == ""


def test_a_migration_moves_places_quota_and_former_ids_once(chats: ChatStore, chat: int) -> None:
    """Given a group with a running place and quota used, when it becomes a supergroup, then
    the new chat holds the place, the quota and the old id; the old points on; a second
    migration call (the service message after the 400) changes nothing."""
    old, new = -chat, -int(f"100{chat}")
    held = job_id()
    reserve(chats, old, held)
    assert chats.migrate(old, new) is True
    moved = chats.get(new)
    assert set(moved["running"]) == {held} and moved["quotaUsed"] == 1
    assert moved["formerChatIds"] == [str(old)] and chats.get(old)["migratedTo"] == str(new)
    assert chats.uids(new) == [chat_uid(new), chat_uid(old)]
    assert chats.migrate(old, new) is False
    assert chats.get(new)["quotaUsed"] == 1


def test_a_deferred_delivery_is_claimed_by_one_sweeper(chats: ChatStore, chat: int) -> None:
    """Given a result deferred until t=100, then it is not due before, is due after, only
    one of two concurrent claims gets it (attempt 2), and once delivered it is forgotten."""
    job = job_id()
    chats.defer_delivery(chat, job, attempt=2, at=100.0)
    assert (str(chat), job) not in chats.due_deliveries(99.0)
    assert (str(chat), job) in chats.due_deliveries(101.0)
    claims = [chats.claim_delivery(chat, job, now=101.0, lease=60) for _ in range(2)]
    assert claims == [2, None]
    chats.delivered(chat, job)
    doc = chats.get(chat)
    assert doc["undelivered"] == {} and doc["hasUndelivered"] is False
    assert (str(chat), job) not in chats.due_deliveries(1e12)
