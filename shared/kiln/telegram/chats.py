"""Per-chat state: ``telegramChats/{chatId}`` and the chat's running jobs.

The chat document (server-only; the rules deny clients) holds ``blocked`` (Telegram
answered 403: send nothing more until the chat writes to us again) and the daily quota
counter ``quotaDay`` / ``quotaUsed``, taken in a transaction when a job is accepted.
A chat's jobs are the jobs whose ``uid`` is ``telegram:{chatId}``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from google.cloud import firestore
from google.cloud.firestore import SERVER_TIMESTAMP

from kiln.model import JobStatus
from kiln.store import JobStore, unavailable_is_retryable

CHATS = "telegramChats"


def chat_uid(chat_id: int | str) -> str:
    """The job owner for a chat (contract): ``telegram:<chatId>``."""
    return f"telegram:{chat_id}"


def today(now: dt.datetime) -> str:
    """The quota day (UTC)."""
    return now.astimezone(dt.UTC).date().isoformat()


def running_jobs(store: JobStore, uid: str, limit: int = 20) -> list[tuple[str, dict[str, Any]]]:
    """The owner's pending and processing jobs, newest first."""
    jobs = [*store.find(status=JobStatus.PENDING.value, uid=uid, limit=limit),
            *store.find(status=JobStatus.PROCESSING.value, uid=uid, limit=limit)]
    return newest_first(jobs)


def newest_first(jobs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    floor = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(jobs, key=lambda item: item[1].get("createdAt") or floor, reverse=True)


class ChatStore:
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
        """Telegram said 403 for this chat: record it so nothing more is sent."""
        self._guard(lambda: self.ref(chat_id).set(
            {"blocked": True, "blockedAt": SERVER_TIMESTAMP, "updatedAt": SERVER_TIMESTAMP},
            merge=True))

    def reserve(self, chat_id: int | str, *, day: str, quota: int) -> bool:
        """Count one job against today's quota; False (nothing written) when it is used up.

        A chat that writes to us has unblocked the bot, so ``blocked`` is cleared too.
        """
        ref = self.ref(chat_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> bool:
            doc = ref.get(transaction=tx).to_dict() or {}
            used = int(doc.get("quotaUsed") or 0) if doc.get("quotaDay") == day else 0
            if used >= quota:
                return False
            tx.set(ref, {"quotaDay": day, "quotaUsed": used + 1, "blocked": False,
                         "updatedAt": SERVER_TIMESTAMP}, merge=True)
            return True

        return self._guard(lambda: run(self.client.transaction()))

    def refund(self, chat_id: int | str, *, day: str) -> None:
        """Give back a reservation whose job was not created after all."""
        ref = self.ref(chat_id)

        @firestore.transactional
        def run(tx: firestore.Transaction) -> None:
            doc = ref.get(transaction=tx).to_dict() or {}
            if doc.get("quotaDay") == day and int(doc.get("quotaUsed") or 0) > 0:
                tx.update(ref, {"quotaUsed": int(doc["quotaUsed"]) - 1})

        self._guard(lambda: run(self.client.transaction()))

    @staticmethod
    def _guard(action: Callable[[], Any]) -> Any:
        with unavailable_is_retryable("chat store"):
            return action()
