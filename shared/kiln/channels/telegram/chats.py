"""Per-chat state: ``telegramChats/{chatId}`` and the chat's running jobs.

The chat document (server-only; the rules deny clients) holds ``blocked`` (Telegram
answered 403: send nothing more until the chat writes to us again), the daily quota
counter ``quotaDay`` / ``quotaUsed`` and ``running`` (job id → when its place was taken),
the chat's places for running jobs. Quota and place are taken together in one transaction
before a job is created, so concurrent updates of one chat can never exceed either limit;
places of jobs that have ended are given back by that same transaction, on the next job.
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from google.cloud import firestore
from google.cloud.firestore import SERVER_TIMESTAMP

from kiln.adapters.firestore import JOBS, in_transaction, unavailable_is_retryable
from kiln.core.job import TERMINAL, Job, JobStatus

if TYPE_CHECKING:
    from kiln.ports import JobStore

CHATS = "telegramChats"
T = TypeVar("T")
#: A place whose job was never created (the webhook died and Telegram gave up on the update)
#: is given back after this long.
ORPHAN_PLACE_SECONDS = 120.0


@dataclass(frozen=True)
class Reservation:
    """What ``ChatStore.reserve`` decided: a place (``refused`` empty) or why not."""

    refused: str = ""  # "" | "running" | "quota"
    #: False when the job already held its place (another delivery of the same update).
    new: bool = True


def chat_uid(chat_id: int | str) -> str:
    """The job owner for a chat (contract): ``telegram:<chatId>``."""
    return f"telegram:{chat_id}"


def today(now: dt.datetime) -> str:
    """The quota day (UTC)."""
    return now.astimezone(dt.UTC).date().isoformat()


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

    def reserve(self, chat_id: int | str, *, job_id: str, day: str, quota: int,
                max_running: int, now: float) -> Reservation:
        """Take a running place and one of today's quota for ``job_id``, or refuse (nothing
        taken). Ended jobs' places are given back first; a job that already holds a place
        keeps it without counting twice. A chat that writes to us has unblocked the bot, so
        ``blocked`` is cleared too.
        """
        ref = self.ref(chat_id)
        jobs = self.client.collection(JOBS)

        def run(tx: firestore.Transaction) -> Reservation:
            doc = ref.get(transaction=tx).to_dict() or {}
            places = {str(k): float(v) for k, v in (doc.get("running") or {}).items()}
            if job_id in places:
                return Reservation(new=False)
            if places:
                found = {snap.id: snap.to_dict() or {} for snap in
                         tx.get_all([jobs.document(j) for j in places]) if snap.exists}
                for held, since in list(places.items()):
                    status = found.get(held, {}).get("status")
                    if status in TERMINAL or (held not in found and now - since > ORPHAN_PLACE_SECONDS):
                        del places[held]
            used = int(doc.get("quotaUsed") or 0) if doc.get("quotaDay") == day else 0
            if len(places) >= max_running:
                return Reservation(refused="running")
            if used >= quota:
                return Reservation(refused="quota")
            places[job_id] = now
            # A whole-document set (no merge), so the places given back are gone from the map.
            tx.set(ref, {**doc, "quotaDay": day, "quotaUsed": used + 1, "running": places,
                         "blocked": False, "updatedAt": SERVER_TIMESTAMP})
            return Reservation()

        return self._transact(run)

    def migrate(self, old: int | str, new: int | str) -> bool:
        """Group ``old`` is now supergroup ``new``: move places, quota and former ids over;
        False when that was done already."""
        old_ref, new_ref = self.ref(old), self.ref(new)

        def run(tx: firestore.Transaction) -> bool:
            was = old_ref.get(transaction=tx).to_dict() or {}
            now = new_ref.get(transaction=tx).to_dict() or {}
            if str(was.get("migratedTo")) == str(new):
                return False
            running = {**(was.get("running") or {}), **(now.get("running") or {})}
            former = sorted({*map(str, was.get("formerChatIds") or []), str(old),
                             *map(str, now.get("formerChatIds") or [])})
            moved = {"running": running, "formerChatIds": former, "updatedAt": SERVER_TIMESTAMP}
            if was.get("quotaDay") and was.get("quotaDay") == now.get("quotaDay", was["quotaDay"]):
                moved.update(quotaDay=was["quotaDay"],
                             quotaUsed=int(was.get("quotaUsed") or 0) + int(now.get("quotaUsed") or 0))
            tx.set(new_ref, {**now, **moved})
            tx.set(old_ref, {**was, "migratedTo": str(new), "running": {},
                             "updatedAt": SERVER_TIMESTAMP})
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

    def refund(self, chat_id: int | str, *, job_id: str, day: str) -> None:
        """Give back the place and the quota of a reservation whose job was not created."""
        ref = self.ref(chat_id)

        def run(tx: firestore.Transaction) -> None:
            doc = ref.get(transaction=tx).to_dict() or {}
            places = dict(doc.get("running") or {})
            if places.pop(job_id, None) is None:
                return
            used = int(doc.get("quotaUsed") or 0)
            if doc.get("quotaDay") == day and used > 0:
                used -= 1
            tx.set(ref, {**doc, "quotaUsed": used, "running": places, "updatedAt": SERVER_TIMESTAMP})

        self._transact(run)

    def _transact(self, run: Callable[[firestore.Transaction], T]) -> T:
        return in_transaction(self.client, run, store="chat store", busy="The chat is busy.")

    @staticmethod
    def _guard(action: Callable[[], Any]) -> Any:
        with unavailable_is_retryable("chat store"):
            return action()
