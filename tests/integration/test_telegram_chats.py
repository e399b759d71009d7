"""A chat's state on the Firestore emulator: a group's migration, deferred deliveries.
(Its quota and running limit are admission's: tests/contract/test_queue_ports.py.)"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from kiln.channels.telegram.chats import ChatStore, chat_uid

DAY = "2026-11-23"


@pytest.fixture
def chats(services: Any) -> ChatStore:
    return ChatStore(services.firestore)


@pytest.fixture
def chat() -> int:
    return random.randint(10**8, 10**9)


def job_id() -> str:
    return f"tg-{uuid.uuid4().hex[:16]}"


def test_a_migration_moves_the_former_ids_once(chats: ChatStore, chat: int) -> None:
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
