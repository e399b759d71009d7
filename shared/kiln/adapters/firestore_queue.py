"""Admission's counters and the running places, in Firestore, with no hot document.

- ``quotaTickets/{key}~{n}``: a quota (a user's jobs today) is numbered tickets, one
  document each, created once: a take counts the key's tickets (an aggregation query, a
  read) and creates the next numbers with create-if-absent in one batch; a number taken
  meanwhile by a concurrent request fails the batch, and it tries the next ones. Exact
  under concurrency, and no document is written twice.
- ``slots/{pool}~{index}``: one document per place of a pool (a user's running limit, a
  provider account's capacity), present while held (``{jobId, pool}``); taken by a
  create-if-absent, given back by a delete with a precondition: no transaction.
  ``slotWindows/{pool}`` holds a narrowing (a provider's 429) as ``{capacity, until}``.
- The jobs not yet started are counted by an aggregation query over ``jobs`` (status
  ``pending``), cached for a second per process: nothing is written to count them.

Why no document is hot at 50 jobs/s: docs/architecture.md ("Fair queues").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.adapters.firestore import unavailable_is_retryable
from kiln.core.errors import RetryableError

TICKETS, SLOTS, WINDOWS, JOBS = "quotaTickets", "slots", "slotWindows", "jobs"
#: How long a quota ticket is kept (TTL policy quota_tickets_expire_at in infra/firestore.tf).
TICKET_LIFETIME = dt.timedelta(days=2)
#: Tries of a take whose numbers concurrent requests keep taking first.
TAKE_ATTEMPTS = 8
WAITING_CACHE_SECONDS = 1.0


def doc_id(key: str) -> str:
    """A document id for any key (uids may hold characters ids cannot)."""
    safe = "".join(c if c.isalnum() or c in "-_:" else "_" for c in key)[:80]
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class FirestoreCounters:
    """``kiln.ports.Counters`` on Firestore."""

    def __init__(self, client: firestore.Client, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self._clock = client, clock
        self._waiting: dict[str | None, tuple[float, int]] = {}
        self._next: dict[str, int] = {}  # key → the number this process expects to be free
        self._lock = threading.Lock()

    def _ticket(self, key: str, number: int) -> firestore.DocumentReference:
        return self.client.collection(TICKETS).document(f"{doc_id(key)}~{number}")

    def used(self, key: str) -> int:
        query = self.client.collection(TICKETS).where(
            filter=firestore.FieldFilter("key", "==", key))
        with unavailable_is_retryable("admission store"):
            result: Any = query.count().get()  # type: ignore[call-arg]
        return int(result[0][0].value)

    def held(self, key: str, holder: str) -> bool:
        query = self.client.collection(TICKETS).where(
            filter=firestore.FieldFilter("key", "==", key)).where(
            filter=firestore.FieldFilter("holder", "==", holder)).limit(1)
        with unavailable_is_retryable("admission store"):
            return any(True for _ in query.stream())

    def take(self, key: str, count: int, limit: int, holder: str = "") -> list[int] | None:
        with self._lock:  # a guess (no read): the number after this process's last take
            start = self._next.get(key) or 0
        start = start or self.used(key) + 1
        for _attempt in range(TAKE_ATTEMPTS):
            numbers = list(range(start, start + count))
            if numbers[-1] > limit:
                if self.used(key) + count > limit:  # the guess may be past given-back ones
                    return None
                start = self.used(key) + 1
                continue
            try:
                with unavailable_is_retryable("admission store"):
                    self._create(key, numbers, holder)
                with self._lock:
                    self._next[key] = numbers[-1] + 1
                    if len(self._next) > 10_000:
                        self._next.clear()
                return numbers
            except gexc.Conflict:
                pass  # AlreadyExists: another request took one of these numbers first
            except RetryableError as exc:
                if not isinstance(exc.__cause__, gexc.Aborted):
                    raise  # (Aborted: the emulator's lock on a number another one takes)
            start = max(start + 1, self.used(key) + 1)
        raise RetryableError("The quota is busy.", code="contention")

    def _create(self, key: str, numbers: list[int], holder: str) -> None:
        # A day's tickets matter for that day: Firestore's TTL deletes them two days on.
        fields = {"key": key, "holder": holder, "at": firestore.SERVER_TIMESTAMP,
                  "expireAt": dt.datetime.now(dt.UTC) + TICKET_LIFETIME}
        if len(numbers) == 1:  # one create-if-absent write
            self._ticket(key, numbers[0]).create({**fields, "n": numbers[0]})
            return
        batch = self.client.batch()
        for number in numbers:
            batch.create(self._ticket(key, number), {**fields, "n": number})
        batch.commit()

    def give_back(self, key: str, numbers: list[int]) -> None:
        batch = self.client.batch()
        for number in numbers:
            batch.delete(self._ticket(key, number))
        with unavailable_is_retryable("admission store"):
            batch.commit()

    def waiting(self, reason: str | None = None) -> int:
        now = self._clock()
        with self._lock:
            hit = self._waiting.get(reason)
            if hit is not None and now - hit[0] < WAITING_CACHE_SECONDS:
                return hit[1]
        query = self.client.collection(JOBS).where(
            filter=firestore.FieldFilter("status", "==", "pending"))
        if reason is not None:
            query = query.where(filter=firestore.FieldFilter("queueReason", "==", reason))
        with unavailable_is_retryable("admission store"):
            result: Any = query.count().get()  # type: ignore[call-arg]
        count = int(result[0][0].value)
        with self._lock:
            self._waiting[reason] = (now, count)
        return count


class FirestoreSlots:
    """``kiln.ports.Slots`` on Firestore: a place is held while its document exists.

    Taking one is a create-if-absent of one place document (no transaction: two requests
    contend only when they try the same place, and the create decides); a place whose
    holder is done is deleted with a precondition on its update time, then created again.
    Giving one back deletes it the same way. A narrowed window is checked by counting
    the held places first, so concurrent starts may pass it by a few; the capacity itself
    is exact.
    """

    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def _place(self, pool: str, index: int) -> firestore.DocumentReference:
        return self.client.collection(SLOTS).document(f"{doc_id(pool)}~{index}")

    def take(self, pool: str, capacity: int, job_id: str,
             done: Callable[[str], bool] | None = None, limit: int | None = None) -> bool:
        refs = [self._place(pool, i) for i in range(capacity)]
        with unavailable_is_retryable("admission store"):
            snaps = {snap.reference.id: snap for snap in self.client.get_all(refs)}
        held = {ref.id: (snaps[ref.id].to_dict() or {}).get("jobId")
                for ref in refs if snaps[ref.id].exists}
        if job_id in held.values():
            return True
        ended = {ref_id for ref_id, holder in held.items()
                 if done is not None and done(str(holder))}
        if limit is not None and len(held) - len(ended) >= limit:
            return False
        start = random.randrange(capacity)
        order = [refs[(start + i) % capacity] for i in range(capacity)]
        doc = {"jobId": job_id, "pool": pool, "at": firestore.SERVER_TIMESTAMP}
        for ref in [r for r in order if r.id not in held] + [r for r in order if r.id in ended]:
            try:
                with unavailable_is_retryable("admission store"):
                    if ref.id in ended:  # only if nobody changed it since we read it
                        ref.delete(option=self.client.write_option(
                            last_update_time=snaps[ref.id].update_time))
                    ref.create(doc)
                return True
            except RetryableError as exc:
                if not isinstance(exc.__cause__, gexc.Aborted):
                    raise
            except (gexc.Conflict, gexc.FailedPrecondition, gexc.NotFound):
                continue  # another request took this place first
        return False

    def release(self, pool: str, job_id: str) -> None:
        query = self.client.collection(SLOTS).where(
            filter=firestore.FieldFilter("jobId", "==", job_id))
        with unavailable_is_retryable("admission store"):
            for snap in query.stream():
                if (snap.to_dict() or {}).get("pool") != pool:
                    continue
                # Taken over meanwhile (its holder had ended): not ours to delete any more.
                with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound):
                    snap.reference.delete(option=self.client.write_option(
                        last_update_time=snap.update_time))

    def holders(self, pool: str) -> list[str]:
        query = self.client.collection(SLOTS).where(
            filter=firestore.FieldFilter("pool", "==", pool))
        with unavailable_is_retryable("admission store"):
            return [str(job) for snap in query.stream()
                    if (job := (snap.to_dict() or {}).get("jobId"))]

    def narrow(self, pool: str, capacity: int, until: dt.datetime) -> None:
        with unavailable_is_retryable("admission store"):
            self.client.collection(WINDOWS).document(doc_id(pool)).set(
                {"capacity": capacity, "until": until})

    def window(self, pool: str, capacity: int, now: dt.datetime) -> int:
        with unavailable_is_retryable("admission store"):
            doc = self.client.collection(WINDOWS).document(doc_id(pool)).get().to_dict() or {}
        until = doc.get("until")
        if until is not None and until > now:
            return max(1, min(capacity, int(doc.get("capacity") or capacity)))
        return capacity
