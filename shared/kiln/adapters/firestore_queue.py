"""Admission's counters and the running places, in Firestore, with no hot document.

- ``quotaTickets/{key}~{n}``: a quota (a user's jobs today) is numbered tickets, one
  document each, created once: a take creates the next numbers with create-if-absent in
  one batch (the next after this process's last, reserved per thread; the key's
  tickets are counted only when the process has no guess); a number taken meanwhile by
  another process fails the batch, and it tries the next ones; at the quota's edge it
  reads which numbers are free. Exact under concurrency; no document is written twice.
- ``slots/{pool}~{index}``: one document per place of a pool (a user's running limit, a
  provider account's capacity), present while held (``{jobId, pool}``); taken by a
  create-if-absent, given back by a delete with a precondition: no transaction.
  ``slotWindows/{pool}`` holds a narrowing (a provider's 429) as ``{capacity, until}``.
- The jobs not yet started are counted by an aggregation query over ``jobs`` (status
  ``pending``), cached for a second per process and read again in the background (a
  request never waits on it after the first): nothing is written to count them.

Why no document is hot at 50 jobs/s: docs/architecture.md ("Fair queues").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.adapters import wire
from kiln.adapters.firestore import (
    TICKETS,
    WAITING,
    doc_id,
    ticket_fields,
    ticket_path,
    unavailable_is_retryable,
)
from kiln.core.errors import RetryableError

SLOTS, WINDOWS, JOBS = "slots", "slotWindows", "jobs"
#: Tries of a take whose numbers concurrent requests keep taking first.
TAKE_ATTEMPTS = 8
#: After a lost round, a take starts up to this many × the round × its count past the count.
TAKE_SPREAD = 4
WAITING_CACHE_SECONDS = 1.0
#: One try of the waiting count, this long at most: the SDK's default retries the query
#: for minutes when Firestore is unreachable, and a caller would rather hear so.
COUNT_TIMEOUT = 5.0
WINDOW_CACHE_SECONDS = 1.0


class FirestoreCounters:
    """``kiln.ports.Counters`` on Firestore."""

    def __init__(self, client: firestore.Client, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self._clock = client, clock
        self._waiting: dict[str | None, tuple[float, int]] = {}
        self._next: dict[str, int] = {}  # key → the number this process expects to be free
        self._refreshing: dict[str | None, threading.Thread] = {}  # counts being read
        self._lock = threading.Lock()

    def _ticket(self, key: str, number: int) -> firestore.DocumentReference:
        return self.client.document(ticket_path(key, number))

    @functools.cached_property
    def _creates(self) -> wire.Creates:
        return wire.Creates(self.client)

    def used(self, key: str) -> int:
        query = self.client.collection(TICKETS).where(
            filter=firestore.FieldFilter("key", "==", key))
        with unavailable_is_retryable("admission store"):
            result: Any = query.count().get(retry=None, timeout=COUNT_TIMEOUT)  # type: ignore[call-arg]
        return int(result[0][0].value)

    def take(self, key: str, count: int, limit: int, holder: str = "") -> list[int] | None:
        # The numbers are guessed with no read (after this process's last ones) and
        # reserved here before they are tried, so this process's threads never race each
        # other for one number; only another process's take can make a create fail.
        numbers = self._numbers(key, count, limit, None)
        for attempt in range(TAKE_ATTEMPTS):
            if numbers is None:
                return None
            try:
                with unavailable_is_retryable("admission store"):
                    self._create(key, numbers, holder)
                return numbers
            except gexc.Conflict:
                pass  # AlreadyExists: another process took one of these numbers first
            except RetryableError as exc:
                if not isinstance(exc.__cause__, gexc.Aborted):
                    raise  # (Aborted: the emulator's lock on a number another one takes)
            # Every process that lost this round counts the same tickets: starting each at
            # the count made them collide again round after round (one user's burst over
            # several instances ended 503). Each starts a random way past it instead.
            spread = TAKE_SPREAD * (attempt + 1) * count
            numbers = self._numbers(key, count, limit,
                                    self.used(key) + 1 + random.randrange(spread))
        raise RetryableError("The quota is busy.", code="contention")

    def reserve(self, key: str, count: int, limit: int) -> list[int] | None:
        return self._numbers(key, count, limit, None)

    def _numbers(self, key: str, count: int, limit: int, floor: int | None) -> list[int] | None:
        """The ``count`` numbers to try next (:meth:`_reserve`); at the quota's edge the
        numbers still free, if any (None: fewer than ``count`` are left)."""
        start = self._reserve(key, count, floor)
        numbers = list(range(start, start + count))
        if numbers[-1] > limit:  # some free ones, each process its own pick of them
            free = self._free(key, limit)
            numbers = sorted(random.sample(free, count)) if len(free) >= count else free
        return numbers if len(numbers) == count else None

    def _reserve(self, key: str, count: int, floor: int | None) -> int:
        """The first of ``count`` numbers for this thread: at least ``floor`` (counted when
        None and this process has no guess yet) and past every number this process
        reserved since."""
        if floor is None:
            with self._lock:
                known = self._next.get(key)
            floor = known if known is not None else self.used(key) + 1
        with self._lock:
            start = max(floor, self._next.get(key, 0))
            if len(self._next) > 10_000:
                self._next.clear()
            self._next[key] = start + count
        return start

    def _free(self, key: str, limit: int) -> list[int]:
        """The numbers up to ``limit`` nobody holds (given back ones included): one read
        of at most ``limit`` tickets, made only at the quota's edge."""
        query = self.client.collection(TICKETS).where(
            filter=firestore.FieldFilter("key", "==", key)).select(["n"])
        with unavailable_is_retryable("admission store"):
            taken = {int((snap.to_dict() or {}).get("n") or 0) for snap in query.stream()}
        return [n for n in range(1, limit + 1) if n not in taken]

    def _create(self, key: str, numbers: list[int], holder: str) -> None:
        self._creates.commit([(self._ticket(key, number).path, ticket_fields(key, number, holder))
                              for number in numbers])

    def give_back(self, key: str, numbers: list[int]) -> None:
        batch = self.client.batch()
        for number in numbers:
            batch.delete(self._ticket(key, number))
        with unavailable_is_retryable("admission store"):
            batch.commit()

    def waiting(self, reason: str | None = None, *, unknown: int | None = None) -> int:
        # Read once; afterwards a stale count is answered at once while one thread reads
        # the next. With ``unknown`` even the first read is made in the background.
        now = self._clock()
        with self._lock:
            hit = self._waiting.get(reason)
            stale = hit is None or now - hit[0] >= WAITING_CACHE_SECONDS
            thread = None
            if stale and (hit is not None or unknown is not None) \
                    and reason not in self._refreshing:
                thread = self._refreshing[reason] = threading.Thread(
                    target=self._background, args=(reason,), daemon=True,
                    name="kiln-waiting-count")
        if thread is not None:
            thread.start()
        if hit is not None:
            return hit[1]
        return unknown if unknown is not None else self._refresh(reason)

    def _refresh(self, reason: str | None) -> int:
        # Every pending job (the backlog, for backpressure), or those waiting for a reason:
        # the small ``waitingJobs`` collection (kiln.adapters.firestore.WAITING).
        if reason is None:
            query = self.client.collection(JOBS).where(
                filter=firestore.FieldFilter("status", "==", "pending"))
        else:
            query = self.client.collection(WAITING).where(
                filter=firestore.FieldFilter("reason", "==", reason))
        with unavailable_is_retryable("admission store"):
            result: Any = query.count().get(retry=None, timeout=COUNT_TIMEOUT)  # type: ignore[call-arg]
        count = int(result[0][0].value)
        with self._lock:
            self._waiting[reason] = (self._clock(), count)
        return count

    def _background(self, reason: str | None) -> None:
        try:
            self._refresh(reason)
        except RetryableError:
            pass  # the stale count stands; the next call tries again
        finally:
            with self._lock:
                self._refreshing.pop(reason, None)


class FirestoreSlots:
    """``kiln.ports.Slots`` on Firestore: a place is held while its document exists.

    Taking one is a create-if-absent of one place document (no transaction: two requests
    contend only when they try the same place, and the create decides). A take with no
    ``done`` first tries the place its job id hashes to, with no read (a new job's
    arrival: one write while the pool has room); otherwise, or when that place is taken,
    the pool's places are read and a free one is created. A place whose
    holder is done is deleted with a precondition on its update time, then created again.
    Giving one back deletes it the same way. A narrowed window is checked by counting
    the held places first, so concurrent starts may pass it by a few; the capacity itself
    is exact.
    """

    def __init__(self, client: firestore.Client, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self._clock = client, clock
        self._windows: dict[str, tuple[float, dict[str, Any]]] = {}  # pool → (read at, doc)

    def _place(self, pool: str, index: int) -> firestore.DocumentReference:
        return self.client.collection(SLOTS).document(f"{doc_id(pool)}~{index}")

    @functools.cached_property
    def _creates(self) -> wire.Creates:  # a new job's places (its arrival)
        return wire.Creates(self.client)

    def take(self, pool: str, capacity: int, job_id: str,
             done: Callable[[str, float], bool] | None = None,
             limit: int | None = None) -> bool:
        doc = {"jobId": job_id, "pool": pool, "at": firestore.SERVER_TIMESTAMP}
        if done is None and limit is None and self._first_try(pool, capacity, job_id, doc):
            return True
        refs = [self._place(pool, i) for i in range(capacity)]
        with unavailable_is_retryable("admission store"):
            snaps = {snap.reference.id: snap for snap in self.client.get_all(refs)}
        held = {ref.id: (snaps[ref.id].to_dict() or {}).get("jobId")
                for ref in refs if snaps[ref.id].exists}
        if job_id in held.values():
            return True
        # How long each place has been held: the read's time against the place's own
        # (both the server's clock; a place is created once and never updated).
        ended = {ref_id for ref_id, holder in held.items()
                 if done is not None and done(str(holder), (
                     snaps[ref_id].read_time - snaps[ref_id].update_time).total_seconds())}
        if limit is not None and len(held) - len(ended) >= limit:
            return False
        start = random.randrange(capacity)
        order = [refs[(start + i) % capacity] for i in range(capacity)]
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

    def _first_try(self, pool: str, capacity: int, job_id: str, doc: dict[str, Any]) -> bool:
        """Create the job's own place (its id's hash picks the index) with no read: one
        write while the pool has room. Taken (by another job, or by this one: a repeated
        take tries the same index first) → False, and the pool is read."""
        index = int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) % capacity
        try:
            with unavailable_is_retryable("admission store"):
                self._creates.commit([(self._place(pool, index).path, doc)])
            return True
        except gexc.Conflict:
            return False
        except RetryableError as exc:
            if not isinstance(exc.__cause__, gexc.Aborted):
                raise
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
        doc = {"capacity": capacity, "until": until}
        with unavailable_is_retryable("admission store"):
            self.client.collection(WINDOWS).document(doc_id(pool)).set(doc)
        self._windows[pool] = (self._clock(), doc)

    def window(self, pool: str, capacity: int, now: dt.datetime) -> int:
        # Read at most once a second per process: a narrowing reaches every instance
        # within a second (this one at once).
        hit = self._windows.get(pool)
        if hit is None or self._clock() - hit[0] >= WINDOW_CACHE_SECONDS:
            with unavailable_is_retryable("admission store"):
                doc = self.client.collection(WINDOWS).document(doc_id(pool)).get().to_dict() or {}
            hit = self._windows[pool] = (self._clock(), doc)
        doc = hit[1]
        until = doc.get("until")
        if until is not None and until > now:
            return max(1, min(capacity, int(doc.get("capacity") or capacity)))
        return capacity
