"""Coalesced progress: at most one job write per interval, and only when it moved.

Each write is a transaction that also renews the lease and notices a cancel or a lost
lease (raising ``CanceledError`` / ``LeaseLostError`` into the provider's loop, which is
how a running generation stops). Between writes, ``should_stop`` reads the job every
few seconds so a cancel is noticed even when progress stalls.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from kiln.adapters.firestore import JobStore, utcnow
from kiln.core import lifecycle
from kiln.core.errors import CanceledError, KilnError, LeaseLostError
from kiln.core.job import JobStatus

STOP_CHECK_SECONDS = 2.0


class ProgressReporter:
    def __init__(
        self,
        store: JobStore,
        job_id: str,
        worker_id: str,
        *,
        interval: float,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = utcnow,
        start_progress: int = 0,
        on_write: Callable[[int, str], None] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.now = now
        self.writes = 0
        self._written: tuple[int, str] = (start_progress, "")
        self._pending: tuple[int, str] = (start_progress, "")
        self._last_write = clock()
        self._last_check = clock()
        self.stop_reason: KilnError | None = None
        self.on_write = on_write

    @property
    def progress(self) -> int:
        return self._pending[0]

    def update(self, progress: int, stage: str = "") -> None:
        """Note progress; write it if the interval passed (or the lease needs renewing)."""
        progress = max(self._pending[0], min(100, max(0, int(progress))))
        self._pending = (progress, stage or self._pending[1])
        elapsed = self.clock() - self._last_write
        moved = self._pending != self._written
        if (moved and elapsed >= self.interval) or elapsed >= self.lease_seconds / 3:
            self.flush()

    def flush(self) -> None:
        """Write pending progress now (a lease heartbeat when nothing moved)."""
        progress, stage = self._pending
        moved = self._pending != self._written

        def decide(job: dict[str, Any] | None) -> tuple[Any, None]:
            if job is None:
                raise LeaseLostError("The job document is gone.")
            return lifecycle.report_progress(
                job, worker_id=self.worker_id, now=self.now(), lease_seconds=self.lease_seconds,
                progress=progress if moved else None, stage=stage if moved else None,
            ), None

        try:
            self.store.transact(self.job_id, decide)
        except (CanceledError, LeaseLostError) as exc:
            self.stop_reason = exc
            raise
        self.writes += 1
        self._written = self._pending
        self._last_write = self._last_check = self.clock()
        if moved and self.on_write is not None:
            self.on_write(progress, stage)

    def should_stop(self) -> bool:
        """True once the job was canceled or our lease was lost (checked every few s)."""
        if self.stop_reason is not None:
            return True
        if self.clock() - self._last_check < STOP_CHECK_SECONDS:
            return False
        self._last_check = self.clock()
        if self.clock() - self._last_write >= self.lease_seconds / 3:
            try:
                self.flush()
            except (CanceledError, LeaseLostError):
                return True
            return False
        job = self.store.get(self.job_id)
        if job is None or job.get("status") == JobStatus.CANCELED.value:
            self.stop_reason = CanceledError("The job was canceled.")
        elif (job.get("status") != JobStatus.PROCESSING.value
              or lifecycle.server(job).get("leaseOwner") != self.worker_id):
            self.stop_reason = LeaseLostError("Another worker owns this job now.")
        return self.stop_reason is not None

    def raise_if_stopped(self) -> None:
        if self.should_stop() and self.stop_reason is not None:
            raise self.stop_reason
