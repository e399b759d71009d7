"""The ingress's Firestore creates share commits (``FirestoreJobStore.create`` through
``kiln.adapters.group.GroupedCreates``) on the real emulator: creates that arrive while a commit is on
the wire go out together in the next one, and when that commit is refused for one of its
jobs (a replay, a quota ticket taken first, a job twice) each job is created alone and
gets its own answer, with nothing half-written. The contract every store keeps under
concurrency: tests/contract/test_port_contracts.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kiln.adapters import wire
from kiln.adapters.firestore import FirestoreJobStore
from kiln.adapters.group import GroupedCreates
from kiln.core import lifecycle
from kiln.core.errors import TicketTakenError
from kiln.core.job import NewJob, Tickets
from kiln.core.policy import RetryPolicy
from kiln.core.requests import parse_job_request
from support import wait_for

WAIT = 30.0


class HeldCreates:
    """The store's real ``wire.Creates``, recording each commit's paths; the first commit
    waits on the wire until ``release`` is set."""

    def __init__(self, creates: wire.Creates) -> None:
        self.creates, self.timeout = creates, creates.timeout
        self.commits: list[list[str]] = []
        self.on_wire, self.release = threading.Event(), threading.Event()

    def encode(self, documents: Sequence[tuple[str, Mapping[str, Any]]],
               absent: Sequence[str] = ()) -> Any:
        return self.creates.encode(documents, absent)

    def send(self, encoded: Sequence[Any], *, timeout: float | None = None) -> None:
        self.commits.append([wire.written(change).split("/documents/", 1)[1]
                             for each in encoded for change in each.writes])
        if len(self.commits) == 1:
            self.on_wire.set()
            assert self.release.wait(WAIT)
        self.creates.send(encoded, timeout=timeout)


@pytest.fixture
def held(services: Any) -> tuple[FirestoreJobStore, HeldCreates]:
    """A store of its own (its own group) whose commits are held and recorded."""
    store = FirestoreJobStore(services.firestore)
    creates = HeldCreates(store.creates)
    # No patience: the groups wait for the held commit however slow the machine is.
    store.__dict__["grouped"] = GroupedCreates(creates, patience=None)  # type: ignore[arg-type]
    return store, creates


def job(job_id: str | None = None, *, tickets: Tickets | None = None) -> NewJob:
    new = lifecycle.new_job(job_id=job_id or uuid.uuid4().hex[:20], uid="grouped",
                            channel="app", now=dt.datetime.now(dt.UTC), policy=RetryPolicy(),
                            request=parse_job_request({"kind": "image", "prompt": "a cube"}))
    return dataclasses.replace(new, tickets=tickets) if tickets else new


def behind_a_held_commit(store: FirestoreJobStore, creates: HeldCreates, first: NewJob,
                         rest: Sequence[NewJob]) -> dict[int, Any]:
    """Create ``first`` (held on the wire), then each of ``rest`` on a thread of its own
    once the one before it is queued; release; each one's answer or error, by position."""
    results: dict[int, Any] = {}

    def one(index: int, new: NewJob) -> None:
        try:
            results[index] = store.create(new)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=one, args=(0, first))]
    threads[0].start()
    assert creates.on_wire.wait(WAIT)
    for index, new in enumerate(rest, start=1):
        threads.append(threading.Thread(target=one, args=(index, new)))
        threads[-1].start()
        wait_for(lambda index=index: store.grouped.queued == index,  # type: ignore[misc]
                 interval=0.005, what=f"{index} creates queued")
    creates.release.set()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    return results


def paths(new: NewJob) -> list[str]:
    return [f"jobs/{new.id}", f"jobs/{new.id}/private/server"]


def test_creates_made_during_a_commit_share_the_next_one(
        held: tuple[FirestoreJobStore, HeldCreates]) -> None:
    """Given a create on the wire, when five more arrive, then they go out together in one
    commit of their ten documents, each is told it created its job, and every job reads
    back whole."""
    store, creates = held
    jobs = [job() for _ in range(6)]

    results = behind_a_held_commit(store, creates, jobs[0], jobs[1:])

    assert results == dict.fromkeys(range(6), True)
    assert creates.commits[0] == paths(jobs[0])
    assert sorted(creates.commits[1]) == sorted(p for new in jobs[1:] for p in paths(new))
    assert len(creates.commits) == 2
    for new in jobs:
        read = store.get(new.id)
        assert read is not None and read.uid == "grouped" and read.server.fingerprint


def test_a_commit_refused_for_one_job_goes_on_without_it(
        held: tuple[FirestoreJobStore, HeldCreates], services: Any) -> None:
    """Given a create on the wire, when a replay of an existing job, a job whose quota
    ticket another request holds and two new jobs arrive, then their shared commit is
    refused (nothing of it written) for the document the error names, that job is
    created alone and the rest are sent together again: the replay first, then the
    ticket's job. The two new jobs are created in one commit, the replay is False and
    leaves its job as it was, and the ticket's job raises TicketTakenError and exists
    nowhere."""
    store, creates = held
    key = f"quota:grouped:{uuid.uuid4().hex}"
    existing = job()
    assert services.store.create(existing)
    assert services.store.create(job(tickets=Tickets(key, (1,))))
    before = store.get(existing.id)
    taken, plain, other = job(tickets=Tickets(key, (1,))), job(), job()

    results = behind_a_held_commit(store, creates, job(), [existing, taken, plain, other])

    assert results[0] is True and results[3] is True and results[4] is True
    assert results[1] is False and store.get(existing.id) == before
    assert isinstance(results[2], TicketTakenError) and store.get(taken.id) is None
    assert store.get(plain.id) is not None and store.get(other.id) is not None
    # the first; the four (9 documents with the ticket), refused for the replay's; the
    # three (7), refused for the ticket; the two new ones (4), written; then each alone
    assert [len(commit) for commit in creates.commits[:4]] == [2, 9, 7, 4]
    assert sorted(creates.commits[3]) == sorted(paths(plain) + paths(other))
    assert len(creates.commits) == 6
    alone = [set(commit) for commit in creates.commits[4:]]
    for new in (existing, taken):
        assert sum(set(paths(new)) <= commit for commit in alone) == 1


def test_the_same_job_twice_in_a_group_is_created_once(
        held: tuple[FirestoreJobStore, HeldCreates]) -> None:
    """Given a create on the wire, when the same new job arrives twice beside another,
    then no commit holds a document twice: each is created alone, the doubled job once
    (True, then False) and the other as usual."""
    store, creates = held
    twice, plain = job(), job()

    results = behind_a_held_commit(store, creates, job(), [twice, twice, plain])

    assert results[0] is True and results[3] is True
    assert sorted([results[1], results[2]]) == [False, True]
    assert store.get(twice.id) is not None and store.get(plain.id) is not None
    assert all(len(set(commit)) == len(commit) for commit in creates.commits)
    assert len(creates.commits) == 4  # the first, then each of the three alone
