"""Firestore adapter: job documents and device tokens.

Each transition runs as read → decide (a pure function from ``kiln.lifecycle``) → write,
inside one Firestore transaction; side effects happen outside it. SDK errors become
Kiln's retryable errors.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.errors import RetryableError
from kiln.model import Device

JOBS = "jobs"
TX_ATTEMPTS = 12  # contention retries (the SDK backs off between them)
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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Snapshot(Protocol):
    exists: bool

    def to_dict(self) -> dict[str, Any] | None: ...


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

        @firestore.transactional
        def run(tx: firestore.Transaction) -> T:
            snap = ref.get(transaction=tx)
            updates, value = decide(snap.to_dict() if snap.exists else None)
            if updates:
                tx.update(ref, updates)
            return value

        try:
            with unavailable_is_retryable():
                return run(self.client.transaction(max_attempts=TX_ATTEMPTS))
        except ValueError as exc:
            if "Failed to commit transaction" not in str(exc):
                raise
            # Contention on one document (duplicate deliveries racing): try again later.
            raise RetryableError("The job is busy.", code="contention") from exc

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
