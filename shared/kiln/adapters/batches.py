"""Firestore adapter of ``kiln.ports.BatchStore``: ``batches/{batchId}`` and its end
marker ``batches/{batchId}/private/ended`` (server only), written with the batch's jobs in
one batched write."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.adapters.firestore import (
    BATCHES,
    JOBS,
    FirestoreJobStore,
    _fields,
    unavailable_is_retryable,
    waiting_fields,
    waiting_path,
)
from kiln.adapters.scan import rotated
from kiln.core.batches import TERMINAL, Batch
from kiln.core.errors import RetryableError
from kiln.core.job import NewJob
from kiln.core.lifecycle import expire_at


class FirestoreBatchStore:
    def __init__(self, client: firestore.Client) -> None:
        self.client = client
        self.jobs = FirestoreJobStore(client)

    def _ref(self, batch_id: str) -> firestore.DocumentReference:
        return self.client.collection(BATCHES).document(batch_id)

    def create(self, batch: Batch, jobs: Sequence[NewJob], *, key_job: str | None = None) -> bool:
        writes = self.client.batch()
        writes.create(self._ref(batch.id), _fields(batch.doc()))
        if key_job is not None:  # a delete that writes nothing: fails if the job exists
            writes.delete(self.jobs.ref(key_job), option=self.client.write_option(exists=False))
        for job in jobs:
            writes.create(self.jobs.ref(job.id), _fields(job.doc))
            writes.create(self.jobs.server_ref(job.id), _fields(job.server))
            if (waits := waiting_fields(job.doc)) is not None:  # it waits for a place
                writes.set(self.client.document(waiting_path(job.id)), waits)
        try:
            with unavailable_is_retryable("batch store"):
                writes.commit()
        except gexc.AlreadyExists:
            return False
        except gexc.FailedPrecondition as exc:  # (a failed "must not exist" reads as either)
            if key_job is not None and self.jobs.get(key_job) is not None:
                return False
            raise RetryableError("The batch store refused the write.",
                                 code="store_unavailable") from exc
        return True

    def get(self, batch_id: str) -> Batch | None:
        with unavailable_is_retryable("batch store"):
            snap = self._ref(batch_id).get()
        return Batch.from_doc(batch_id, snap.to_dict() or {}) if snap.exists else None

    def statuses(self, batch_id: str) -> dict[str, str]:
        query = (self.client.collection(JOBS)
                 .where(filter=firestore.FieldFilter("batchId", "==", batch_id))
                 .select(["status"]))
        with unavailable_is_retryable("batch store"):
            return {snap.id: str((snap.to_dict() or {}).get("status")) for snap in query.stream()}

    def ended_count(self, batch_id: str) -> int:
        """A count aggregation (index ``jobs_batch_status`` in infra/firestore.tf)."""
        query = (self.client.collection(JOBS)
                 .where(filter=firestore.FieldFilter("batchId", "==", batch_id))
                 .where(filter=firestore.FieldFilter("status", "in", sorted(TERMINAL))))
        aggregate: Any = query.count()
        with unavailable_is_retryable("batch store"):
            results = aggregate.get()
        return int(results[0][0].value)

    def close(self, batch_id: str) -> None:
        with unavailable_is_retryable("batch store"):
            self._ref(batch_id).update({"open": False})

    def open_batches(self, limit: int) -> list[Batch]:
        # A window that moves from call to call (adapters.scan): with more open batches
        # than ``limit``, a fixed one read the lowest ids for ever, and a batch whose own
        # end check failed beyond them was never announced.
        query = self.client.collection(BATCHES).where(
            filter=firestore.FieldFilter("open", "==", True))
        with unavailable_is_retryable("batch store"):
            return [Batch.from_doc(snap.id, snap.to_dict() or {})
                    for snap in rotated(query, limit)]

    def ended_at(self, batch_id: str) -> dt.datetime | None:
        with unavailable_is_retryable("batch store"):
            snap = self._ended(batch_id).get()
        return (snap.to_dict() or {}).get("endedAt") if snap.exists else None

    def _ended(self, batch_id: str) -> Any:
        return self._ref(batch_id).collection("private").document("ended")

    def mark_ended(self, batch_id: str, token: str = "") -> bool:
        ref = self._ended(batch_id)
        try:
            with unavailable_is_retryable("batch store"):
                # deleted by the private collection group's TTL policy, as the batch is
                ref.create({"endedAt": firestore.SERVER_TIMESTAMP, "by": token,
                            "expireAt": expire_at(dt.datetime.now(dt.UTC))})
        except gexc.AlreadyExists:
            return False
        except RetryableError:  # landed though its answer was lost, if it bears our token
            with unavailable_is_retryable("batch store"):
                snap = ref.get()
            if token and snap.exists and (snap.to_dict() or {}).get("by") == token:
                return True
            raise
        return True
