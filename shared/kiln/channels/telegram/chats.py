"""Per-chat state: ``telegramChats/{chatId}`` (the :class:`ChatStore` port) and a chat's jobs.

The chat document (server-only; the rules deny clients) holds ``blocked`` (Telegram
answered 403: send nothing more until the chat writes to us again). A chat's daily quota
and running limit are its plan's (``KILN_TELEGRAM_PLAN``), taken by the same admission and
fair queue as every channel (``kiln.runtime.admission``, ``kiln.runtime.dispatch``).
A chat's jobs are the jobs whose ``uid`` is ``telegram:{chatId}`` — or the id of a group
it was before it became a supergroup (``formerChatIds``; the old document points on with
``migratedTo``).

``undelivered`` (job id → :class:`Deferred`, with ``nextDueAt`` for the query) holds
the results that could not be sent because Telegram was down. The sweeper's pass
(``TelegramChannel.redeliver``) claims each due one in a transaction (:func:`claim`):
a ``waiting`` entry becomes ``sending`` for the pass that sends it; a later claim that
finds it still ``sending`` (the pass died or could not forget it) drops it, because it
may have been sent (docs/telegram.md, "Telegram down: deliver later").

The Firestore adapter is ``kiln.adapters.firestore_chats``, the in-memory fake
``kiln_dev.fakes_chats``; ``tests/contract/test_chat_store_contract.py`` runs on both.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kiln.core.job import Job, JobStatus

if TYPE_CHECKING:
    from kiln.ports import JobStore

CHATS = "telegramChats"


def chat_uid(chat_id: int | str) -> str:
    """The job owner for a chat (contract): ``telegram:<chatId>``."""
    return f"telegram:{chat_id}"


def owners(chat_id: int | str, state: Mapping[str, Any]) -> list[str]:
    """The job owners of a chat whose document reads ``state``: itself and the groups it
    was before (``formerChatIds``)."""
    return [chat_uid(chat_id), *(chat_uid(c) for c in state.get("formerChatIds") or [])]


def running_jobs(store: JobStore, uid: str, limit: int = 20) -> list[Job]:
    """The owner's pending and processing jobs, newest first."""
    jobs = [*store.find(status=JobStatus.PENDING.value, uid=uid, limit=limit),
            *store.find(status=JobStatus.PROCESSING.value, uid=uid, limit=limit)]
    return newest_first(jobs)


def newest_first(jobs: list[Job]) -> list[Job]:
    """``jobs`` by creation time, newest first (a job not yet timestamped sorts last)."""
    floor = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(jobs, key=lambda job: job.created_at or floor, reverse=True)


# --- results waiting for Telegram ---------------------------------------------------------


class DeferredState(enum.StrEnum):
    WAITING = "waiting"  # not sent: the first pass after ``at`` sends it
    SENDING = "sending"  # claimed by a pass that sends it: may have been sent


@dataclass(frozen=True)
class Deferred:
    """One entry of ``undelivered``: the attempt that failed, when it is due (epoch
    seconds), and whether a pass is sending it. An entry without ``state`` (written before
    ``sending`` existed) is ``waiting``."""

    attempt: int
    at: float
    state: DeferredState = DeferredState.WAITING

    @classmethod
    def of(cls, entry: Mapping[str, Any] | None) -> Deferred | None:
        if not entry:
            return None
        state = entry.get("state")
        return cls(int(entry.get("attempt") or 1), float(entry.get("at") or 0),
                   DeferredState.SENDING if state == DeferredState.SENDING.value
                   else DeferredState.WAITING)

    def entry(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "at": self.at, "state": self.state.value}


#: The chat's latest ``/cancel`` updates whose chosen job is kept (Telegram redelivers an
#: update within minutes; a chat sends few cancels in that time).
NOTED_CANCELS = 20


def noted(cancels: Mapping[str, Any], update_id: int, job_id: str) -> dict[str, Any]:
    """``cancels`` with ``update_id`` → ``job_id`` added, the newest
    :data:`NOTED_CANCELS` kept."""
    kept = {**cancels, str(update_id): job_id}
    newest = sorted(kept, key=lambda key: int(key) if key.lstrip("-").isdigit() else 0)
    return {key: kept[key] for key in newest[-NOTED_CANCELS:]}


def next_due(undelivered: Mapping[str, Any]) -> float | None:
    """When the chat's first entry is due (``nextDueAt``, what passes look for); None when
    it has none."""
    times = [entry.at for entry in map(Deferred.of, undelivered.values()) if entry is not None]
    return min(times) if times else None


class ClaimOutcome(enum.StrEnum):
    TAKEN = "taken"  # it was waiting and due: now ``sending``, this pass sends it
    NOT_DUE = "not_due"  # not due yet, being sent by another pass, or gone
    DROPPED = "dropped"  # left ``sending`` by a pass that may have sent it: forgotten


@dataclass(frozen=True)
class Claim:
    """What :meth:`ChatStore.claim_delivery` did; ``attempt`` is the entry's (0: none)."""

    outcome: ClaimOutcome
    attempt: int = 0


def claim(undelivered: dict[str, Any], job_id: str, *, now: float, lease: float) -> Claim:
    """Decide a claim of the job's entry in a chat's ``undelivered`` map and apply it to
    the map (the adapters write the map back unless ``NOT_DUE``): a due waiting entry is
    taken (``sending``, leased), a ``sending`` one past its lease is forgotten."""
    found = Deferred.of(undelivered.get(job_id))
    if found is None or found.at > now:
        return Claim(ClaimOutcome.NOT_DUE, found.attempt if found else 0)
    if found.state is DeferredState.SENDING:
        del undelivered[job_id]
        return Claim(ClaimOutcome.DROPPED, found.attempt)
    undelivered[job_id] = Deferred(found.attempt, now + lease, DeferredState.SENDING).entry()
    return Claim(ClaimOutcome.TAKEN, found.attempt)


class ChatStore(Protocol):
    """``telegramChats/{chatId}`` documents. Transient store failures raise
    ``RetryableError`` (``store_unavailable``, ``contention``)."""

    def get(self, chat_id: int | str) -> dict[str, Any]:
        """The chat's document ({} when it has none)."""
        ...

    def is_blocked(self, chat_id: int | str) -> bool: ...

    def mark_blocked(self, chat_id: int | str) -> None:
        """Telegram said 403 for this chat: record it so nothing more is sent."""
        ...

    def unblock(self, chat_id: int | str) -> None:
        """The chat wrote to us, so it has the bot again: clear ``blocked``."""
        ...

    def note_cancel(self, chat_id: int | str, update_id: int, job_id: str) -> None:
        """``/cancel`` of update ``update_id`` chose ``job_id`` (``cancels``: update id →
        job id, the newest :data:`NOTED_CANCELS` kept): a delivery of the same update
        again, even after later cancels, cancels that job, not another."""
        ...

    def migrate(self, old: int | str, new: int | str) -> bool:
        """Group ``old`` is now supergroup ``new``: move the former ids over; False when
        that was done already."""
        ...

    def uids(self, chat_id: int | str) -> list[str]:
        """The job owners of this chat: itself and the groups it was before."""
        ...

    def defer_delivery(self, chat_id: int | str, job_id: str, *, attempt: int, at: float) -> None:
        """Record (or replace) the job's entry as ``waiting`` until ``at``."""
        ...

    def due_deliveries(self, now: float, limit: int = 50) -> list[tuple[str, str]]:
        """(chat id, job id) of entries due at ``now`` (waiting, or sending past the lease),
        of up to ``limit`` chats, those due first first: chats whose entries wait longer
        never hide a due one."""
        ...

    def claim_delivery(self, chat_id: int | str, job_id: str, *, now: float,
                       lease: float) -> Claim:
        """Apply :func:`claim` to the entry in one transaction."""
        ...

    def delivered(self, chat_id: int | str, job_id: str) -> None:
        """Forget the job's entry (sent, or given up)."""
        ...
