"""The contracts of the ports backends use (``KeyStore``, ``BatchStore``), run against the
in-memory fakes and the Firestore adapters on the emulator."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest

from kiln.core import lifecycle
from kiln.core.batches import Batch, item_job_id
from kiln.core.errors import RetryableError
from kiln.core.job import NewJob
from kiln.core.keys import Tenant, new_key
from kiln.core.policy import RetryPolicy
from kiln.core.requests import parse_job_request
from kiln_dev.fakes import FakeClock, InMemoryJobStore
from kiln_dev.fakes_api import InMemoryBatchStore, InMemoryKeyStore


@pytest.fixture(params=["fake", "emulator"])
def backend(request: pytest.FixtureRequest) -> Any:
    return None if request.param == "fake" else request.getfixturevalue("services")


def test_keys_round_trip_and_revoke(backend: Any) -> None:
    keys = InMemoryKeyStore() if backend is None else backend.keys
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    secret, record = new_key(tenant, ["submit", "read"], now, name="n")
    keys.put_key(record)
    read = keys.get_key(record.key_id)
    assert read is not None and read.matches(secret.split("_", 2)[2])
    assert (read.tenant, read.scopes, read.revoked, read.name) == \
        (tenant, frozenset({"submit", "read"}), False, "n")
    assert [k.key_id for k in keys.list_keys(tenant)] == [record.key_id]
    assert keys.revoke_key(record.key_id, now) is True
    assert keys.get_key(record.key_id).revoked  # type: ignore[union-attr]
    assert keys.revoke_key("0123456789ab", now) is False
    assert keys.get_key("0123456789ab") is None
    assert keys.get_tenant(tenant) is None
    keys.put_tenant(Tenant(tenant, "pro", True))
    assert keys.get_tenant(tenant) == Tenant(tenant, "pro", True, {})


def _jobs(batch_id: str, statuses: list[str]) -> list[NewJob]:
    now = dt.datetime.now(dt.UTC)
    out = []
    for index, status in enumerate(statuses):
        new = lifecycle.new_job(job_id=item_job_id(batch_id, index), uid="contract",
                                channel="api", now=now, policy=RetryPolicy(),
                                request=parse_job_request({"kind": "image", "prompt": "x"}))
        # Created already ended (or held by a live lease): no worker or sweeper takes them.
        server = {**new.server, "leaseOwner": "contract",
                  "leaseExpiresAt": now + dt.timedelta(hours=1)}
        out.append(NewJob(new.id, {**new.doc, "status": status, "batchId": batch_id}, server))
    return out


def test_batches_are_written_whole_once_and_counted(backend: Any) -> None:
    batches = (InMemoryBatchStore(InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC))))
               if backend is None else backend.batches)
    batch_id = uuid.uuid4().hex[:20]
    jobs = _jobs(batch_id, ["completed", "failed", "processing", "canceled"])
    batch = Batch(batch_id, "contract", "api", tuple(j.id for j in jobs), "fp",
                  dt.datetime.now(dt.UTC), "acme")
    assert batches.create(batch, jobs) is True
    assert batches.create(batch, jobs) is False
    read = batches.get(batch_id)
    assert read is not None and (read.uid, read.job_ids, read.fingerprint, read.tenant) == \
        ("contract", batch.job_ids, "fp", "acme")
    # the creating request's own clock reading, to the microsecond: how a request whose
    # commit answered late knows the stored batch is its own (runtime.batches._ours)
    assert read.created_at == batch.created_at
    assert batches.statuses(batch_id) == {j.id: j.doc["status"] for j in jobs}
    assert batches.ended_count(batch_id) == 3
    assert batches.ended_at(batch_id) is None
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    assert batches.mark_ended(batch_id) is True
    ended_at = batches.ended_at(batch_id)
    assert batches.mark_ended(batch_id) is False
    assert ended_at is not None and before < ended_at < before + dt.timedelta(minutes=2)
    assert batches.ended_at(batch_id) == ended_at  # the first marker's time stays
    assert batch_id in [b.id for b in batches.open_batches(500)]
    batches.close(batch_id)
    assert batch_id not in [b.id for b in batches.open_batches(500)]
    assert batches.get(uuid.uuid4().hex[:20]) is None


def test_a_batch_whose_job_exists_writes_nothing(backend: Any) -> None:
    batches = (InMemoryBatchStore(InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC))))
               if backend is None else backend.batches)
    batch_id = uuid.uuid4().hex[:20]
    jobs = _jobs(batch_id, ["completed", "completed"])
    first = Batch(uuid.uuid4().hex[:20], "contract", "api", (jobs[1].id,), "fp", None)
    assert batches.create(first, [jobs[1]])
    whole = dataclasses.replace(first, id=batch_id, job_ids=tuple(j.id for j in jobs))
    assert batches.create(whole, jobs) is False
    # then neither the batch nor its other job was written
    assert batches.get(batch_id) is None
    assert batches.statuses(batch_id) == {jobs[1].id: "completed"}


def test_a_key_names_a_job_or_a_batch_never_both(backend: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a batch and a job, when a job whose key names that batch is created (alone
    with quota tickets, and among concurrent creates that share commits) and a batch
    whose key names that job, then each is refused (False) with nothing written, tickets
    included, and the others' creates are not held up by it."""
    import threading

    from kiln.core.job import Tickets
    from kiln_dev.fakes_queue import InMemoryCounters

    if backend is None:
        jobs_store = InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC)))
        batches, counters = InMemoryBatchStore(jobs_store), InMemoryCounters(jobs_store)
    else:
        jobs_store, batches, counters = backend.store, backend.batches, backend.counters
    made = Batch(uuid.uuid4().hex[:20], "contract", "api", (), "fp", dt.datetime.now(dt.UTC))
    assert batches.create(made, [])
    single = _jobs(uuid.uuid4().hex[:20], ["completed"])[0]
    assert jobs_store.create(single)

    key = f"quota:contract:{uuid.uuid4().hex}"
    keyed = dataclasses.replace(_jobs(uuid.uuid4().hex[:20], ["completed"])[0],
                                key_batch=made.id, tickets=Tickets(key, (1,)))
    assert jobs_store.create(keyed) is False
    assert jobs_store.get(keyed.id) is None and counters.used(key) == 0

    others = [_jobs(uuid.uuid4().hex[:20], ["completed"])[0] for _ in range(7)]
    together = [*others, dataclasses.replace(keyed, tickets=None)]
    start, results = threading.Barrier(len(together)), [None] * len(together)

    def create(index: int) -> None:
        start.wait()
        results[index] = jobs_store.create(together[index])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(together))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [True] * 7 + [False]
    assert jobs_store.get(keyed.id) is None and all(jobs_store.get(j.id) for j in others)

    batch_id = uuid.uuid4().hex[:20]
    refused = _jobs(batch_id, ["completed"])
    assert batches.create(Batch(batch_id, "contract", "api", (refused[0].id,), "fp", None),
                          refused, key_job=single.id) is False
    assert batches.get(batch_id) is None and jobs_store.get(refused[0].id) is None
    assert batches.create(Batch(batch_id, "contract", "api", (refused[0].id,), "fp", None),
                          refused, key_job=keyed.id) is True
    if backend is not None:  # the service may refuse a failed "must not exist" either way
        from google.api_core import exceptions as gexc

        def precondition(*_: Any) -> None:
            raise gexc.FailedPrecondition("precondition failed")

        monkeypatch.setattr(jobs_store, "grouped", precondition)
        assert jobs_store.create(dataclasses.replace(keyed, tickets=None)) is False
        fresh = _jobs(uuid.uuid4().hex[:20], ["completed"])[0]
        for job in (fresh, dataclasses.replace(fresh, key_batch=uuid.uuid4().hex[:20])):
            with pytest.raises(RetryableError):  # neither exists: not the caller's fault
                jobs_store.create(job)
