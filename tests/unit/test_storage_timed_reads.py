"""Storage reads under a deadline (``kiln.adapters.storage._in_time``): each runs on a
thread of its own and is abandoned at its deadline; how many may hang at once is bounded."""

from __future__ import annotations

import threading
import time

import pytest

from kiln.adapters import storage
from kiln.core.errors import RetryableError
from kiln.paced import ending_by
from support import wait_for


def test_a_read_past_its_deadline_is_abandoned_and_too_many_hanging_fail_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given Storage that never answers, then each read gives up at its call's deadline
    (``storage_timeout``); once MAX_TIMED_READS of them still hang, the next fails at once
    (``storage_unavailable``) without a thread of its own; when they end, reads run again."""
    monkeypatch.setattr(storage, "MAX_TIMED_READS", 4)  # (32 in production)
    monkeypatch.setattr(storage, "_READERS", threading.BoundedSemaphore(4))
    stalled = threading.Event()
    calls: list[int] = []

    def hangs(_timeout: float, _retry: object) -> bytes:
        calls.append(1)
        stalled.wait(30)
        return b"late"

    try:
        for _ in range(storage.MAX_TIMED_READS):
            with ending_by(time.monotonic() + 0.1), pytest.raises(RetryableError) as info:
                storage._in_time(hangs, None)
            assert info.value.code == "storage_timeout"
        started = time.monotonic()
        with ending_by(started + 5), pytest.raises(RetryableError) as info:
            storage._in_time(hangs, None)
        assert info.value.code == "storage_unavailable" and time.monotonic() - started < 1
        assert len(calls) == storage.MAX_TIMED_READS  # the refused one never started
    finally:
        stalled.set()
    def reads_again() -> bool:
        try:
            with ending_by(time.monotonic() + 5):
                return storage._in_time(lambda _t, _r: b"ok", None) == b"ok"
        except RetryableError:
            return False

    # the abandoned reads end, and give their places back
    wait_for(reads_again, timeout=10, interval=0.01, what="the abandoned reads to end")


def test_a_deadline_inside_another_never_outlasts_it() -> None:
    """``ending_by`` inside a block with an earlier deadline keeps the earlier one (a
    provider call's 30 s inside a 5 s bound must not grant 30 s); a later outer one yields
    to the inner."""
    from kiln.paced import time_left

    now = time.monotonic()
    with ending_by(now + 5):
        with ending_by(now + 30):
            assert time_left() <= 5
        with ending_by(now + 1):
            assert time_left() <= 1
        assert 1 < time_left() <= 5
