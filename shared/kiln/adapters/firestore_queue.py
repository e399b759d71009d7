"""Admission's counters and the running places, in Firestore, with no hot document.

- ``quotaTickets/{key}~{n}``: a quota (a user's jobs today) is numbered tickets, one
  document each, created once: a take counts the key's tickets (an aggregation query, a
  read) and creates the next numbers with create-if-absent in one batch; a number taken
  meanwhile by a concurrent request fails the batch, and it tries the next ones. Exact
  under concurrency, and no document is written twice.
- ``slots/{pool}~{index}``: one document per place of a pool (a user's running limit, a
  provider account's capacity), ``{jobId}`` when held; a take is a transaction over the
  pool's places, a release a transaction over one. ``slots/{pool}`` holds a narrowing
  (a provider's 429) as ``{capacity, until}``.
- The jobs not yet started are counted by an aggregation query over ``jobs`` (status
  ``pending``), cached for a second per process: nothing is written to count them.

Why no document is hot at 50 jobs/s: docs/architecture.md ("Fair queues").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.adapters.firestore import in_transaction, unavailable_is_retryable
from kiln.core.errors import RetryableError

TICKETS, SLOTS, JOBS = "quotaTickets", "slots", "jobs"
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
        self._waiting: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def _ticket(self, key: str, number: int) -> firestore.DocumentReference:
        return self.client.collection(TICKETS).document(f"{doc_id(key)}~{number}")

    def used(self, key: str) -> int:
        query = self.client.collection(TICKETS).where(
            filter=firestore.FieldFilter("key", "==", key))
        with unavailable_is_retryable("admission store"):
            result: Any = query.count().get()  # type: ignore[call-arg]
        return int(result[0][0].value)

    def take(self, key: str, count: int, limit: int) -> list[int] | None:
        start = self.used(key) + 1
        for _attempt in range(TAKE_ATTEMPTS):
            numbers = list(range(start, start + count))
            if numbers[-1] > limit:
                return None
            batch = self.client.batch()
            for number in numbers:
                batch.create(self._ticket(key, number), {"key": key, "n": number,
                                                         "at": firestore.SERVER_TIMESTAMP})
            try:
                with unavailable_is_retryable("admission store"):
                    batch.commit()
                return numbers
            except gexc.Conflict:  # AlreadyExists: a concurrent request took one of them
                start = max(start + 1, self.used(key) + 1)
        raise RetryableError("The quota is busy.", code="contention")

    def give_back(self, key: str, numbers: list[int]) -> None:
        batch = self.client.batch()
        for number in numbers:
            batch.delete(self._ticket(key, number))
        with unavailable_is_retryable("admission store"):
            batch.commit()

    def waiting(self) -> int:
        now = self._clock()
        with self._lock:
            if self._waiting is not None and now - self._waiting[0] < WAITING_CACHE_SECONDS:
                return self._waiting[1]
        query = self.client.collection(JOBS).where(
            filter=firestore.FieldFilter("status", "==", "pending"))
        with unavailable_is_retryable("admission store"):
            result: Any = query.count().get()  # type: ignore[call-arg]
        count = int(result[0][0].value)
        with self._lock:
            self._waiting = (now, count)
        return count


class FirestoreSlots:
    """``kiln.ports.Slots`` on Firestore."""

    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def _place(self, pool: str, index: int) -> firestore.DocumentReference:
        return self.client.collection(SLOTS).document(f"{doc_id(pool)}~{index}")

    def take(self, pool: str, capacity: int, job_id: str,
             done: Callable[[str], bool] | None = None, limit: int | None = None) -> bool:
        refs = [self._place(pool, i) for i in range(capacity)]

        def body(tx: firestore.Transaction) -> bool:
            held = {snap.reference.id: (snap.to_dict() or {}).get("jobId")
                    for snap in tx.get_all(refs)}
            if job_id in held.values():
                return True
            if done is not None:  # a holder that ended leaves its place free
                held = {ref: job for ref, job in held.items() if job and not done(str(job))}
            free = [ref for ref in refs if not held.get(ref.id)]
            busy = sum(1 for job in held.values() if job)
            if not free or (limit is not None and busy >= limit):
                return False
            tx.set(random.choice(free), {"jobId": job_id, "pool": pool,
                                         "at": firestore.SERVER_TIMESTAMP})
            return True

        return in_transaction(self.client, body, store="admission store",
                              busy="The queue is busy.")

    def release(self, pool: str, job_id: str) -> None:
        query = self.client.collection(SLOTS).where(
            filter=firestore.FieldFilter("jobId", "==", job_id))
        with unavailable_is_retryable("admission store"):
            for snap in query.stream():
                if (snap.to_dict() or {}).get("pool") != pool:
                    continue

                def body(tx: firestore.Transaction, ref: Any = snap.reference) -> None:
                    if (ref.get(transaction=tx).to_dict() or {}).get("jobId") == job_id:
                        tx.set(ref, {"jobId": None, "pool": pool})

                in_transaction(self.client, body, store="admission store")

    def holders(self, pool: str) -> list[str]:
        query = self.client.collection(SLOTS).where(
            filter=firestore.FieldFilter("pool", "==", pool))
        with unavailable_is_retryable("admission store"):
            return [str(job) for snap in query.stream()
                    if (job := (snap.to_dict() or {}).get("jobId"))]

    def narrow(self, pool: str, capacity: int, until: dt.datetime) -> None:
        with unavailable_is_retryable("admission store"):
            self.client.collection(SLOTS).document(doc_id(pool)).set(
                {"capacity": capacity, "until": until})

    def window(self, pool: str, capacity: int, now: dt.datetime) -> int:
        with unavailable_is_retryable("admission store"):
            doc = self.client.collection(SLOTS).document(doc_id(pool)).get().to_dict() or {}
        until = doc.get("until")
        if until is not None and until > now:
            return max(1, min(capacity, int(doc.get("capacity") or capacity)))
        return capacity
