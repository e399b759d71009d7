"""The fair queue's index of waiting jobs (``waitingJobs/{jobId}``) on the Firestore
emulator: written in the same commit as every change of a job's ``queueReason``, so a pass
and the waiting counts read it instead of every job (kiln.adapters.firestore.WAITING)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from kiln.adapters.firestore import WAITING, FirestoreJobStore, connect
from kiln.adapters.firestore_queue import FirestoreCounters
from kiln.core import lifecycle
from kiln.core.policy import RetryPolicy
from kiln.core.requests import parse_job_request


def _new(queue: lifecycle.QueueEntry | None) -> Any:
    return lifecycle.new_job(
        job_id=uuid.uuid4().hex[:20], uid=f"index-{uuid.uuid4().hex[:8]}", channel="app",
        now=dt.datetime.now(dt.UTC), policy=RetryPolicy(),
        request=parse_job_request({"kind": "image", "prompt": "a"}), queue=queue)


def test_the_index_follows_the_jobs_queue_reason(services: Any) -> None:
    """Given an arrival (no reason yet), then no index entry; once it waits, one with its
    reason, in step with each change of it (on a read's precondition or a transaction);
    once it starts, none; a job created waiting (a batch's) has one from its creation, and
    a canceled one none; the counts by reason count the index. (A project of its own on
    the emulator: the stack's worker, busy with other tests' jobs, writes none of it.)"""
    client = connect(f"demo-waiting-{uuid.uuid4().hex[:8]}",
                     services.settings.firestore_emulator_host)
    store = FirestoreJobStore(client)

    def entry(job_id: str) -> dict[str, Any] | None:
        snap = client.collection(WAITING).document(job_id).get()
        return snap.to_dict() if snap.exists else None

    def counted(reason: str) -> int:  # a fresh process's count: nothing cached
        return FirestoreCounters(client).waiting(reason)

    arrival = _new(lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=60, reason=None))
    assert store.create(arrival) and entry(arrival.id) is None
    assert counted("provider_capacity") == 0
    store.transact(arrival.id, lambda job: (lifecycle.queue_reason(job, "provider_capacity", None),
                                            None), seen=store.get(arrival.id))
    assert entry(arrival.id) == {"reason": "provider_capacity"}
    assert counted("provider_capacity") == 1
    store.transact(arrival.id, lambda job: (lifecycle.queue_reason(job, "running_limit", 2), None))
    assert entry(arrival.id) == {"reason": "running_limit"}
    assert counted("provider_capacity") == 0 and counted("running_limit") == 1
    store.transact(arrival.id, lambda job: (lifecycle.start(job, pools=["user:x"]), None))
    assert entry(arrival.id) is None

    waiting = _new(lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=60))
    assert store.create(waiting) and entry(waiting.id) == {"reason": "running_limit"}
    store.apply(waiting.id, lifecycle.cancel(store.get(waiting.id)))
    assert entry(waiting.id) is None and store.get(waiting.id).status.value == "canceled"


def test_a_waiting_job_without_an_entry_is_found_once_reindexed(services: Any) -> None:
    """Given a job that waited before the index existed (its entry missing) and an entry
    whose job started (as ``reindex_waiting`` may leave one when the start races it),
    then a pass finds neither and deletes the stale entry; ``reindex_waiting`` writes the
    missing entry once (a second call writes nothing), and the pass finds the job."""
    client = connect(f"demo-reindex-{uuid.uuid4().hex[:8]}",
                     services.settings.firestore_emulator_host)
    store = FirestoreJobStore(client)
    older = _new(lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=60))
    started = _new(lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=60))
    assert store.create(older) and store.create(started)
    client.collection(WAITING).document(older.id).delete()
    store.transact(started.id, lambda job: (lifecycle.start(job, pools=["user:x"]), None))
    client.collection(WAITING).document(started.id).set({"reason": "running_limit"})

    assert store.find(status="pending", waiting=True) == []
    assert not client.collection(WAITING).document(started.id).get().exists
    assert store.reindex_waiting(200) == 1 and store.reindex_waiting(200) == 0
    assert [job.id for job in store.find(status="pending", waiting=True)] == [older.id]


def test_the_sweeper_starts_a_waiting_job_that_had_no_entry(services: Any) -> None:
    """Given a waiting job with free places but no index entry (it waited before the
    index existed), then the stack's sweeper (a pass a second) writes its entry and its
    pass starts the job: it does not wait for its queue TTL."""
    from support import wait_for

    store = services.store
    job = _new(lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=600))
    assert store.create(job)
    store.client.collection(WAITING).document(job.id).delete()

    assert wait_for(lambda: store.get(job.id).queue_reason is None, 30, 0.1, "the job's start")
    assert store.get(job.id).server.queued is False
