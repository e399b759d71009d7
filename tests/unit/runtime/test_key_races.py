"""Requests with the same Idempotency-Key racing each other at the quota's edge (cases a
probe on the real emulators found): the loser of the race read "no job yet", then found
today's quota taken by the winner's job. It is the winner's replay (or a 422 for another
body), never a 429 for a job that was accepted; and a losing same-key batch of another
size gives back the places of jobs that do not exist."""

from __future__ import annotations

from typing import Any

import pytest
from rig import Rig, api_call, build_rig

from kiln.core.job import new_job_id

ALICE = "Bearer uid:alice"


def call(rig: Rig, path: str, body: Any, key: str | None = None) -> tuple[int, Any, Any]:
    return api_call(rig, ALICE, "POST", path, body, key=key)


def stale_first_read(monkeypatch: pytest.MonkeyPatch, store: Any, name: str, key: str) -> None:
    """The store's first read of ``key`` answers None, as a read made just before the
    racing winner's commit would."""
    real, seen = getattr(store, name), list[str]()

    def read(wanted: str) -> Any:
        if wanted == key and not seen:
            seen.append(wanted)
            return None
        return real(wanted)

    monkeypatch.setattr(store, name, read)


@pytest.fixture
def rig() -> Rig:
    return build_rig(plans="free:daily=2,running=10", provider_capacity="50")


@pytest.mark.parametrize(("prompt", "answer"), [("a fox", 202), ("a wolf", 422)])
def test_a_same_key_request_that_lost_the_race_at_the_quotas_edge_is_its_replay(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, prompt: str, answer: int) -> None:
    assert call(rig, "/v1/jobs", {"kind": "image", "prompt": "first"})[0] == 202
    status, first, _ = call(rig, "/v1/jobs", {"kind": "image", "prompt": "a fox"}, key="k-1")
    assert status == 202  # the last of today's two
    stale_first_read(monkeypatch, rig.services.store, "get", new_job_id("alice", "k-1"))
    status, again, headers = call(rig, "/v1/jobs", {"kind": "image", "prompt": prompt}, key="k-1")
    assert status == answer, again
    if answer == 202:
        assert again["jobId"] == first["jobId"] and headers["Idempotent-Replayed"] == "true"
    else:
        assert again["error"]["code"] == "idempotency_key_reused"
    assert call(rig, "/v1/jobs", {"kind": "image", "prompt": "third"})[0] == 429


def test_a_same_key_batch_that_lost_the_race_at_the_quotas_edge_is_its_replay(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    items = {"items": [{"kind": "image", "prompt": "tile 0"}, {"kind": "image", "prompt": "tile 1"}]}
    status, first, _ = call(rig, "/v1/batches", items, key="b-1")
    assert status == 202
    stale_first_read(monkeypatch, rig.services.batches, "get", first["batchId"])
    status, again, headers = call(rig, "/v1/batches", items, key="b-1")
    assert (status, again["jobIds"], headers["Idempotent-Replayed"]) == (
        202, first["jobIds"], "true")


def test_a_losing_same_key_batch_of_another_size_gives_back_the_places_of_its_extra_jobs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1-item batch won; the 4-item one with the same key took places for four job ids
    before its commit was refused: the places of the three the stored batch lacks are
    freed at once (they held the user's running limit for a minute)."""
    rig = build_rig(plans="free:daily=100,running=10", provider_capacity="50")
    status, first, _ = call(rig, "/v1/batches", {"items": [{"kind": "image", "prompt": "x"}]},
                            key="b-2")
    assert status == 202
    stale_first_read(monkeypatch, rig.services.batches, "get", first["batchId"])
    four = {"items": [{"kind": "image", "prompt": f"y {i}"} for i in range(4)]}
    status, refused, _ = call(rig, "/v1/batches", four, key="b-2")
    assert (status, refused["error"]["code"]) == (422, "idempotency_key_reused")
    held = {holder for pool in rig.slots.places for holder in rig.slots.holders(pool)}
    assert held == set(first["jobIds"])
