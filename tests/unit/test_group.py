"""Group (``kiln.adapters.group``) without a network, as the ingress's publishes use it: a
lone publish goes at once, publishes that arrive while a call is on the wire share the
next call, each caller gets its own id or the call's error, and nobody is held past the
timeout (a fake clock). The Firestore creates that use it: tests/integration/test_group_creates.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from kiln.adapters import wire
from kiln.adapters.group import Group

WAIT = 10.0  # seconds a test waits for a thread before it fails


class Wire:
    """A stand-in for the Publish call: records each call's messages and timeout; a call
    waits for ``release`` while ``hold`` is set; ``fail`` makes the next calls raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[bytes], float | None]] = []
        self.on_wire = threading.Event()
        self.hold = threading.Event()
        self.release = threading.Event()
        self.fail: list[BaseException | None] = []
        self.answer: Callable[[int], list[str]] | None = None
        self.during: Callable[[], None] = lambda: None

    def __call__(self, messages: Sequence[tuple[bytes, Mapping[str, str]]], *,
                 timeout: float | None = None) -> list[str]:
        number = len(self.calls)
        self.calls.append(([data for data, _ in messages], timeout))
        self.on_wire.set()
        self.during()
        if self.hold.is_set():
            assert self.release.wait(WAIT)
        error = self.fail.pop(0) if self.fail else None
        if error is not None:
            raise error
        if self.answer is not None:
            return self.answer(len(messages))
        return [f"{number}:{data.decode()}" for data, _ in messages]


GroupPublish = Group[tuple[bytes, Mapping[str, str]], str]


def group_publish(wire: Wire, *, timeout: float, max_messages: int = 100,
                  clock: Callable[[], float] = time.monotonic,
                  patience: float | None = None) -> GroupPublish:
    """A Group as ``kiln.adapters.pubsub`` makes one (a message counts one), waiting its
    whole time for its turn unless given ``patience``."""
    return Group(wire, timeout=timeout, max_size=max_messages, clock=clock,
                 patience=patience)


class Publishers:
    """Publishes each name on a thread of its own."""

    def __init__(self, group: GroupPublish, names: Sequence[str]) -> None:
        self.results: dict[str, Any] = {}
        self.threads = [threading.Thread(target=self._one, args=(group, name))
                        for name in names]
        for thread in self.threads:
            thread.start()

    def _one(self, group: GroupPublish, name: str) -> None:
        try:
            self.results[name] = group((name.encode(), {"jobId": name}))
        except BaseException as exc:
            self.results[name] = exc

    def joined(self) -> dict[str, Any]:
        """Name → message id or exception, once every thread has ended."""
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        return self.results


def wait_until(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.005)):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError("condition not reached")


def queued_behind(one: Callable[[str], None], first: str, rest: Sequence[str], *,
                  on_wire: Callable[[], bool], queued: Callable[[], int]
                  ) -> list[threading.Thread]:
    """``one(first)`` on a thread until its call is on the wire, then ``one(item)`` for
    each of ``rest`` on a thread of its own, each once the one before it is queued."""
    threads = [threading.Thread(target=one, args=(first,))]
    threads[0].start()
    wait_until(on_wire)
    for count, item in enumerate(rest, start=1):
        threads.append(threading.Thread(target=one, args=(item,)))
        threads[-1].start()
        wait_until(lambda count=count: queued() == count)  # type: ignore[misc]
    return threads


def joined(threads: Sequence[threading.Thread]) -> None:
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()


def test_a_lone_publish_is_sent_at_once_alone() -> None:
    """Given no call on the wire, a publish is one call with its one message and the
    call's own timeout, made on the caller's thread."""
    wire = Wire()
    callers: list[threading.Thread] = []
    wire.during = lambda: callers.append(threading.current_thread())
    group = group_publish(wire, timeout=3.0)

    assert group((b"a", {})) == "0:a"
    assert group((b"b", {})) == "1:b"
    assert wire.calls == [([b"a"], None), ([b"b"], None)]
    assert callers == [threading.current_thread()] * 2
    assert group.queued == 0


def test_publishes_made_during_a_call_share_the_next_one() -> None:
    """Given a call on the wire, when three more publishes arrive, then they wait, go out
    together in one call when the first returns, and each gets its own message id."""
    wire = Wire()
    wire.hold.set()
    group = group_publish(wire, timeout=3.0)
    first = Publishers(group, ["a"])
    assert wire.on_wire.wait(WAIT)
    rest = Publishers(group, ["b", "c", "d"])
    wait_until(lambda: group.queued == 3)
    assert len(wire.calls) == 1

    wire.release.set()

    assert first.joined() == {"a": "0:a"}
    assert rest.joined() == {"b": "1:b", "c": "1:c", "d": "1:d"}
    assert [sorted(messages) for messages, _ in wire.calls] == [[b"a"], [b"b", b"c", b"d"]]
    assert group.queued == 0


def test_a_batch_holds_at_most_max_messages() -> None:
    """Given max_messages 2 and a call on the wire, five publishes go out as 2, 2 and 1,
    in the order they arrived."""
    wire = Wire()
    wire.hold.set()
    group = group_publish(wire, timeout=3.0, max_messages=2)
    first = Publishers(group, ["a"])
    assert wire.on_wire.wait(WAIT)
    rest = []
    for count, name in enumerate("bcdef", start=1):
        rest.append(Publishers(group, [name]))
        wait_until(lambda count=count: group.queued == count)  # type: ignore[misc]

    wire.release.set()

    first.joined()
    results = {name: id_ for each in rest for name, id_ in each.joined().items()}
    assert [messages for messages, _ in wire.calls] == [[b"a"], [b"b", b"c"], [b"d", b"e"],
                                                        [b"f"]]
    assert results == {"b": "1:b", "c": "1:c", "d": "2:d", "e": "2:e", "f": "3:f"}


def test_a_failed_call_fails_each_of_its_callers_and_the_next_batch_still_goes() -> None:
    """Given a call on the wire and two publishes waiting behind it, when the waiting
    batch's call fails, then both of its callers get that error, the first call's caller
    its id, and a later publish is sent as usual."""
    wire = Wire()
    wire.hold.set()
    refused = gexc.ServiceUnavailable("emulator gone")
    wire.fail = [None, refused]
    group = group_publish(wire, timeout=3.0)
    first = Publishers(group, ["a"])
    assert wire.on_wire.wait(WAIT)
    rest = Publishers(group, ["b", "c"])
    wait_until(lambda: group.queued == 2)

    wire.release.set()

    assert first.joined() == {"a": "0:a"}
    assert rest.joined() == {"b": refused, "c": refused}
    assert group((b"d", {})) == "2:d"


def test_a_call_that_answers_too_few_ids_fails_its_callers() -> None:
    """An answer whose ids do not match the messages one to one is an error, never a
    wrong id handed to a caller."""
    wire = Wire()
    wire.answer = lambda count: ["only"] * (count - 1)
    group = group_publish(wire, timeout=3.0)

    with pytest.raises(gexc.InternalServerError):
        group((b"a", {}))


def test_nobody_waits_past_the_timeout() -> None:
    """Given a fake clock and a call on the wire, a batch that waited behind it is sent
    with its earliest caller's remaining time, and one whose time ran out fails with
    DeadlineExceeded without a call."""
    now = [100.0]
    wire = Wire()
    wire.hold.set()
    group = group_publish(wire, timeout=3.0, clock=lambda: now[0])
    first = Publishers(group, ["a"])
    assert wire.on_wire.wait(WAIT)
    rest = Publishers(group, ["b"])
    wait_until(lambda: group.queued == 1)
    now[0] += 1.0
    later = Publishers(group, ["c"])
    wait_until(lambda: group.queued == 2)
    now[0] += 1.5  # "b" has 0.5 s left, "c" 1.5 s

    wire.release.set()
    first.joined()
    rest.joined()
    later.joined()

    assert wire.calls[1] == ([b"b", b"c"], pytest.approx(0.5))

    wire.release.clear()
    wire.on_wire.clear()
    again = Publishers(group, ["d"])
    assert wire.on_wire.wait(WAIT)
    late = Publishers(group, ["e"])
    wait_until(lambda: group.queued == 1)
    now[0] += 3.0
    wire.release.set()

    assert again.joined()["d"] == "2:d"
    assert isinstance(late.joined()["e"], gexc.DeadlineExceeded)
    assert len(wire.calls) == 3


def test_a_batch_whose_time_runs_out_before_its_turn_fails_and_leaves_the_queue() -> None:
    """Given a call that stays on the wire past the timeout (0.3 s here), a publish waiting
    behind it fails with DeadlineExceeded without waiting for it, nothing is left queued,
    and once the call returns the next publish is sent at once."""
    wire = Wire()
    wire.hold.set()
    group = group_publish(wire, timeout=0.3)
    first = Publishers(group, ["a"])
    assert wire.on_wire.wait(WAIT)

    late = Publishers(group, ["b"]).joined()

    assert isinstance(late["b"], gexc.DeadlineExceeded)
    assert group.queued == 0 and len(wire.calls) == 1
    wire.release.set()
    assert first.joined() == {"a": "0:a"}
    wire.hold.clear()
    assert group((b"c", {})) == "1:c"


def test_a_batch_holds_at_most_max_size_counted_by_each_items_size() -> None:
    """Given items that count their own size (as a job's creates count its documents)
    and max_size 5, three items of 2 waiting behind a call go out as 2 + 2 and then 2,
    and an item larger than max_size still goes, alone."""
    calls: list[list[str]] = []
    on_wire, release = threading.Event(), threading.Event()

    def send(items: Sequence[str], *, timeout: float | None = None) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            on_wire.set()
            assert release.wait(WAIT)
        return [len(item) for item in items]

    group: Group[str, int] = Group(send, timeout=3.0, max_size=5, size=len)
    results: dict[str, Any] = {}

    def one(item: str) -> None:
        results[item] = group(item)

    threads = queued_behind(one, "a", ["bb", "cc", "dd", "eeeeeee"],
                            on_wire=on_wire.is_set, queued=lambda: group.queued)
    release.set()
    joined(threads)

    assert calls == [["a"], ["bb", "cc"], ["dd"], ["eeeeeee"]]
    assert results == {"a": 1, "bb": 2, "cc": 2, "dd": 2, "eeeeeee": 7}


def test_a_batch_that_waited_its_patience_goes_beside_a_slow_call() -> None:
    """Given a call that stays on the wire and patience 0.05 s (timeout 3 s), publishes
    waiting behind it go out together beside it and get their ids while it is still on
    the wire; the wire stays the slow call's until it returns."""
    wire = Wire()
    wire.hold.set()
    wire.during = lambda: wire.hold.clear() if len(wire.calls) > 1 else None  # hold the first
    group = group_publish(wire, timeout=3.0, patience=0.05)
    first = Publishers(group, ["a"])
    assert wire.on_wire.wait(WAIT)
    rest = Publishers(group, ["b", "c"])

    got = rest.joined()  # (together, unless one thread started 50 ms after the other)
    assert sorted(got) == ["b", "c"] and all(isinstance(v, str) for v in got.values())
    assert "a" not in first.results and group.queued == 0
    wire.release.set()
    assert first.joined() == {"a": "0:a"}
    assert group((b"d", {})) == f"{len(wire.calls) - 1}:d"
    assert sorted(m for messages, _ in wire.calls[1:-1] for m in messages) == [b"b", b"c"]


class FakeCreates:
    """``wire.Creates`` for GroupedCreates without a network: a job's writes are its
    documents' names; ``refuse`` says what each commit answers (None: written)."""

    timeout = 3.0

    def __init__(self, refuse: Callable[[list[str]], BaseException | None]) -> None:
        self.refuse, self.commits = refuse, []  # type: list[list[str]]

    def encode(self, documents: Sequence[tuple[str, Mapping[str, Any]]],
               absent: Sequence[str] = ()) -> Any:
        from types import SimpleNamespace

        root = "projects/p/databases/(default)/documents/"
        return SimpleNamespace(writes=[
            *(SimpleNamespace(update=SimpleNamespace(name=root + path)) for path, _ in documents),
            *(SimpleNamespace(update=SimpleNamespace(name=""), delete=root + path)
              for path in absent)])

    def send(self, encoded: Sequence[Any], *, timeout: float | None = None) -> None:
        names = [wire.written(w).split("/documents/")[1] for job in encoded for w in job.writes]
        self.commits.append(names)
        error = self.refuse(names)
        if error is not None:
            raise error


def grouped(creates: FakeCreates, jobs: Sequence[str],
            absent: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Each job (one document, and the document ``absent`` names for it, if any, that
    must not exist) created at once by a GroupedCreates whose first commit waits on the
    wire until all the others are queued behind it."""
    from kiln.adapters.group import GroupedCreates

    group = GroupedCreates(creates, patience=None)  # type: ignore[arg-type]
    first_refuse, release = creates.refuse, threading.Event()

    def refuse(names: list[str]) -> BaseException | None:
        if len(creates.commits) == 1:
            assert release.wait(WAIT)
        return first_refuse(names)

    creates.refuse = refuse
    results: dict[str, Any] = {}

    def one(name: str) -> None:
        try:
            group([(name, {})], [absent[name]] if absent and name in absent else [])
            results[name] = True
        except Exception as exc:
            results[name] = exc

    threads = queued_behind(one, "jobs/first", jobs, on_wire=lambda: len(creates.commits) == 1,
                            queued=lambda: group.queued)
    release.set()
    joined(threads)
    return results


def test_a_refusal_that_names_no_document_sends_each_job_alone() -> None:
    """A shared commit refused with no document named (a lock: Aborted) is nobody's
    answer: each job is then committed alone, and only the one the lock was on fails."""
    def refuse(names: list[str]) -> BaseException | None:
        if "jobs/b" in names:
            return gexc.Aborted("Transaction lock timeout.")
        return None

    creates = FakeCreates(refuse)
    results = grouped(creates, ["jobs/a", "jobs/b", "jobs/c"])

    assert results["jobs/first"] is True and results["jobs/a"] is True
    assert results["jobs/c"] is True and isinstance(results["jobs/b"], gexc.Aborted)
    assert creates.commits[1] == ["jobs/a", "jobs/b", "jobs/c"]
    assert sorted(map(tuple, creates.commits[2:])) == [("jobs/a",), ("jobs/b",), ("jobs/c",)]


def test_a_refusal_naming_a_document_one_job_requires_absent_sends_it_alone() -> None:
    """A job that requires a document not to exist (its key's batch) and finds it is
    named by the refusal as a job's own document is: it goes alone and gets the refusal,
    and the rest are sent together again."""
    def refuse(names: list[str]) -> BaseException | None:
        if "batches/k" in names:
            return gexc.AlreadyExists(
                "Document already exists: projects/p/databases/(default)/documents/batches/k")
        return None

    creates = FakeCreates(refuse)
    results = grouped(creates, ["jobs/a", "jobs/k", "jobs/c"], absent={"jobs/k": "batches/k"})

    assert creates.commits[1] == ["jobs/a", "jobs/k", "batches/k", "jobs/c"]
    assert creates.commits[2:] == [["jobs/a", "jobs/c"], ["jobs/k", "batches/k"]]
    assert results["jobs/a"] is True and results["jobs/c"] is True
    assert isinstance(results["jobs/k"], gexc.AlreadyExists)


def test_a_group_is_sent_again_at_most_twice_without_the_jobs_named() -> None:
    """Each refusal naming a job's document sends the rest together again, at most
    RESENDS (2) times; after that every job left goes alone."""
    def refuse(names: list[str]) -> BaseException | None:
        taken = [name for name in names if name.startswith("jobs/x")]
        if taken:
            return gexc.AlreadyExists(
                f"Document already exists: projects/p/databases/(default)/documents/{taken[0]}")
        return None

    creates = FakeCreates(refuse)
    results = grouped(creates, ["jobs/x1", "jobs/x2", "jobs/x3", "jobs/ok"])

    assert [len(commit) for commit in creates.commits[1:4]] == [4, 3, 2]
    assert results["jobs/ok"] is True
    assert all(isinstance(results[f"jobs/x{i}"], gexc.AlreadyExists) for i in (1, 2, 3))
    assert sorted(map(tuple, creates.commits[4:])) == [
        ("jobs/ok",), ("jobs/x1",), ("jobs/x2",), ("jobs/x3",)]


def test_a_group_left_with_one_job_leaves_it_to_go_alone_once() -> None:
    """When the refusals leave one job of a group, that job is not sent as a group of one
    and then alone again: it goes alone once, and gets its own answer."""
    def refuse(names: list[str]) -> BaseException | None:
        return gexc.AlreadyExists(
            f"Document already exists: projects/p/databases/(default)/documents/{names[0]}")

    creates = FakeCreates(refuse)
    results = grouped(creates, ["jobs/x1", "jobs/x2"])

    assert creates.commits[1] == ["jobs/x1", "jobs/x2"]
    assert sorted(map(tuple, creates.commits[2:])) == [("jobs/x1",), ("jobs/x2",)]
    assert all(isinstance(results[name], gexc.AlreadyExists)
               for name in ("jobs/first", "jobs/x1", "jobs/x2"))
