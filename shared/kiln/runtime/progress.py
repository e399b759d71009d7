"""Coalesced progress: at most one public write per interval, and only when it moved.

Each write is a transaction that also renews the lease (server state only, so a
heartbeat wakes no listener) and notices a cancel or a lost lease, raising
``CanceledError`` / ``LeaseLostError`` into the provider's loop — that is how a running
generation stops. Between writes, ``should_stop`` reads the job every few seconds so a
cancel is noticed even when progress stalls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kiln.core import lifecycle
from kiln.core.errors import CanceledError, KilnError, LeaseLostError, RetryableError
from kiln.core.job import Job, JobStatus
from kiln.core.policy import RetryPolicy
from kiln.ports import Clock, JobStore

STOP_CHECK_SECONDS = 2.0


class ProgressReporter:
    def __init__(
        self,
        store: JobStore,
        job_id: str,
        worker_id: str,
        *,
        policy: RetryPolicy,
        clock: Clock,
        interval: float,
        start_progress: int = 0,
        on_write: Callable[[int, str], None] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.policy = policy
        self.clock = clock
        self.interval = interval
        self.writes = 0
        self._written: tuple[int, str] = (start_progress, "")
        self._pending: tuple[int, str] = (start_progress, "")
        self._last_write = self._last_check = clock.monotonic()
        self.stop_reason: KilnError | None = None
        self.on_write = on_write

    @property
    def progress(self) -> int:
        return self._pending[0]

    @property
    def _heartbeat_due(self) -> bool:
        return self.clock.monotonic() - self._last_write >= self.policy.lease_seconds / 3

    def update(self, progress: int, stage: str = "") -> None:
        """Note progress; write it if the interval passed (or the lease needs renewing)."""
        progress = max(self._pending[0], min(100, max(0, int(progress))))
        self._pending = (progress, stage or self._pending[1])
        moved = self._pending != self._written
        if (moved and self.clock.monotonic() - self._last_write >= self.interval) \
                or self._heartbeat_due:
            self.flush()

    def flush(self) -> None:
        """Write pending progress now (a lease heartbeat when nothing moved)."""
        progress, stage = self._pending
        moved = self._pending != self._written

        def decide(job: Job | None) -> tuple[Any, None]:
            return lifecycle.report_progress(
                job, worker_id=self.worker_id, now=self.clock.now(), policy=self.policy,
                progress=progress if moved else None, stage=stage if moved else None,
            ), None

        try:
            self.store.transact(self.job_id, decide)
        except (CanceledError, LeaseLostError) as exc:
            self.stop_reason = exc
            raise
        self.writes += 1
        self._written = self._pending
        self._last_write = self._last_check = self.clock.monotonic()
        if moved and self.on_write is not None:
            self.on_write(progress, stage)

    def should_stop(self) -> bool:
        """True once the job was canceled or our lease was lost (checked every few s)."""
        if self.stop_reason is not None:
            return True
        if self.clock.monotonic() - self._last_check < STOP_CHECK_SECONDS:
            return False
        self._last_check = self.clock.monotonic()
        if self._heartbeat_due:
            try:
                self.flush()
            except (CanceledError, LeaseLostError):
                return True
            return False
        job = self.store.get(self.job_id)
        if job is None or job.status is JobStatus.CANCELED:
            self.stop_reason = CanceledError("The job was canceled.")
        elif job.status is not JobStatus.PROCESSING or job.server.lease_owner != self.worker_id:
            self.stop_reason = LeaseLostError("Another worker owns this job now.")
        return self.stop_reason is not None

    def relay(self, chunks: Iterable[bytes], stage: str) -> Iterator[bytes]:
        """``chunks`` (a result streaming into the bucket) handed on one by one, the lease
        renewed on the way (a large model on a slow link can stream for longer than the
        lease) and a cancel or a lost lease noticed: the stream stops there, so the upload
        is abandoned and leaves no object for the job's new holder to find overwritten. A
        job store unreachable for a moment does not stop it: the completion's own write
        decides whether the job is still this delivery's."""
        for chunk in chunks:
            try:
                self.update(self.progress, stage)  # (writes only when the heartbeat is due)
                self.raise_if_stopped()
            except RetryableError:
                pass
            yield chunk

    def raise_if_stopped(self) -> None:
        if self.should_stop() and self.stop_reason is not None:
            raise self.stop_reason
