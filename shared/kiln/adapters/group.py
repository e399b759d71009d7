"""Group commit for the acknowledgement's two calls: one call on the wire at a time, and
whatever arrives meanwhile rides the next one.

The ingress's Pub/Sub ``Publish`` (``kiln.adapters.pubsub``) and its Firestore ``Commit``
of a new job's documents (``kiln.adapters.firestore``) both go through a :class:`Group`:
a lone request is sent at once, alone, on its caller's thread (no linger, no thread, no
future), and concurrent ones share calls, the way databases share a log flush. Unlike
the SDKs' batching clients it never waits for company (docs/benchmarks.md measures both).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from google.api_core import exceptions as gexc

from kiln.adapters import wire

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Why a request failed without a call: the call before it held the wire its whole time.
LATE = "The request waited its whole time for its turn."
#: How long a waiting batch waits for the call on the wire before it goes beside it: a
#: call that is slow (retrying, or held up at the server) never holds every request behind
#: it for its whole time. Far above a healthy call's (milliseconds; tens under load).
PATIENCE = 0.25


def _held() -> threading.Lock:
    """A lock taken already: its one waiter blocks in ``acquire`` until it is released."""
    lock = threading.Lock()
    lock.acquire()
    return lock


class _Batch(Generic[Item, Result]):
    """Items waiting to go out in one call, and what became of them.

    Its callers wait on plain locks, one each, released by whoever finishes the call:
    a woken caller then needs nothing but the GIL, where an ``Event`` wakes all its
    waiters to contend for its condition's lock first (more thread switches per request,
    and each costs CPU; docs/benchmarks.md, the eighteenth pass)."""

    __slots__ = ("deadline", "error", "items", "joined", "results", "size", "turn")

    def __init__(self, item: Item, size: int, deadline: float) -> None:
        self.items = [item]
        self.size = size
        self.deadline = deadline  # its first caller's, the earliest
        self.turn = _held()  # released when the call before it has returned: send it
        self.joined: list[threading.Lock] = []  # one per caller after the first
        self.results: list[Result] = []
        self.error: BaseException | None = None

    def finished(self) -> None:
        """Results or error are in: wake every caller that joined."""
        for waiter in self.joined:
            waiter.release()


class Group(Generic[Item, Result]):
    """One call on the wire at a time; the items that arrive meanwhile ride the next.

    ``send(items, timeout=...)`` makes one call for ``items`` within ``timeout`` seconds
    (None: the call's own) and returns one result per item, in order. An item that finds
    no call on the wire is sent at once, alone, on its caller's thread. Items that arrive
    while a call is on the wire join one waiting batch (up to ``max_size``, counted by
    ``size(item)``); when the call returns, the batch's first caller sends it for all,
    and each caller gets its own result or the call's error. A batch that has waited
    ``patience`` seconds (None: its whole time) for a call that is still on the wire goes
    beside it. Each caller is held at most ``timeout`` seconds: a batch is sent within its
    first caller's remaining time, and fails without a call if none is left.
    """

    def __init__(self, send: Callable[..., Sequence[Result]], *, timeout: float,
                 max_size: int, size: Callable[[Item], int] = lambda item: 1,
                 patience: float | None = PATIENCE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send, self._timeout, self._max, self._size = send, timeout, max_size, size
        self._patience, self._clock = patience, clock
        self._lock = threading.Lock()
        self._busy = False  # a call is on the wire
        self._waiting: deque[_Batch[Item, Result]] = deque()

    @property
    def queued(self) -> int:
        """Items waiting for the call on the wire to return."""
        with self._lock:
            return sum(len(batch.items) for batch in self._waiting)

    def __call__(self, item: Item) -> Result:
        """The item's result.

        Raises:
            Exception: the call's own error (``google.api_core`` exceptions for the SDKs'
                calls), or DeadlineExceeded if the item's time ran out before its turn.
        """
        size = self._size(item)
        with self._lock:
            if not self._busy:
                self._busy = True
                batch = None
            elif self._waiting and self._waiting[-1].size + size <= self._max:
                batch = self._waiting[-1]
                index = len(batch.items)
                batch.items.append(item)
                batch.size += size
                waiter = _held()
                batch.joined.append(waiter)  # before the batch can leave the queue
            else:
                batch, index = _Batch(item, size, self._clock() + self._timeout), 0
                self._waiting.append(batch)
        if batch is None:  # the common case: alone on the wire
            try:
                return self._sent([item], None)[0]
            finally:
                self._next()
        if index > 0:
            waiter.acquire()
        else:
            left = batch.deadline - self._clock()
            wait = left if self._patience is None else min(left, self._patience)
            if batch.turn.acquire(timeout=max(0.0, wait)) or not self._withdraw(batch):
                self._run(batch, holds_wire=True)
            elif self._clock() < batch.deadline:  # the call on the wire is slow: go beside it
                self._run(batch, holds_wire=False)
            else:  # its time ran out behind the call on the wire: it never had the wire
                batch.error = gexc.DeadlineExceeded(LATE)
                batch.finished()
        if batch.error is not None:
            raise batch.error
        return batch.results[index]

    def _run(self, batch: _Batch[Item, Result], *, holds_wire: bool) -> None:
        """Send a batch for all its callers; then hand the wire on if it held it."""
        try:
            left = batch.deadline - self._clock()
            if left <= 0:
                raise gexc.DeadlineExceeded(LATE)
            batch.results = self._sent(batch.items, left)
        except BaseException as exc:  # each caller of the batch raises it
            batch.error = exc
        finally:
            batch.finished()
            if holds_wire:
                self._next()

    def _sent(self, items: list[Item], timeout: float | None) -> list[Result]:
        results = list(self._send(items, timeout=timeout))
        if len(results) != len(items):
            raise gexc.InternalServerError(
                f"The call answered {len(results)} results for {len(items)} requests.")
        return results

    def _withdraw(self, batch: _Batch[Item, Result]) -> bool:
        """Take a batch that stops waiting for its turn off the queue (nothing joins it
        after); False if its turn has just come (it is then sent as usual)."""
        with self._lock:
            if batch in self._waiting:
                self._waiting.remove(batch)
                return True
            return False

    def _next(self) -> None:
        """The call on the wire has returned: hand the wire to the next batch, if any."""
        with self._lock:
            following = self._waiting.popleft() if self._waiting else None
            self._busy = following is not None
        if following is not None:
            following.turn.release()


#: The most documents one commit of concurrent jobs' creates writes (Firestore takes 500
#: writes a commit; a job is two documents and its quota tickets).
MAX_GROUP_WRITES = 100
#: A shared commit refused with one of these may have been refused for one of its jobs
#: (a document that exists: a replay's, a quota ticket taken first; a lock another holds).
ONE_JOBS_FAULT = (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.InvalidArgument,
                  gexc.Aborted)
#: How many times a group is sent again without the job a refusal named.
RESENDS = 2


class GroupedCreates:
    """The ingress's job creates: each job's documents in one commit, shared with the jobs
    whose creates arrive while another commit is on the wire (a :class:`Group`).

    A commit is atomic, so a group's jobs are written together or not at all. A shared
    commit refused for what one job may hold (``ONE_JOBS_FAULT``), or a group in which two
    jobs write one document, is nobody's answer: a job the refusal names is created
    alone and the rest are sent together again; otherwise each job is created alone,
    within its own remaining time, and gets its own answer. Any other error is every
    job's, as it would have been alone. Each job's writes are encoded on its caller's
    thread.
    """

    def __init__(self, creates: wire.Creates, *, max_writes: int = MAX_GROUP_WRITES,
                 patience: float | None = PATIENCE) -> None:
        self._creates = creates
        self._group: Group[Any, bool] = Group(
            self._together, timeout=creates.timeout, max_size=max_writes,
            size=lambda encoded: len(encoded.writes), patience=patience)

    @property
    def queued(self) -> int:
        """Jobs waiting for the commit on the wire to return."""
        return self._group.queued

    def __call__(self, documents: Sequence[tuple[str, Mapping[str, Any]]],
                 absent: Sequence[str] = ()) -> None:
        """Create each ``(path, fields)`` of one job if no document of ``absent`` exists,
        as ``wire.Creates.commit``.

        Raises:
            google.api_core.exceptions.AlreadyExists: one of them exists, or one of
                ``absent`` does (none was written).
            google.api_core.exceptions.GoogleAPIError: the commit failed.
        """
        started = time.monotonic()
        encoded = self._creates.encode(documents, absent)
        if not self._group(encoded):  # its group was nobody's answer: alone, then
            left = self._creates.timeout - (time.monotonic() - started)
            if left <= 0:
                raise gexc.DeadlineExceeded("No time was left to create the job alone.")
            self._creates.send([encoded], timeout=left)

    def _together(self, jobs: list[Any], *, timeout: float | None) -> list[bool]:
        """One commit of the jobs' writes: True for each when written, False for each
        that must be created alone. A refusal that names one job's document (Firestore's
        "already exists" does) sends that job alone and the rest together again, at most
        ``RESENDS`` times; any other refusal sends them all alone."""
        if len(jobs) == 1:  # the common case: its own commit, its own error
            self._creates.send(jobs, timeout=timeout)
            return [True]
        names = [wire.written(change) for job in jobs for change in job.writes]
        if len(set(names)) < len(names):
            return [False] * len(jobs)
        deadline = time.monotonic() + (self._creates.timeout if timeout is None else timeout)
        together = list(jobs)
        for _ in range(RESENDS + 1):
            try:
                self._creates.send(together, timeout=max(deadline - time.monotonic(), 0.001))
            except ONE_JOBS_FAULT as exc:
                culprit = _named(exc, together)
                if culprit is None:
                    break
                del together[culprit]
                if len(together) == 1:  # a group of one is a job alone: its caller sends it
                    break
                continue
            return [any(job is sent for sent in together) for job in jobs]
        return [False] * len(jobs)


def _named(exc: gexc.GoogleAPICallError, jobs: list[Any]) -> int | None:
    """The one job whose document the error names (the emulator's "entity already exists:
    EntityRef{…, path=/jobs/…}", Firestore's "Document already exists:
    projects/…/documents/jobs/…"), or None."""
    message = str(getattr(exc, "message", "") or "").rstrip("} ")
    named = [index for index, job in enumerate(jobs)
             if any(message.endswith("/" + wire.written(change).split("/documents/", 1)[-1])
                    for change in job.writes)]
    return named[0] if len(named) == 1 else None
