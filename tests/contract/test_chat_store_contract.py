"""The Telegram chat store's contract (``kiln.channels.telegram.chats.ChatStore``), on the
in-memory fake and on the Firestore emulator: a group's migration, deferred deliveries and
their claims. (A chat's quota and running limit are admission's: test_queue_ports.py.)"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from kiln.channels.telegram.chats import Claim, ClaimOutcome, chat_uid
from kiln_dev.fakes_chats import InMemoryChatStore

TAKEN, NOT_DUE, DROPPED = ClaimOutcome.TAKEN, ClaimOutcome.NOT_DUE, ClaimOutcome.DROPPED
#: The deferred entries' times count from here (epoch seconds, in 2096): the local stack's
#: own sweeper, every second on the same emulator by the real clock, never finds them due
#: and claims them between a test's steps.
T = 4e9


@pytest.fixture(params=["fake", "emulator"])
def chats(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return InMemoryChatStore()
    from kiln.adapters.firestore_chats import FirestoreChatStore

    return FirestoreChatStore(request.getfixturevalue("services").firestore)


@pytest.fixture
def chat() -> int:
    return random.randint(10**8, 10**9)


def job_id() -> str:
    return f"tg-{uuid.uuid4().hex[:16]}"


def test_a_migration_moves_the_former_ids_once(chats: Any, chat: int) -> None:
    """Given a group, when it becomes a supergroup, then the new chat holds the old id and
    the old points on; a second migration call (the service message after the 400)
    changes nothing."""
    old, new = -chat, -int(f"100{chat}")
    chats.unblock(old)
    assert chats.migrate(old, new) is True
    moved = chats.get(new)
    assert moved["formerChatIds"] == [str(old)] and chats.get(old)["migratedTo"] == str(new)
    assert chats.uids(new) == [chat_uid(new), chat_uid(old)]
    assert chats.migrate(old, new) is False
    assert chats.get(new)["formerChatIds"] == [str(old)]


def test_blocked_is_set_and_cleared(chats: Any, chat: int) -> None:
    """A chat is not blocked until Telegram said 403, and is again once it writes to us."""
    assert chats.is_blocked(chat) is False
    chats.mark_blocked(chat)
    assert chats.is_blocked(chat) is True
    chats.unblock(chat)
    assert chats.is_blocked(chat) is False


def test_chats_whose_results_wait_longer_never_hide_a_due_one(chats: Any) -> None:
    """Given more chats than a pass reads whose deferred results are not due yet (a long
    backoff), and one chat whose result is due, then a pass finds the due one first, and
    a chat's due time follows its earliest entry as entries are claimed and forgotten."""
    now = T - 10**6  # before every other test's entries: none of theirs is due here
    for _ in range(6):  # ids before the due chat's, in the order documents are listed
        chats.defer_delivery(random.randint(10**8, 2 * 10**8), job_id(), attempt=6,
                             at=now + 1800)
    due_chat, due_job, later = random.randint(9 * 10**8, 10**9 - 1), job_id(), job_id()
    chats.defer_delivery(due_chat, later, attempt=1, at=now + 3600)
    chats.defer_delivery(due_chat, due_job, attempt=1, at=now - 600)
    assert chats.due_deliveries(now, limit=3) == [(str(due_chat), due_job)]
    assert chats.claim_delivery(due_chat, due_job, now=now, lease=60).outcome is TAKEN
    chats.delivered(due_chat, due_job)
    assert chats.due_deliveries(now, limit=3) == []
    assert (str(due_chat), later) in chats.due_deliveries(now + 3600, limit=20)


def test_cancels_are_noted_with_their_updates_the_newest_kept(chats: Any, chat: int) -> None:
    """The job each ``/cancel`` update chose is kept by update id, beside the earlier
    ones, up to the newest ``NOTED_CANCELS``."""
    from kiln.channels.telegram.chats import NOTED_CANCELS

    chats.note_cancel(chat, 3, "job-a")
    chats.note_cancel(chat, 4, "job-b")
    assert chats.get(chat)["cancels"] == {"3": "job-a", "4": "job-b"}
    for update_id in range(5, 5 + NOTED_CANCELS):
        chats.note_cancel(chat, update_id, f"job-{update_id}")
    cancels = chats.get(chat)["cancels"]
    assert len(cancels) == NOTED_CANCELS and "4" not in cancels
    assert cancels[str(4 + NOTED_CANCELS)] == f"job-{4 + NOTED_CANCELS}"


def test_a_deferred_delivery_is_claimed_by_one_sweeper(chats: Any, chat: int) -> None:
    """Given a result deferred until T + 100, then it is not due before, is due after, only
    one of two concurrent claims gets it (attempt 2), and once delivered it is forgotten."""
    job = job_id()
    chats.defer_delivery(chat, job, attempt=2, at=T + 100.0)
    assert (str(chat), job) not in chats.due_deliveries(T + 99.0)
    assert (str(chat), job) in chats.due_deliveries(T + 101.0)
    claims = [chats.claim_delivery(chat, job, now=T + 101.0, lease=60) for _ in range(2)]
    assert claims == [Claim(TAKEN, 2), Claim(NOT_DUE, 2)]
    chats.delivered(chat, job)
    doc = chats.get(chat)
    assert doc["undelivered"] == {} and doc.get("nextDueAt") is None
    assert (str(chat), job) not in chats.due_deliveries(1e12)
    assert chats.claim_delivery(chat, job, now=1e12, lease=60) == Claim(NOT_DUE)


def test_a_claim_left_sending_past_its_lease_is_dropped(chats: Any, chat: int) -> None:
    """Given a claimed delivery whose pass never forgot it (it may have been sent), then
    after the lease it is due again, but its claim drops it instead of taking it; another
    job's entry in the chat is untouched."""
    job, other = job_id(), job_id()
    chats.defer_delivery(chat, job, attempt=1, at=T + 100.0)
    chats.defer_delivery(chat, other, attempt=3, at=T + 5000.0)
    assert chats.claim_delivery(chat, job, now=T + 101.0, lease=60) == Claim(TAKEN, 1)
    assert (str(chat), job) not in chats.due_deliveries(T + 160.0)
    assert (str(chat), job) in chats.due_deliveries(T + 162.0)
    assert chats.claim_delivery(chat, job, now=T + 162.0, lease=60) == Claim(DROPPED, 1)
    doc = chats.get(chat)
    assert list(doc["undelivered"]) == [other] and doc["nextDueAt"] == T + 5000.0
    assert chats.claim_delivery(chat, job, now=1e12, lease=60) == Claim(NOT_DUE)


def test_a_deferral_after_a_claim_waits_again(chats: Any, chat: int) -> None:
    """Given a claimed delivery whose send certainly failed, when it is deferred again,
    then it is ``waiting``: the claim after its new time takes it (not dropped)."""
    job = job_id()
    chats.defer_delivery(chat, job, attempt=1, at=T + 100.0)
    assert chats.claim_delivery(chat, job, now=T + 101.0, lease=60).outcome is TAKEN
    chats.defer_delivery(chat, job, attempt=2, at=T + 130.0)
    assert chats.get(chat)["undelivered"][job] == {"attempt": 2, "at": T + 130.0, "state": "waiting"}
    assert chats.claim_delivery(chat, job, now=T + 131.0, lease=60) == Claim(TAKEN, 2)


def test_every_kind_of_chat_write_keeps_the_chat_for_as_long_as_jobs(services: Any) -> None:
    """On Firestore, a blocked chat, a migrated group (both documents) and a deferred
    result each carry ``expireAt`` about ``RETENTION_DAYS`` ahead, for the TTL policy."""
    import datetime as dt

    from kiln.adapters.firestore_chats import FirestoreChatStore
    from kiln.core.lifecycle import RETENTION_DAYS

    chats = FirestoreChatStore(services.firestore)
    blocked, old, waiting = (random.randint(10**8, 10**9) for _ in range(3))
    new = -int(f"100{old}")
    chats.mark_blocked(blocked)
    chats.migrate(-old, new)
    chats.defer_delivery(waiting, job_id(), attempt=1, at=T)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=RETENTION_DAYS)
    for chat in (blocked, -old, new, waiting):
        expire = chats.ref(chat).get().to_dict()["expireAt"]
        assert abs((expire - ahead).total_seconds()) < 600, (chat, expire)


def test_a_result_deferred_before_next_due_at_was_kept_is_still_found(services: Any) -> None:
    """On Firestore, a chat document written by a version before ``nextDueAt`` (only
    ``hasUndelivered``) is still found by a pass, and its claim writes it the new way."""
    from kiln.adapters.firestore_chats import FirestoreChatStore

    chats = FirestoreChatStore(services.firestore)
    chat, job = random.randint(10**8, 10**9), job_id()
    now = T - 2 * 10**6  # before every other test's entries
    chats.ref(chat).set({"undelivered": {job: {"attempt": 1, "at": now - 60, "state": "waiting"}},
                         "hasUndelivered": True})
    assert (str(chat), job) in chats.due_deliveries(now)
    assert chats.claim_delivery(chat, job, now=now, lease=60).outcome is TAKEN
    written = chats.ref(chat).get().to_dict()
    assert "hasUndelivered" not in written and written["nextDueAt"] == now + 60
