"""``JobStore.find(rotate=True)`` on the fake and on the Firestore emulator: a pass that
reads at most ``limit`` jobs reads every job over its passes. Unrotated, Firestore
returns the lowest document ids every time, so with more jobs waiting than a pass reads
(200) the others were never looked at: never started, and expired at their TTL."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import types
import uuid
from collections.abc import Iterable
from typing import Any

import pytest

from kiln.core import lifecycle
from kiln.core.policy import RetryPolicy
from kiln.core.requests import parse_job_request
from kiln_dev.fakes import FakeClock, InMemoryJobStore

JOBS, LIMIT = 12, 4


@pytest.fixture(params=["fake", "emulator"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC)))
    from kiln.adapters.firestore import FirestoreJobStore, connect  # a project of its own
    host = request.getfixturevalue("services").settings.firestore_emulator_host
    return FirestoreJobStore(connect(f"demo-scan-{uuid.uuid4().hex[:8]}", host))


def draw_pivots(monkeypatch: pytest.MonkeyPatch, pivots: Iterable[str]) -> None:
    """The rotated windows' starts (``kiln.adapters.scan`` and the fakes' draw them at
    random) come from ``pivots``, in turn, for this thread's windows (the local stack's
    sweeper thread, in this process, keeps drawing at random)."""
    from kiln.adapters import scan
    from kiln_dev import fakes
    drawn, here = iter(pivots), threading.get_ident()

    def token_hex(n: int) -> str:
        return next(drawn) if threading.get_ident() == here else secrets.token_hex(n)

    fixed = types.SimpleNamespace(token_hex=token_hex)
    monkeypatch.setattr(scan, "secrets", fixed)
    monkeypatch.setattr(fakes, "secrets", fixed)


def waiting_jobs(store: Any) -> set[str]:
    ids = set()
    for _ in range(JOBS):
        new = lifecycle.new_job(
            job_id=uuid.uuid4().hex[:20], uid="scan", channel="app",
            now=dt.datetime.now(dt.UTC), policy=RetryPolicy(),
            request=parse_job_request({"kind": "image", "prompt": "a"}),
            queue=lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=60,
                                       reason="running_limit"))
        assert store.create(new)
        ids.add(new.id)
    return ids


@pytest.mark.parametrize("waiting", [True, False], ids=["queue pass", "sweeper"])
def test_rotated_windows_read_every_job_over_the_passes(
        store: Any, waiting: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass's window starts at its random pivot and wraps around: passes whose pivots
    fall before each job read every job. The pivots are drawn here (each job's id in
    turn, then one past the last id, which wraps) instead of at random, so the test does
    not depend on where random pivots land (12 random ids can cluster: a job right after
    three close neighbours is read by few random windows)."""
    ids = waiting_jobs(store)
    fixed = [frozenset(job.id for job in store.find(status="pending", limit=LIMIT,
                                                    waiting=waiting)) for _ in range(3)]
    assert len(set(fixed)) == 1  # unrotated: the same jobs every time
    draw_pivots(monkeypatch, [*sorted(ids), "f" * 20])
    seen: set[str] = set()
    windows = []
    for _ in range(JOBS + 1):
        window = [job.id for job in store.find(status="pending", limit=LIMIT,
                                               waiting=waiting, rotate=True)]
        assert len(window) == len(set(window)) == LIMIT
        windows.append(frozenset(window))
        seen.update(window)
    assert seen == ids and len(set(windows)) == JOBS  # (the last wrapped to the first)


def test_a_rotated_window_of_fewer_jobs_than_its_limit_reads_them_all(store: Any) -> None:
    ids = set(list(waiting_jobs(store))[:JOBS])
    for _ in range(5):
        assert {job.id for job in store.find(status="pending", limit=JOBS + 5, waiting=True,
                                             rotate=True)} == ids


@pytest.fixture(params=["fake", "emulator"])
def batch_store(request: pytest.FixtureRequest) -> Any:
    from kiln_dev.fakes_api import InMemoryBatchStore
    if request.param == "fake":
        return InMemoryBatchStore(InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC))))
    from kiln.adapters.batches import FirestoreBatchStore
    from kiln.adapters.firestore import connect  # a project of its own
    host = request.getfixturevalue("services").settings.firestore_emulator_host
    return FirestoreBatchStore(connect(f"demo-scan-{uuid.uuid4().hex[:8]}", host))


def test_open_batches_are_read_in_windows_that_move(
        batch_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper's batch sweep reads at most ``limit`` open batches a pass: over its
    passes it reads every one (a batch whose own end check failed is announced). The
    windows' starts are drawn here, as above."""
    from kiln.core.batches import Batch
    ids = set()
    for _ in range(JOBS):
        batch = Batch(uuid.uuid4().hex[:20], "scan", "api", (), "fp", dt.datetime.now(dt.UTC))
        assert batch_store.create(batch, [])
        ids.add(batch.id)
    draw_pivots(monkeypatch, [*sorted(ids), "f" * 20])
    seen: set[str] = set()
    for _ in range(JOBS + 1):
        window = [batch.id for batch in batch_store.open_batches(LIMIT)]
        assert len(window) == len(set(window)) == LIMIT
        seen.update(window)
    assert seen == ids
