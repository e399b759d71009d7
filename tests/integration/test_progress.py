"""Coalesced progress writes against the Firestore emulator, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.adapters.firestore import utcnow
from kiln.core import lifecycle
from kiln.core.errors import CanceledError, LeaseLostError
from kiln.runtime.progress import ProgressReporter
from support import create_job


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def running_job(services: Any, worker: str = "w1") -> str:
    job_id = create_job(services)
    services.store.transact(job_id, lambda job: (lifecycle.claim(
        job or {}, worker_id=worker, now=utcnow(), lease_seconds=30, max_attempts=3).updates, None))
    return job_id


def reporter(services: Any, job_id: str, clock: Clock, worker: str = "w1") -> ProgressReporter:
    return ProgressReporter(services.store, job_id, worker, interval=1.0, lease_seconds=30,
                            clock=clock)


def test_many_updates_within_a_second_make_one_write(services: Any) -> None:
    """50 updates in 0.5 s → no write; the first update after 1 s writes the latest value."""
    job_id = running_job(services)
    clock = Clock()
    rep = reporter(services, job_id, clock)
    for p in range(50):
        clock.now += 0.01
        rep.update(p, "generating")
    assert rep.writes == 0
    clock.now += 1.0
    rep.update(60, "meshing")
    assert rep.writes == 1
    job = services.store.get(job_id)
    assert (job["progress"], job["stage"]) == (60, "meshing")


def test_unchanged_progress_is_not_written_until_a_heartbeat_is_due(services: Any) -> None:
    """Same progress for 9 s → no write; at lease/3 (10 s) one heartbeat renews the lease."""
    job_id = running_job(services)
    clock = Clock()
    rep = reporter(services, job_id, clock)
    clock.now += 1.1
    rep.update(10, "generating")
    assert rep.writes == 1
    before = services.store.get(job_id)["_server"]["leaseExpiresAt"]
    for _ in range(9):
        clock.now += 1.0
        rep.update(10, "generating")
    assert rep.writes == 1
    clock.now += 1.0
    rep.update(10, "generating")
    assert rep.writes == 2
    assert services.store.get(job_id)["_server"]["leaseExpiresAt"] > before


def test_progress_never_decreases(services: Any) -> None:
    """An update lower than what was reported keeps the higher value."""
    job_id = running_job(services)
    clock = Clock()
    rep = reporter(services, job_id, clock)
    clock.now += 2
    rep.update(70)
    clock.now += 2
    rep.update(30)
    assert services.store.get(job_id)["progress"] == 70


def test_a_cancel_stops_the_run_at_the_next_check(services: Any) -> None:
    """Canceled in Firestore → should_stop() turns true within the check interval."""
    job_id = running_job(services)
    clock = Clock()
    rep = reporter(services, job_id, clock)
    assert not rep.should_stop()
    services.store.transact(job_id, lambda job: (lifecycle.cancel(job or {}), None))
    assert not rep.should_stop()  # not checked again yet (every 2 s)
    clock.now += 2.1
    assert rep.should_stop() and isinstance(rep.stop_reason, CanceledError)
    with pytest.raises(CanceledError):
        rep.raise_if_stopped()


def test_a_lost_lease_raises_on_the_next_write(services: Any) -> None:
    """Another worker took the job → our progress write raises LeaseLostError, writes nothing."""
    job_id = running_job(services)
    services.store.update(job_id, {"_server.leaseOwner": "w2"})
    clock = Clock()
    rep = reporter(services, job_id, clock)
    clock.now += 2
    with pytest.raises(LeaseLostError):
        rep.update(50)
    assert services.store.get(job_id)["progress"] == 0
