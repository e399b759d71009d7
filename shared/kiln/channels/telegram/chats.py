"""Per-chat state: ``telegramChats/{chatId}`` and the chat's running jobs.

The chat document (server-only; the rules deny clients) holds ``blocked`` (Telegram
answered 403: send nothing more until the chat writes to us again). A chat's daily quota
and running limit are its plan's (``KILN_TELEGRAM_PLAN``), taken by the same admission and
fair queue as every channel (``kiln.runtime.admission``, ``kiln.runtime.dispatch``).
A chat's jobs are the jobs whose ``uid`` is ``telegram:{chatId}`` — or the id of a group
it was before it became a supergroup (``formerChatIds``; the old document points on with
``migratedTo``).

``undelivered`` (job id → ``{attempt, at}``, with ``hasUndelivered`` for the query) holds
the results that could not be sent because Telegram was down: the sweeper's pass
(``TelegramChannel.redeliver``) claims each due one in a transaction and tries again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from google.cloud import firestore
from google.cloud.firestore import SERVER_TIMESTAMP

from kiln.adapters.firestore import in_transaction, unavailable_is_retryable
from kiln.core.job import Job, JobStatus

if TYPE_CHECKING:
    from kiln.ports import JobStore

CHATS = "telegramChats"
T = TypeVar("T")


def chat_uid(chat_id: int | str) -> str:
    """The job owner for a chat (contract): ``telegram:<chatId>``."""
    return f"telegram:{chat_id}"


def running_jobs(store: JobStore, uid: str, limit: int = 20) -> list[Job]:
    """The owner's pending and processing jobs, newest first."""
    jobs = [*store.find(status=JobStatus.PENDING.value, uid=uid, limit=limit),
            *store.find(status=JobStatus.PROCESSING.value, uid=uid, limit=limit)]
    return newest_first(jobs)


def newest_first(jobs: list[Job]) -> list[Job]:
    """``jobs`` by creation time, newest first (a job not yet timestamped sorts last)."""
    floor = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(jobs, key=lambda job: job.created_at or floor, reverse=True)


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

    def unblock(self, chat_id: int | str) -> None:
        """The chat wrote to us, so it has the bot again: clear ``blocked``."""
        self._guard(lambda: self.ref(chat_id).set(
            {"blocked": False, "updatedAt": SERVER_TIMESTAMP}, merge=True))

    def migrate(self, old: int | str, new: int | str) -> bool:
        """Group ``old`` is now supergroup ``new``: move the former ids over; False when
        that was done already."""
        old_ref, new_ref = self.ref(old), self.ref(new)

        def run(tx: firestore.Transaction) -> bool:
            was = old_ref.get(transaction=tx).to_dict() or {}
            now = new_ref.get(transaction=tx).to_dict() or {}
            if str(was.get("migratedTo")) == str(new):
                return False
            former = sorted({*map(str, was.get("formerChatIds") or []), str(old),
                             *map(str, now.get("formerChatIds") or [])})
            tx.set(new_ref, {**now, "formerChatIds": former, "updatedAt": SERVER_TIMESTAMP})
            tx.set(old_ref, {**was, "migratedTo": str(new), "updatedAt": SERVER_TIMESTAMP})
            return True

        return self._transact(run)

    def uids(self, chat_id: int | str) -> list[str]:
        """The job owners of this chat: itself and the groups it was before."""
        return [chat_uid(chat_id), *(chat_uid(c) for c in self.get(chat_id).get("formerChatIds") or [])]

    # --- results waiting for Telegram ---------------------------------------------------

    def defer_delivery(self, chat_id: int | str, job_id: str, *, attempt: int, at: float) -> None:
        self._guard(lambda: self.ref(chat_id).set(
            {"undelivered": {job_id: {"attempt": attempt, "at": at}}, "hasUndelivered": True,
             "updatedAt": SERVER_TIMESTAMP}, merge=True))

    def due_deliveries(self, now: float, limit: int = 50) -> list[tuple[str, str]]:
        """(chat id, job id) of deferred deliveries that are due."""
        query = self.client.collection(CHATS).where(
            filter=firestore.FieldFilter("hasUndelivered", "==", True)).limit(limit)
        docs = self._guard(lambda: list(query.stream()))
        return [(doc.id, job_id) for doc in docs
                for job_id, entry in ((doc.to_dict() or {}).get("undelivered") or {}).items()
                if float((entry or {}).get("at") or 0) <= now]

    def claim_delivery(self, chat_id: int | str, job_id: str, *, now: float,
                       lease: float) -> int | None:
        """Take a due deferred delivery for ``lease`` seconds: its attempt number, or None
        when it is not due (another sweeper has it, or it was done)."""
        ref = self.ref(chat_id)

        def run(tx: firestore.Transaction) -> int | None:
            waiting = dict((ref.get(transaction=tx).to_dict() or {}).get("undelivered") or {})
            entry = waiting.get(job_id)
            if not entry or float(entry.get("at") or 0) > now:
                return None
            waiting[job_id] = {**entry, "at": now + lease}
            tx.update(ref, {"undelivered": waiting})
            return int(entry.get("attempt") or 1)

        return self._transact(run)

    def delivered(self, chat_id: int | str, job_id: str) -> None:
        """Forget a deferred delivery (sent, or given up)."""
        ref = self.ref(chat_id)

        def run(tx: firestore.Transaction) -> None:
            doc = ref.get(transaction=tx).to_dict() or {}
            left = dict(doc.get("undelivered") or {})
            if left.pop(job_id, None) is not None:
                tx.update(ref, {"undelivered": left, "hasUndelivered": bool(left)})

        self._transact(run)

    def _transact(self, run: Callable[[firestore.Transaction], T]) -> T:
        return in_transaction(self.client, run, store="chat store", busy="The chat is busy.")

    @staticmethod
    def _guard(action: Callable[[], Any]) -> Any:
        with unavailable_is_retryable("chat store"):
            return action()
