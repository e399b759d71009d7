"""The fair queue's ports (``Counters``, ``Slots``) on the fake and on the Firestore
emulator: the same contract, so the fake the unit tests and the bench use cannot drift."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from kiln_dev.fakes import InMemoryCounters, InMemorySlots


@pytest.fixture(params=["fake", "emulator"])
def ports(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    if request.param == "fake":
        return InMemoryCounters(), InMemorySlots()
    services = request.getfixturevalue("services")
    return services.counters, services.slots


def test_a_counter_adds_across_its_shards(ports: tuple[Any, Any]) -> None:
    counters, _slots = ports
    key = f"quota:user/{uuid.uuid4().hex}:2026-01-01"  # any characters in a key
    assert counters.total(key) == 0
    for amount in (1, 1, 3, 1):
        counters.add(key, amount)
    assert counters.total(key) == 6
    assert counters.waiting() >= 0


def test_places_are_taken_up_to_capacity_given_back_and_reclaimed(ports: tuple[Any, Any]) -> None:
    _counters, slots = ports
    pool = f"user:{uuid.uuid4().hex}"
    assert slots.take(pool, 2, "j1") and slots.take(pool, 2, "j2")
    assert slots.take(pool, 2, "j1")  # held already: still True, nothing more taken
    assert not slots.take(pool, 2, "j3")
    assert sorted(slots.holders(pool)) == ["j1", "j2"]
    slots.release(pool, "j1")
    assert slots.take(pool, 2, "j3") and not slots.take(pool, 2, "j4")
    assert slots.take(pool, 2, "j4", done=lambda job: job == "j2")  # j2 ended: reclaimed
    assert sorted(slots.holders(pool)) == ["j3", "j4"]


def test_a_narrowed_window_limits_takes_until_it_lapses(ports: tuple[Any, Any]) -> None:
    _counters, slots = ports
    pool = f"provider:{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.UTC)
    slots.narrow(pool, 1, now + dt.timedelta(seconds=60))
    assert slots.window(pool, 4, now) == 1
    assert slots.window(pool, 4, now + dt.timedelta(seconds=61)) == 4
    assert slots.take(pool, 4, "a", limit=1) and not slots.take(pool, 4, "b", limit=1)
