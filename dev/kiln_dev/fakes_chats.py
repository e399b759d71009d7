"""In-memory ``kiln.channels.telegram.chats.ChatStore`` (``telegramChats/{chatId}``
documents in a dict) for unit tests, with the Firestore adapter's semantics (a claim is
decided by the same ``chats.claim``); ``fail_next`` makes one call raise before it writes
(a store blip, or a process dying there), ``before_next`` runs something first (time
passing while a pass sends)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from kiln.channels.telegram import chats
from kiln.channels.telegram.chats import Claim, ClaimOutcome, Deferred
from kiln.core.errors import RetryableError


class InMemoryChatStore:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self._fail: dict[str, BaseException] = {}
        self._before: dict[str, Callable[[], None]] = {}
        self._lock = threading.RLock()

    def fail_next(self, call: str, error: BaseException | None = None) -> None:
        """Make the next ``call`` (a method name) raise ``error`` (default: the store is
        unavailable) without writing anything."""
        self._fail[call] = error or RetryableError("The chat store is unavailable.",
                                                   code="store_unavailable")

    def before_next(self, call: str, action: Callable[[], None]) -> None:
        """Run ``action`` when ``call`` is next made, before it reads or writes anything
        (e.g. ``clock.advance``: the send before it took that long)."""
        self._before[call] = action

    def _blip(self, call: str) -> None:
        action = self._before.pop(call, None)
        if action is not None:
            action()
        error = self._fail.pop(call, None)
        if error is not None:
            raise error

    def _doc(self, chat_id: int | str) -> dict[str, Any]:
        return self.docs.setdefault(str(chat_id), {})

    def get(self, chat_id: int | str) -> dict[str, Any]:
        with self._lock:
            self._blip("get")
            return copy.deepcopy(self.docs.get(str(chat_id), {}))

    def is_blocked(self, chat_id: int | str) -> bool:
        return bool(self.get(chat_id).get("blocked"))

    def mark_blocked(self, chat_id: int | str) -> None:
        with self._lock:
            self._blip("mark_blocked")
            self._doc(chat_id)["blocked"] = True

    def unblock(self, chat_id: int | str) -> None:
        with self._lock:
            self._blip("unblock")
            self._doc(chat_id)["blocked"] = False

    def note_cancel(self, chat_id: int | str, update_id: int, job_id: str) -> None:
        with self._lock:
            self._blip("note_cancel")
            doc = self._doc(chat_id)
            doc["cancels"] = chats.noted(doc.get("cancels") or {}, update_id, job_id)

    def migrate(self, old: int | str, new: int | str) -> bool:
        with self._lock:
            self._blip("migrate")
            was, now = self._doc(old), self._doc(new)
            if str(was.get("migratedTo")) == str(new):
                return False
            now["formerChatIds"] = sorted({*map(str, was.get("formerChatIds") or []), str(old),
                                           *map(str, now.get("formerChatIds") or [])})
            was["migratedTo"] = str(new)
            return True

    def uids(self, chat_id: int | str) -> list[str]:
        return chats.owners(chat_id, self.get(chat_id))

    # --- results waiting for Telegram ---------------------------------------------------

    def defer_delivery(self, chat_id: int | str, job_id: str, *, attempt: int, at: float) -> None:
        with self._lock:
            self._blip("defer_delivery")
            doc = self._doc(chat_id)
            doc.setdefault("undelivered", {})[job_id] = Deferred(attempt, at).entry()
            doc["nextDueAt"] = chats.next_due(doc["undelivered"])

    def due_deliveries(self, now: float, limit: int = 50) -> list[tuple[str, str]]:
        with self._lock:
            self._blip("due_deliveries")
            due = sorted((doc["nextDueAt"], chat_id) for chat_id, doc in self.docs.items()
                         if doc.get("nextDueAt") is not None and doc["nextDueAt"] <= now)
            waiting = [(chat_id, self.docs[chat_id]) for _, chat_id in due[:limit]]
            return [(chat_id, job_id) for chat_id, doc in waiting
                    for job_id, entry in (doc.get("undelivered") or {}).items()
                    if float((entry or {}).get("at") or 0) <= now]

    def claim_delivery(self, chat_id: int | str, job_id: str, *, now: float,
                       lease: float) -> Claim:
        with self._lock:
            self._blip("claim_delivery")
            doc = self.docs.get(str(chat_id), {})
            waiting = doc.get("undelivered") or {}
            claim = chats.claim(waiting, job_id, now=now, lease=lease)
            if claim.outcome is not ClaimOutcome.NOT_DUE:
                doc["nextDueAt"] = chats.next_due(waiting)
            return claim

    def delivered(self, chat_id: int | str, job_id: str) -> None:
        with self._lock:
            self._blip("delivered")
            doc = self.docs.get(str(chat_id), {})
            left = doc.get("undelivered") or {}
            if left.pop(job_id, None) is not None:
                doc["undelivered"], doc["nextDueAt"] = left, chats.next_due(left)
