"""In-memory fakes of the fair queue's ports (``kiln.ports.Counters``, ``Slots``), for
unit tests and bench-fairness; ``tests/contract/test_queue_ports.py`` holds them to the
Firestore adapters' contract. Re-exported by ``kiln_dev.fakes``."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


class InMemoryCounters:
    """``kiln.ports.Counters``: tickets in sets; ``waiting`` counts the store's pending
    jobs (as the real one's aggregation query does)."""

    def __init__(self, store: Any = None) -> None:
        self.store = store
        if store is not None:  # a job's create takes the tickets it carries from here
            store.counters = self
        self.tickets: dict[str, set[int]] = {}
        self.holders: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def take(self, key: str, count: int, limit: int, holder: str = "") -> list[int] | None:
        with self._lock:
            free = self._free(key, count, limit)
            if free is not None:
                self.tickets.setdefault(key, set()).update(free)
                self.holders.update({(key, n): holder for n in free})
            return free

    def reserve(self, key: str, count: int, limit: int) -> list[int] | None:
        with self._lock:
            return self._free(key, count, limit)

    def _free(self, key: str, count: int, limit: int) -> list[int] | None:
        """The lowest ``count`` free numbers up to ``limit`` (caller holds the lock)."""
        held = self.tickets.get(key, set())
        free = [n for n in range(1, limit + 1) if n not in held][:count]
        return free if len(free) == count else None

    def confirm(self, key: str, numbers: list[int], holder: str = "") -> bool:
        """Take exactly ``numbers`` (a job's create carrying them); False when one is held."""
        with self._lock:
            held = self.tickets.setdefault(key, set())
            if held & set(numbers):
                return False
            held.update(numbers)
            self.holders.update({(key, n): holder for n in numbers})
            return True

    def give_back(self, key: str, numbers: list[int]) -> None:
        with self._lock:
            self.tickets.get(key, set()).difference_update(numbers)
            for number in numbers:
                self.holders.pop((key, number), None)

    def used(self, key: str) -> int:
        return len(self.tickets.get(key, ()))

    def waiting(self, reason: str | None = None, *, unknown: int | None = None) -> int:
        if self.store is None:
            return 0
        return sum(1 for doc in self.store.docs.values() if doc.get("status") == "pending"
                   and (reason is None or doc.get("queueReason") == reason))


class InMemorySlots:
    """``kiln.ports.Slots``: places in dicts; counts writes per place (the bench)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.places: dict[str, list[str | None]] = {}
        self.since: dict[tuple[str, int], float] = {}  # (pool, index) → taken at
        self._clock = clock
        self.narrowed: dict[str, tuple[int, dt.datetime]] = {}
        self.writes: Counter[str] = Counter()  # "pool~index" → writes
        self._lock = threading.Lock()

    def take(self, pool: str, capacity: int, job_id: str,
             done: Any = None, limit: int | None = None) -> bool:
        with self._lock:
            places = self.places.setdefault(pool, [])
            if job_id in places:
                return True
            places.extend([None] * (capacity - len(places)))
            if done is not None:
                now = self._clock()
                for index in range(capacity):
                    holder = places[index]
                    if holder is not None and done(holder, now - self.since[(pool, index)]):
                        places[index] = None
                        self.writes[f"{pool}~{index}"] += 1
            held = sum(1 for h in places[:capacity] if h is not None)
            if limit is not None and held >= limit:
                return False
            for index in range(capacity):
                if places[index] is None:
                    places[index] = job_id
                    self.since[(pool, index)] = self._clock()
                    self.writes[f"{pool}~{index}"] += 1
                    return True
            return False

    def release(self, pool: str, job_id: str) -> None:
        with self._lock:
            places = self.places.get(pool, [])
            if job_id in places:
                index = places.index(job_id)
                places[index] = None
                self.writes[f"{pool}~{index}"] += 1

    def holders(self, pool: str) -> list[str]:
        with self._lock:
            return [h for h in self.places.get(pool, []) if h is not None]

    def narrow(self, pool: str, capacity: int, until: dt.datetime) -> None:
        self.narrowed[pool] = (capacity, until)

    def window(self, pool: str, capacity: int, now: dt.datetime) -> int:
        narrowed = self.narrowed.get(pool)
        if narrowed is not None and narrowed[1] > now:
            return min(capacity, narrowed[0])
        return capacity
