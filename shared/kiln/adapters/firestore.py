"""Firestore adapter: job documents and device tokens.

Each transition runs as read → decide (a pure function from ``kiln.core.lifecycle``) → write,
inside one Firestore transaction; side effects happen outside it. SDK errors become
Kiln's retryable errors.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.core.errors import RetryableError
from kiln.core.job import Device

JOBS = "jobs"
#: Contention: an aborted transaction is tried again after a random pause of up to each of
#: TX_PAUSES seconds, one commit per try. The SDK's own immediate re-runs are off (one attempt
#: each): on the emulator, racers that come straight back re-take their read locks and starve
#: the writer until every one of them times out (seen: 8 racing claims all failing for 44 s);
#: random pauses let the first one back commit alone. Before each new try the caller may
#: look whether there is anything left to write (``settled``).
TX_ATTEMPTS = 1
TX_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
T = TypeVar("T")

#: Errors that mean "Firestore is not reachable right now": try again later.
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.TooManyRequests,
    gexc.RetryError,
)


@contextlib.contextmanager
def unavailable_is_retryable(store: str = "job store") -> Iterator[None]:
    """Turn "Firestore is not reachable right now" into a RetryableError (try again later)."""
    try:
        yield
    except _TRANSIENT as exc:
        raise RetryableError(f"The {store} is unavailable.", code="store_unavailable") from exc


def in_transaction(client: firestore.Client, body: Callable[[firestore.Transaction], T], *,
                   store: str = "job store", busy: str = "The job is busy.",
                   settled: Callable[[], tuple[bool, T]] | None = None) -> T:
    """Run ``body(tx)`` in a Firestore transaction, through contention.

    ``body`` reads through ``tx`` and decides from what it read, so running it again is
    safe. After a contention abort, ``settled()`` (if given) may answer ``(True, value)``
    from a plain read when there is nothing left to write, and no lock is taken again.
    Still contended after every try → RetryableError ``contention`` (the caller's delivery
    is retried later); Firestore unreachable → RetryableError ``store_unavailable``.
    """
    run = firestore.transactional(body)
    pauses = iter(TX_PAUSES)
    while True:
        try:
            with unavailable_is_retryable(store):
                return run(client.transaction(max_attempts=TX_ATTEMPTS))
        except ValueError as exc:
            if "Failed to commit transaction" not in str(exc):
                raise
            pause = next(pauses, None)
            if pause is None:
                raise RetryableError(busy, code="contention") from exc
        time.sleep(random.uniform(0, pause))
        if settled is not None:
            with unavailable_is_retryable(store):
                done, value = settled()
            if done:
                return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class JobStore:
    """Jobs in ``jobs/{jobId}``, devices in ``users/{uid}/devices/{deviceId}``."""

    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def ref(self, job_id: str) -> firestore.DocumentReference:
        return self.client.collection(JOBS).document(job_id)

    def create(self, job_id: str, doc: dict[str, Any]) -> bool:
        """Create the job; False when a job with this id exists already."""
        try:
            with unavailable_is_retryable():
                self.ref(job_id).create(doc)
        except gexc.AlreadyExists:
            return False
        return True

    def get(self, job_id: str) -> dict[str, Any] | None:
        with unavailable_is_retryable():
            snap = self.ref(job_id).get()
        return snap.to_dict() if snap.exists else None

    def transact(
        self, job_id: str, decide: Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, T]]
    ) -> T:
        """Run ``decide(job)`` in a transaction; write its updates (if any); return its value.

        ``decide`` receives the current document (None if missing) and returns
        ``(updates or None, value)``. It may raise to abort without writing.
        """
        ref = self.ref(job_id)

        def decide_on(snap: firestore.DocumentSnapshot) -> tuple[dict[str, Any] | None, T]:
            return decide(snap.to_dict() if snap.exists else None)

        def run(tx: firestore.Transaction) -> T:
            updates, value = decide_on(ref.get(transaction=tx))
            if updates:
                tx.update(ref, updates)
            return value

        def settled() -> tuple[bool, T]:
            # One document read is strongly consistent: when it leaves nothing to write
            # (another racer claimed or ended the job), that answer is the transaction's.
            updates, value = decide_on(ref.get())
            return not updates, value

        return in_transaction(self.client, run, settled=settled)

    def update(self, job_id: str, updates: dict[str, Any]) -> None:
        """A blind update of server-only bookkeeping (never a status change)."""
        with unavailable_is_retryable():
            self.ref(job_id).update(updates)

    # --- queries (operators, sweeper, channels) ---------------------------------------

    def find(
        self,
        *,
        status: str | None = None,
        uid: str | None = None,
        updated_before: dt.datetime | None = None,
        limit: int = 100,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        query: Any = self.client.collection(JOBS)
        if status is not None:
            query = query.where(filter=firestore.FieldFilter("status", "==", status))
        if uid is not None:
            query = query.where(filter=firestore.FieldFilter("uid", "==", uid))
        if updated_before is not None:
            query = query.where(filter=firestore.FieldFilter("updatedAt", "<", updated_before))
        for snap in query.limit(limit).stream():
            yield snap.id, snap.to_dict() or {}

    # --- devices ----------------------------------------------------------------------

    def devices(self, uid: str) -> list[Device]:
        """The user's registered devices that have an address (an FID or a token)."""
        collection = self.client.collection("users").document(uid).collection("devices")
        found = (Device.from_doc(snap.id, snap.to_dict() or {}) for snap in collection.stream())
        return [device for device in found if device is not None]

    def delete_device(self, uid: str, device_id: str) -> None:
        self.client.collection("users").document(uid).collection("devices").document(
            device_id
        ).delete()
