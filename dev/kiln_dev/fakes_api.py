"""In-memory fakes of the ports backends use (``kiln.ports.KeyStore``,
``kiln.ports.BatchStore``), for unit tests; beside ``kiln_dev.fakes``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Sequence

from kiln.core.batches import TERMINAL, Batch
from kiln.core.errors import RetryableError
from kiln.core.job import NewJob
from kiln.core.keys import ApiKey, Tenant
from kiln_dev.fakes import InMemoryJobStore, rotated


class InMemoryKeyStore:
    """``kiln.ports.KeyStore`` in dicts; counts key reads (the verifier's cache)."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.tenants: dict[str, Tenant] = {}
        self.key_reads = 0
        self._lock = threading.Lock()

    def put_key(self, key: ApiKey) -> None:
        with self._lock:
            self.keys[key.key_id] = key

    def get_key(self, key_id: str) -> ApiKey | None:
        with self._lock:
            self.key_reads += 1
            return self.keys.get(key_id)

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        with self._lock:
            return [k for k in self.keys.values() if tenant is None or k.tenant == tenant]

    def revoke_key(self, key_id: str, at: dt.datetime) -> bool:
        with self._lock:
            key = self.keys.get(key_id)
            if key is None:
                return False
            self.keys[key_id] = dataclasses.replace(key, revoked_at=key.revoked_at or at)
            return True

    def get_tenant(self, tenant: str) -> Tenant | None:
        with self._lock:
            return self.tenants.get(tenant)

    def put_tenant(self, tenant: Tenant) -> None:
        with self._lock:
            self.tenants[tenant.tenant] = tenant


class InMemoryBatchStore:
    """``kiln.ports.BatchStore`` over an ``InMemoryJobStore`` (one lock: all or nothing);
    the next ``fail_counts`` end counts fail as an unreachable store would."""

    def __init__(self, jobs: InMemoryJobStore) -> None:
        self.jobs = jobs
        self.batches: dict[str, Batch] = {}
        jobs.batch_ids = self.batches  # a job whose key names a batch is refused
        self.ended: dict[str, dt.datetime] = {}
        self.closed: set[str] = set()
        self.fail_counts = 0

    def create(self, batch: Batch, jobs: Sequence[NewJob], *, key_job: str | None = None) -> bool:
        with self.jobs._lock:
            self.jobs._check()
            if batch.id in self.batches or key_job in self.jobs.docs or any(
                    job.id in self.jobs.docs for job in jobs):
                return False
            self.batches[batch.id] = dataclasses.replace(
                batch, created_at=batch.created_at or self.jobs.clock.now())
            for job in jobs:
                assert self.jobs.create(job)
            return True

    def get(self, batch_id: str) -> Batch | None:
        with self.jobs._lock:
            self.jobs._check()
            batch = self.batches.get(batch_id)
            return dataclasses.replace(batch, open=False) \
                if batch is not None and batch_id in self.closed else batch

    def statuses(self, batch_id: str) -> dict[str, str]:
        with self.jobs._lock:
            self.jobs._check()
            return {job_id: str(doc.get("status")) for job_id, doc in self.jobs.docs.items()
                    if doc.get("batchId") == batch_id}

    def ended_count(self, batch_id: str) -> int:
        if self.fail_counts > 0:
            self.fail_counts -= 1
            raise RetryableError("The batch store is unavailable.", code="store_unavailable")
        return sum(status in TERMINAL for status in self.statuses(batch_id).values())

    def close(self, batch_id: str) -> None:
        with self.jobs._lock:
            self.jobs._check()
            self.closed.add(batch_id)

    def open_batches(self, limit: int) -> list[Batch]:
        with self.jobs._lock:
            self.jobs._check()
            ids = rotated([i for i in self.batches if i not in self.closed], limit)
            return [self.batches[i] for i in ids[:limit]]

    def mark_ended(self, batch_id: str, token: str = "") -> bool:
        with self.jobs._lock:
            if batch_id in self.ended:
                return False
            self.ended[batch_id] = self.jobs.clock.now()
            return True

    def ended_at(self, batch_id: str) -> dt.datetime | None:
        with self.jobs._lock:
            self.jobs._check()
            return self.ended.get(batch_id)
