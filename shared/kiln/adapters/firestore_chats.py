"""Firestore adapter of ``kiln.channels.telegram.chats.ChatStore``: ``telegramChats/{chatId}``.

Server-only documents (the security rules deny every client), deleted by a TTL policy on
``expireAt`` once unwritten for as long as jobs are kept. A deferred delivery's claim
and its forgetting each run in one transaction (read → :func:`chats.claim` → write); the
send happens outside it. SDK errors become Kiln's retryable errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from google.cloud import firestore
from google.cloud.firestore import SERVER_TIMESTAMP

from kiln.adapters.firestore import in_transaction, unavailable_is_retryable
from kiln.channels.telegram import chats
from kiln.channels.telegram.chats import CHATS, Claim, ClaimOutcome, Deferred
from kiln.core.lifecycle import expire_at

STORE = "chat store"
T = TypeVar("T")


def _due(undelivered: dict[str, Any]) -> dict[str, Any]:
    """The field passes query, when the chat's first entry is due; and ``hasUndelivered``
    (what they queried before ``nextDueAt``) deleted, so the query for chats written
    before it finds fewer each pass, and none once they are all written again."""
    return {"hasUndelivered": firestore.DELETE_FIELD, "nextDueAt": chats.next_due(undelivered)}


def kept() -> dict[str, dt.datetime]:
    """``expireAt`` for a write: a chat's state is deleted (a TTL policy, infra) once
    nothing wrote it for as long as its jobs are kept; every write keeps it longer."""
    return {"expireAt": expire_at(dt.datetime.now(dt.UTC))}


class FirestoreChatStore:
    """``telegramChats/{chatId}`` documents."""

    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def ref(self, chat_id: int | str) -> firestore.DocumentReference:
        return self.client.collection(CHATS).document(str(chat_id))

    def get(self, chat_id: int | str) -> dict[str, Any]:
        return self._guard(lambda: self.ref(chat_id).get().to_dict() or {})

    def is_blocked(self, chat_id: int | str) -> bool:
        return bool(self.get(chat_id).get("blocked"))

    def mark_blocked(self, chat_id: int | str) -> None:
        self._guard(lambda: self.ref(chat_id).set(
            {"blocked": True, "blockedAt": SERVER_TIMESTAMP, "updatedAt": SERVER_TIMESTAMP,
             **kept()}, merge=True))

    def unblock(self, chat_id: int | str) -> None:
        self._guard(lambda: self.ref(chat_id).set(
            {"blocked": False, "updatedAt": SERVER_TIMESTAMP, **kept()}, merge=True))

    def note_cancel(self, chat_id: int | str, update_id: int, job_id: str) -> None:
        ref = self.ref(chat_id)

        def run(tx: firestore.Transaction) -> None:
            cancels = (ref.get(transaction=tx).to_dict() or {}).get("cancels") or {}
            # (merged by field: the map is replaced whole, so the oldest note goes)
            tx.set(ref, {"cancels": chats.noted(cancels, update_id, job_id),
                         "updatedAt": SERVER_TIMESTAMP, **kept()},
                   merge=["cancels", "updatedAt", "expireAt"])

        self._transact(run)

    def migrate(self, old: int | str, new: int | str) -> bool:
        old_ref, new_ref = self.ref(old), self.ref(new)

        def run(tx: firestore.Transaction) -> bool:
            was = old_ref.get(transaction=tx).to_dict() or {}
            now = new_ref.get(transaction=tx).to_dict() or {}
            if str(was.get("migratedTo")) == str(new):
                return False
            former = sorted({*map(str, was.get("formerChatIds") or []), str(old),
                             *map(str, now.get("formerChatIds") or [])})
            tx.set(new_ref, {**now, "formerChatIds": former, "updatedAt": SERVER_TIMESTAMP,
                             **kept()})
            tx.set(old_ref, {**was, "migratedTo": str(new), "updatedAt": SERVER_TIMESTAMP,
                             **kept()})
            return True

        return self._transact(run)

    def uids(self, chat_id: int | str) -> list[str]:
        return chats.owners(chat_id, self.get(chat_id))

    # --- results waiting for Telegram ---------------------------------------------------

    def defer_delivery(self, chat_id: int | str, job_id: str, *, attempt: int, at: float) -> None:
        ref = self.ref(chat_id)

        def run(tx: firestore.Transaction) -> None:
            waiting = dict((ref.get(transaction=tx).to_dict() or {}).get("undelivered") or {})
            waiting[job_id] = Deferred(attempt, at).entry()
            tx.set(ref, {"undelivered": waiting, **_due(waiting), "updatedAt": SERVER_TIMESTAMP,
                         **kept()}, merge=True)

        self._transact(run)

    def due_deliveries(self, now: float, limit: int = 50) -> list[tuple[str, str]]:
        due = self.client.collection(CHATS).where(
            filter=firestore.FieldFilter("nextDueAt", "<=", now)).order_by("nextDueAt").limit(limit)
        older = self.client.collection(CHATS).where(  # deferred before nextDueAt was kept
            filter=firestore.FieldFilter("hasUndelivered", "==", True)).limit(limit)
        docs = self._guard(lambda: list({doc.id: doc for doc in [*due.stream(), *older.stream()]
                                         }.values()))
        return [(doc.id, job_id) for doc in docs
                for job_id, entry in ((doc.to_dict() or {}).get("undelivered") or {}).items()
                if float((entry or {}).get("at") or 0) <= now]

    def claim_delivery(self, chat_id: int | str, job_id: str, *, now: float,
                       lease: float) -> Claim:
        ref = self.ref(chat_id)

        def run(tx: firestore.Transaction) -> Claim:
            waiting = dict((ref.get(transaction=tx).to_dict() or {}).get("undelivered") or {})
            claim = chats.claim(waiting, job_id, now=now, lease=lease)
            if claim.outcome is not ClaimOutcome.NOT_DUE:
                tx.update(ref, {"undelivered": waiting, **_due(waiting), **kept()})
            return claim

        return self._transact(run)

    def delivered(self, chat_id: int | str, job_id: str) -> None:
        ref = self.ref(chat_id)

        def run(tx: firestore.Transaction) -> None:
            doc = ref.get(transaction=tx).to_dict() or {}
            left = dict(doc.get("undelivered") or {})
            if left.pop(job_id, None) is not None:
                tx.update(ref, {"undelivered": left, **_due(left), **kept()})

        self._transact(run)

    def _transact(self, run: Callable[[firestore.Transaction], T]) -> T:
        return in_transaction(self.client, run, store=STORE, busy="The chat is busy.")

    @staticmethod
    def _guard(action: Callable[[], Any]) -> Any:
        with unavailable_is_retryable(STORE):
            return action()
