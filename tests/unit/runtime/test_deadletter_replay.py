"""``kiln dlq replay`` past one pull's worth of letters (the subscription's own behaviour
on the emulator: tests/e2e/test_reliability.py)."""

from __future__ import annotations

import pytest
from rig import build_rig

from kiln.ops import deadletter
from kiln.ops.deadletter import DeadLetter


class Letters:
    """Dead letters as a subscription leases them: a pull leases up to ``limit`` of those
    neither acked nor leased (a released one can be pulled again at once)."""

    def __init__(self, count: int, unreadable: int = 0) -> None:
        self.waiting = [DeadLetter(f"m{n:03d}", f"a{n:03d}", None if n < unreadable else
                                   f"job-{n:06d}", {}, "", 10) for n in range(count)]
        self.acked: list[str] = []

    def pull_all(self, limit: int = 1000) -> list[DeadLetter]:
        leased, self.waiting = self.waiting[:limit], self.waiting[limit:]
        return leased

    def ack(self, letters: list[DeadLetter]) -> None:
        self.acked += [x.message_id for x in letters]

    def release(self, letters: list[DeadLetter]) -> None:
        self.waiting = [*letters, *self.waiting]


def test_replay_all_goes_past_one_pull_and_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given 25 letters, 3 unreadable, and pulls of 10, then --all replays the 22 jobs
    over several pulls and ends (the unreadable ones, given back, are not pulled for
    ever); one letter past the first pull is found by its id."""
    monkeypatch.setattr(deadletter, "PULL_LIMIT", 10)
    rig = build_rig()
    letters = Letters(25, unreadable=3)
    out = deadletter.replay(rig.services, letters)  # type: ignore[arg-type]
    assert len(out["replayed"]) == 22 and sorted(out["unreadable"]) == ["m000", "m001", "m002"]
    assert len(letters.acked) == 22 and len(letters.waiting) == 3
    more = Letters(25)
    assert deadletter.replay(rig.services, more, message_id="m023")[  # type: ignore[arg-type]
        "replayed"] == ["m023"]
    assert more.acked == ["m023"] and len(more.waiting) == 24
    assert deadletter.replay(rig.services, Letters(5), message_id="nope")[  # type: ignore[arg-type]
        "missing"] == ["nope"]
