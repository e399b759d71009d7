"""The fair queue's ports (``Counters``, ``Slots``) on the fake and on the Firestore
emulator: the same contract, so the fake the unit tests and the bench use cannot drift."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from kiln.adapters.firestore_queue import FirestoreCounters
from kiln_dev.fakes import InMemoryCounters, InMemorySlots
from support import wait_for


@pytest.fixture(params=["fake", "emulator"])
def ports(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    if request.param == "fake":
        return InMemoryCounters(), InMemorySlots()
    services = request.getfixturevalue("services")
    return services.counters, services.slots


def test_quota_tickets_are_exact_and_given_back(ports: tuple[Any, Any]) -> None:
    counters, _slots = ports
    key = f"quota:user/{uuid.uuid4().hex}:2026-01-01"  # any characters in a key
    assert counters.used(key) == 0
    assert counters.take(key, 1, 3) == [1]
    assert counters.take(key, 3, 3) is None  # only 2 left: nothing taken
    assert counters.take(key, 2, 3) == [2, 3]
    assert counters.take(key, 1, 3) is None and counters.used(key) == 3
    counters.give_back(key, [3])
    assert counters.take(key, 1, 3) == [3]
    assert counters.waiting() >= 0


def test_a_count_not_read_yet_is_answered_at_once_then_read(ports: tuple[Any, Any]) -> None:
    """``unknown``: a process with no count answers it (or the count) without waiting,
    and has the count soon after."""
    counters, _slots = ports
    fresh = counters if isinstance(counters, InMemoryCounters) \
        else FirestoreCounters(counters.client)
    assert fresh.waiting(unknown=-1) >= -1
    assert wait_for(lambda: fresh.waiting(unknown=-1) >= 0, 30, 0.02, "the waiting count")
    assert fresh.waiting(unknown=-1) == fresh.waiting()


def test_concurrent_takes_never_exceed_the_limit(ports: tuple[Any, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    counters, _slots = ports
    key = f"quota:{uuid.uuid4().hex}"
    with ThreadPoolExecutor(6) as pool:
        taken = list(pool.map(lambda _n: counters.take(key, 1, 4), range(6)))
    got = [t for t in taken if t is not None]
    assert len(got) == 4 and sorted(n for t in got for n in t) == [1, 2, 3, 4]


def test_concurrent_takes_of_one_key_all_succeed_with_distinct_numbers(
        ports: tuple[Any, Any]) -> None:
    """Sixteen threads of one process taking one user's tickets at once (one client's 16
    concurrent requests) all get one, none twice, and nobody is told the quota is busy."""
    from concurrent.futures import ThreadPoolExecutor

    counters, _slots = ports
    key = f"quota:{uuid.uuid4().hex}"
    for _round in range(2):  # before and after the process knows the key
        with ThreadPoolExecutor(16) as pool:
            taken = list(pool.map(lambda _n: counters.take(key, 1, 1000), range(16)))
        assert all(t is not None for t in taken)
    assert counters.used(key) == 32


def test_one_keys_takes_from_many_processes_at_once_all_succeed(
        ports: tuple[Any, Any]) -> None:
    """Ten processes (instances) each taking three of one key's tickets at once, some two
    at a time, as one user's burst spread over instances: every take succeeds with numbers
    of its own. Losers of a round all counted the same tickets and started there again,
    so some gave up "the quota is busy" (503)."""
    from concurrent.futures import ThreadPoolExecutor

    counters, _slots = ports
    fake = isinstance(counters, InMemoryCounters)
    instances = [counters if fake else FirestoreCounters(counters.client) for _ in range(10)]
    key = f"quota:{uuid.uuid4().hex}"
    asks = [(instance, 1 + n % 2) for instance in instances for n in range(3)]
    with ThreadPoolExecutor(len(asks)) as pool:
        taken = list(pool.map(lambda ask: ask[0].take(key, ask[1], 100_000), asks))
    numbers = [n for t in taken for n in t or []]
    assert all(t is not None for t in taken)
    assert len(numbers) == len(set(numbers)) == sum(count for _i, count in asks)
    assert counters.used(key) == len(numbers)


def test_a_ticket_given_back_below_the_last_is_found_at_the_limit(
        ports: tuple[Any, Any]) -> None:
    counters, _slots = ports
    key = f"quota:{uuid.uuid4().hex}"
    assert counters.take(key, 4, 4) == [1, 2, 3, 4]
    counters.give_back(key, [2])
    assert counters.take(key, 1, 4) == [2]
    assert counters.take(key, 1, 4) is None


def test_a_reservation_writes_nothing(ports: tuple[Any, Any]) -> None:
    counters, _slots = ports
    key = f"quota:{uuid.uuid4().hex}"
    numbers = counters.reserve(key, 2, 3)
    assert numbers is not None and len(set(numbers)) == 2 and set(numbers) <= {1, 2, 3}
    assert counters.used(key) == 0
    assert counters.take(key, 3, 3) == [1, 2, 3] and counters.reserve(key, 1, 3) is None


def test_places_are_taken_up_to_capacity_given_back_and_reclaimed(ports: tuple[Any, Any]) -> None:
    _counters, slots = ports
    pool = f"user:{uuid.uuid4().hex}"
    assert slots.take(pool, 2, "j1") and slots.take(pool, 2, "j2")
    assert slots.take(pool, 2, "j1")  # held already: still True, nothing more taken
    assert not slots.take(pool, 2, "j3")
    assert sorted(slots.holders(pool)) == ["j1", "j2"]
    slots.release(pool, "j1")
    assert slots.take(pool, 2, "j3") and not slots.take(pool, 2, "j4")
    assert slots.take(pool, 2, "j4", done=lambda job, _held_for: job == "j2")  # j2 ended
    assert sorted(slots.holders(pool)) == ["j3", "j4"]


def test_done_is_told_how_long_each_place_has_been_held(ports: tuple[Any, Any]) -> None:
    """A pass tells a holder that left its place behind from one starting right now by
    the place's age: the store must report it (here: just taken, so seconds at most)."""
    _counters, slots = ports
    pool = f"provider:{uuid.uuid4().hex}"
    assert slots.take(pool, 1, "a")
    seen: dict[str, float] = {}

    def done(job: str, held_for: float) -> bool:
        seen[job] = held_for
        return held_for >= 60

    assert not slots.take(pool, 1, "b", done=done)  # young: not free, whatever its holder
    assert list(seen) == ["a"] and 0 <= seen["a"] < 10
    assert slots.holders(pool) == ["a"]


def test_a_narrowed_window_limits_takes_until_it_lapses(ports: tuple[Any, Any]) -> None:
    _counters, slots = ports
    pool = f"provider:{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.UTC)
    slots.narrow(pool, 1, now + dt.timedelta(seconds=60))
    assert slots.window(pool, 4, now) == 1
    assert slots.window(pool, 4, now + dt.timedelta(seconds=61)) == 4
    assert slots.take(pool, 4, "a", limit=1) and not slots.take(pool, 4, "b", limit=1)


def test_find_waiting_returns_only_jobs_in_the_fair_queue(request: pytest.FixtureRequest,
                                                          ports: tuple[Any, Any]) -> None:
    """Given a waiting job and a started one, then ``find(waiting=True)`` returns only the
    waiting one (the queue's pass reads nothing else)."""
    from kiln.core import lifecycle
    from kiln.core.policy import RetryPolicy
    from kiln.core.requests import parse_job_request
    from kiln_dev.fakes import FakeClock, InMemoryJobStore

    counters, _slots = ports
    if isinstance(counters, InMemoryCounters):
        store: Any = InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC)))
    else:
        store = request.getfixturevalue("services").store
    uid = f"contract-{uuid.uuid4().hex[:8]}"
    ids = []
    for pools in ((), ("user:x",)):
        new = lifecycle.new_job(
            job_id=uuid.uuid4().hex[:20], uid=uid, channel="app", now=dt.datetime.now(dt.UTC),
            policy=RetryPolicy(), request=parse_job_request({"kind": "image", "prompt": "a"}),
            queue=lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=60, pools=pools))
        assert store.create(new)
        ids.append(new.id)
    found = {job.id for job in store.find(status="pending", uid=uid, waiting=True)}
    assert found == {ids[0]}


def test_a_pass_finds_a_job_exactly_while_it_waits(request: pytest.FixtureRequest,
                                                   ports: tuple[Any, Any]) -> None:
    """Given jobs entering and leaving the fair queue, then a pass (``find(waiting=True)``
    with no owner: the Firestore store reads its ``waitingJobs`` index, not every job)
    finds each exactly while it waits: created waiting, waiting for another reason, not
    once started or canceled."""
    from kiln.core import lifecycle
    from kiln.core.policy import RetryPolicy
    from kiln.core.requests import parse_job_request
    from kiln_dev.fakes import FakeClock, InMemoryJobStore

    counters, _slots = ports
    if isinstance(counters, InMemoryCounters):
        store: Any = InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC)))
    else:  # a project of its own: no sweeper's pass starts these jobs meanwhile
        from kiln.adapters.firestore import FirestoreJobStore, connect
        host = request.getfixturevalue("services").settings.firestore_emulator_host
        store = FirestoreJobStore(connect(f"demo-pass-{uuid.uuid4().hex[:8]}", host))

    def waiting() -> set[str]:
        return {job.id for job in store.find(status="pending", waiting=True, limit=5000)}

    def change(job_id: str, decide: Any) -> None:
        store.transact(job_id, lambda job: (decide(job), None))

    ids = []
    for _ in range(2):
        new = lifecycle.new_job(
            job_id=uuid.uuid4().hex[:20], uid=f"contract-{uuid.uuid4().hex[:8]}", channel="app",
            now=dt.datetime.now(dt.UTC), policy=RetryPolicy(),
            request=parse_job_request({"kind": "image", "prompt": "a"}),
            queue=lifecycle.QueueEntry(plan="free", priority=0, ttl_seconds=60))
        assert store.create(new)
        ids.append(new.id)
    started, canceled = ids
    assert {started, canceled} <= waiting()
    change(started, lambda job: lifecycle.queue_reason(job, "provider_capacity", 3))
    assert store.get(started).queue_reason == "provider_capacity" and started in waiting()
    change(started, lambda job: lifecycle.start(job, pools=["user:x"]))
    change(canceled, lifecycle.cancel)
    found = waiting()
    assert started not in found and canceled not in found
    assert store.get(started).status.value == "pending"  # started, not ended: no longer waits
