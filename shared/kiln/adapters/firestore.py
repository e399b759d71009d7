"""Firestore adapter: jobs (two documents each), devices, and the provider task index.

A job is ``jobs/{jobId}`` (the contract fields clients read) and
``jobs/{jobId}/private/server`` (server state; the rules deny every client). Both are
read and written in one transaction: read → decide (``kiln.core.lifecycle``) → write;
side effects happen outside it. Kiln's sentinels become Firestore's; a change with no
public field leaves ``jobs/{jobId}`` untouched, so no listener wakes for bookkeeping.
SDK errors become Kiln's retryable errors.

A job waiting in the fair queue also has ``waitingJobs/{jobId}`` (its ``reason``), written
in the same commit as every change of its ``queueReason``: a queue pass and the waiting
counts query that small collection, not ``jobs`` (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from kiln.adapters import wire
from kiln.adapters.group import GroupedCreates
from kiln.adapters.scan import rotated
from kiln.core import sentinels
from kiln.core.errors import RetryableError, TicketTakenError
from kiln.core.job import QUEUE_REASONS, Change, Job, NewJob
from kiln.core.lifecycle import NOTIFY_CLAIMED

JOBS = "jobs"
BATCHES = "batches"  # (kiln.adapters.batches)
PRIVATE = "private"  # jobs/{jobId}/private/server: server state, no client access
SERVER_DOC = "server"
#: ``waitingJobs/{jobId}``: present while the job waits in the fair queue (``queueReason``
#: set), with that reason. The Firestore emulator answers a query by reading every
#: document of its collection (measured: 15 ms of its CPU per pass at 1,000 jobs, 117 ms
#: at 8,000, run once per job end), the service by its indexes; over this collection both
#: read only what waits.
WAITING = "waitingJobs"
#: Contention: an aborted transaction is tried again after a random pause of up to each of
#: TX_PAUSES seconds, one commit per try. The SDK's own immediate re-runs are off (one attempt
#: each): on the emulator, racers that come straight back re-take their read locks and starve
#: the writer until every one of them times out (seen: 8 racing claims all failing for 44 s);
#: random pauses let the first one back commit alone. Before each new try the caller may
#: look whether there is anything left to write (``settled``).
TX_ATTEMPTS = 1
TX_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
T = TypeVar("T")

#: Errors that mean "Firestore is not reachable right now": try again later.
_TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError,
              gexc.Aborted, gexc.TooManyRequests, gexc.RetryError)


@contextlib.contextmanager
def unavailable_is_retryable(store: str = "job store") -> Iterator[None]:
    """Turn "Firestore is not reachable right now" into a RetryableError (try again later)."""
    try:
        yield
    except _TRANSIENT as exc:
        raise RetryableError(f"The {store} is unavailable.", code="store_unavailable") from exc


def in_transaction(client: firestore.Client, body: Callable[[firestore.Transaction], T], *,
                   store: str = "job store", busy: str = "The job is busy.",
                   settled: Callable[[], tuple[bool, T]] | None = None) -> T:
    """Run ``body(tx)`` in a Firestore transaction, through contention.

    ``body`` reads through ``tx`` and decides from what it read, so running it again is
    safe. After a contention abort, ``settled()`` (if given) may answer ``(True, value)``
    from a plain read when there is nothing left to write, and no lock is taken again.
    Still contended after every try → RetryableError ``contention`` (the caller's delivery
    is retried later); Firestore unreachable → RetryableError ``store_unavailable``.
    """
    run = firestore.transactional(body)
    pauses = iter(TX_PAUSES)
    while True:
        try:
            with unavailable_is_retryable(store):
                return run(client.transaction(max_attempts=TX_ATTEMPTS))
        except ValueError as exc:
            if "Failed to commit transaction" not in str(exc):
                raise
            pause = next(pauses, None)
            if pause is None:
                raise RetryableError(busy, code="contention") from exc
        time.sleep(random.uniform(0, pause))
        if settled is not None:
            with unavailable_is_retryable(store):
                done, value = settled()
            if done:
                return value


def _firestore_value(value: Any) -> Any:
    """Kiln's sentinels as Firestore's (recursing into maps)."""
    if value is sentinels.SERVER_TIME:
        return firestore.SERVER_TIMESTAMP
    if value is sentinels.DELETE:
        return firestore.DELETE_FIELD
    if isinstance(value, sentinels.Increment):
        return firestore.Increment(value.by)
    if isinstance(value, dict):
        return {k: _firestore_value(v) for k, v in value.items()}
    return value


def _fields(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _firestore_value(value) for name, value in values.items()}


class _EmulatorClient(firestore.Client):
    """A client of the Firestore emulator at an explicit ``host:port`` (the SDK otherwise
    finds the emulator only through ``FIRESTORE_EMULATOR_HOST``)."""

    def __init__(self, project: str, host: str) -> None:
        super().__init__(project=project, credentials=AnonymousCredentials())
        self._emulator_host = host


def connect(project: str, emulator_host: str = "") -> firestore.Client:
    """A Firestore client: the emulator at ``emulator_host``, else the real service."""
    if emulator_host:
        return _EmulatorClient(project, emulator_host)
    return firestore.Client(project=project)


#: Quota tickets (``kiln.adapters.firestore_queue.FirestoreCounters``).
TICKETS = "quotaTickets"
#: How long a quota ticket is kept (TTL policy quota_tickets_expire_at in infra/firestore.tf).
TICKET_LIFETIME = dt.timedelta(days=2)


@functools.lru_cache(maxsize=4096)  # an ingress sees the same callers' keys over and over
def doc_id(key: str) -> str:
    """A document id for any key (uids may hold characters ids cannot)."""
    safe = "".join(c if c.isalnum() or c in "-_:" else "_" for c in key)[:80]
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ticket_path(key: str, number: int) -> str:
    """A quota ticket's path below the database's documents."""
    return f"{TICKETS}/{doc_id(key)}~{number}"


def waiting_path(job_id: str) -> str:
    return f"{WAITING}/{job_id}"


def waiting_fields(public: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``waitingJobs`` document of a job whose public fields (as created, or as a
    change writes them) are ``public``: its reason, or None when it does not wait."""
    reason = public.get("queueReason")
    return None if reason is None or reason is sentinels.DELETE else {"reason": reason}


def waiting_over_jobs(client: firestore.Client) -> Any:
    """The waiting jobs queried over ``jobs`` itself (indexed on Firestore, every job read
    on its emulator): what ``reindex_waiting`` checks the index against."""
    return client.collection(JOBS).where(
        filter=firestore.FieldFilter("status", "==", "pending")).where(
        filter=firestore.FieldFilter("queueReason", "in", list(QUEUE_REASONS)))


def ticket_fields(key: str, number: int, holder: str) -> dict[str, Any]:
    # A day's tickets matter for that day: Firestore's TTL deletes them two days on.
    return {"key": key, "holder": holder, "n": number, "at": sentinels.SERVER_TIME,
            "expireAt": dt.datetime.now(dt.UTC) + TICKET_LIFETIME}


class FirestoreJobStore:
    """Jobs in ``jobs/{jobId}`` with their server state in ``jobs/{jobId}/private/server``."""

    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    @functools.cached_property
    def creates(self) -> wire.Creates:
        return wire.Creates(self.client)

    @functools.cached_property
    def grouped(self) -> GroupedCreates:
        return GroupedCreates(self.creates)

    def ref(self, job_id: str) -> firestore.DocumentReference:
        return self.client.collection(JOBS).document(job_id)

    def server_ref(self, job_id: str) -> firestore.DocumentReference:
        return self.ref(job_id).collection(PRIVATE).document(SERVER_DOC)

    def create(self, job: NewJob) -> bool:
        """Create both documents (and the job's quota tickets) in one commit; False when
        the job exists already, or the batch of its key. The ingress's Firestore call: raw
        protobuf (``kiln.adapters.wire``), shared with the creates that arrive while a
        commit is on the wire (``kiln.adapters.group.GroupedCreates``)."""
        documents = [(f"{JOBS}/{job.id}", job.doc),
                     (f"{JOBS}/{job.id}/{PRIVATE}/{SERVER_DOC}", job.server)]
        if (waits := waiting_fields(job.doc)) is not None:  # created waiting
            documents.append((waiting_path(job.id), waits))
        if job.tickets is not None:
            # Plain paths: a DocumentReference per ticket cost more than the ticket's encoding.
            documents += [(ticket_path(job.tickets.key, number),
                           ticket_fields(job.tickets.key, number, job.tickets.holder))
                          for number in job.tickets.numbers]
        key_batch = [f"{BATCHES}/{job.key_batch}"] if job.key_batch else []
        try:
            with unavailable_is_retryable():
                self.grouped(documents, key_batch)
        except (gexc.AlreadyExists, gexc.FailedPrecondition) as exc:
            with unavailable_is_retryable():  # (the job: a replay; the batch: key reused)
                if self._read(job.id, None) is not None or any(
                        self.client.document(path).get().exists for path in key_batch):
                    return False
            if isinstance(exc, gexc.FailedPrecondition):  # (neither exists: not the caller's)
                raise RetryableError("The job store refused the write.", code="store_unavailable") from exc
            if job.tickets is None:
                return False
            raise TicketTakenError("A quota ticket was taken first.") from None
        return True

    def get(self, job_id: str) -> Job | None:
        with unavailable_is_retryable():
            return self._read(job_id, None)

    def _read(self, job_id: str, tx: firestore.Transaction | None) -> Job | None:
        refs = [self.ref(job_id), self.server_ref(job_id)]
        snaps = {snap.reference.path: snap for snap in self.client.get_all(refs, transaction=tx)}
        public, server = snaps.get(refs[0].path), snaps.get(refs[1].path)
        if public is None or not public.exists:
            return None
        if server is not None and server.exists:
            return Job.from_docs(job_id, public.to_dict() or {}, server.to_dict(),
                                 version=(public.update_time, server.update_time))
        return Job.from_docs(job_id, public.to_dict() or {}, None)

    def transact(self, job_id: str, decide: Callable[[Job | None], tuple[Change | None, T]],
                 *, seen: Job | None = None) -> T:
        """Run ``decide(job)`` in a transaction; write its change (if any); return its value.
        ``decide`` may raise to abort without writing. ``seen`` (``kiln.ports.JobStore``):
        its change is written with each document's update time as the precondition, one
        commit instead of a transaction's three calls; a document changed since → the
        transaction."""
        if seen is not None and seen.version is not None:
            change, value = decide(seen)
            if not change:
                return value
            if change.job and change.server:
                public_time, server_time = seen.version
                batch = self.client.batch()
                batch.update(self.ref(job_id), _fields(change.job),
                             option=self.client.write_option(last_update_time=public_time))
                batch.update(self.server_ref(job_id), _fields(change.server),
                             option=self.client.write_option(last_update_time=server_time))
                self._write_waiting(batch, job_id, change.job)
                with unavailable_is_retryable():
                    try:
                        batch.commit()
                        return value
                    except (gexc.FailedPrecondition, gexc.Aborted):
                        # Written since the read, or held by another transaction (the
                        # emulator aborts a write that waited 2 s for a lock): decided
                        # again in the transaction, which waits out contention.
                        pass

        def run(tx: firestore.Transaction) -> T:
            change, value = decide(self._read(job_id, tx))
            if change:
                self._write(tx, job_id, change)
            return value

        def settled() -> tuple[bool, T]:
            # One read is strongly consistent: when it leaves nothing to write (another
            # racer claimed or ended the job), that answer is the transaction's.
            change, value = decide(self._read(job_id, None))
            return not change, value

        return in_transaction(self.client, run, settled=settled)

    def _write(self, writer: Any, job_id: str, change: Change) -> None:
        if change.job:
            writer.update(self.ref(job_id), _fields(change.job))
            self._write_waiting(writer, job_id, change.job)
        if change.server:
            writer.update(self.server_ref(job_id), _fields(change.server))

    def _write_waiting(self, writer: Any, job_id: str, public: Mapping[str, Any]) -> None:
        """The job's ``waitingJobs`` document, in the same commit as its ``queueReason``."""
        if "queueReason" not in public:
            return
        ref, fields = self.client.document(waiting_path(job_id)), waiting_fields(public)
        if fields is None:
            writer.delete(ref)
        else:
            writer.set(ref, fields)

    def apply(self, job_id: str, change: Change) -> None:
        """Write a change without reading (server bookkeeping)."""
        batch = self.client.batch()
        self._write(batch, job_id, change)
        with unavailable_is_retryable():
            batch.commit()

    def find(self, *, status: str | None = None, uid: str | None = None,
             limit: int = 100, waiting: bool = False, rotate: bool = False) -> list[Job]:
        """Jobs by status and/or owner (unordered), with their server state; ``waiting``:
        only those waiting in the fair queue (found through ``waitingJobs``, unless one
        owner's are asked for); ``rotate``: a window that moves (``adapters.scan``)."""
        if waiting and uid is None:
            return self._find_waiting(status, limit, rotate)
        query: Any = self.client.collection(JOBS)
        if status is not None:
            query = query.where(filter=firestore.FieldFilter("status", "==", status))
        if waiting:
            query = query.where(filter=firestore.FieldFilter("queueReason", "in",
                                                             list(QUEUE_REASONS)))
        if uid is not None:
            query = query.where(filter=firestore.FieldFilter("uid", "==", uid))
        with unavailable_is_retryable():
            snaps = rotated(query, limit) if rotate else query.limit(limit).stream()
            public = {snap.id: snap.to_dict() or {} for snap in snaps}
            if not public:
                return []
            servers = {snap.reference.parent.parent.id: snap.to_dict() or {}
                       for snap in self.client.get_all([self.server_ref(i) for i in public])
                       if snap.exists}
        return [Job.from_docs(job_id, doc, servers.get(job_id)) for job_id, doc in public.items()]

    def _find_waiting(self, status: str | None, limit: int, rotate: bool) -> list[Job]:
        """Up to ``limit`` waiting jobs: ids from ``waitingJobs``, then both documents of
        each in one read. An entry whose job does not wait (one ``reindex_waiting`` wrote
        as the job started) is deleted if unchanged since read."""
        with unavailable_is_retryable():
            entries = rotated(self.client.collection(WAITING), limit) if rotate \
                else list(self.client.collection(WAITING).limit(limit).stream())
            if not entries:
                return []
            ids = [entry.id for entry in entries]
            refs = [self.ref(i) for i in ids] + [self.server_ref(i) for i in ids]
            snaps = {snap.reference.path: snap for snap in self.client.get_all(refs)}
        jobs = []
        for entry in entries:
            public = snaps.get(self.ref(entry.id).path)
            server = snaps.get(self.server_ref(entry.id).path)
            doc = (public.to_dict() or {}) if public is not None and public.exists else {}
            if doc.get("queueReason") not in QUEUE_REASONS or doc.get("status") != "pending":
                with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound, *_TRANSIENT):
                    entry.reference.delete(
                        option=self.client.write_option(last_update_time=entry.update_time))
            elif status in (None, "pending"):
                jobs.append(Job.from_docs(entry.id, doc, server.to_dict() if server is not None
                                          and server.exists else None))
        return jobs

    def reindex_waiting(self, limit: int) -> int:
        """Waiting jobs read from ``jobs`` itself (the sweeper's, once a pass; an indexed
        query on Firestore) that have no ``waitingJobs`` entry get one."""
        query = waiting_over_jobs(self.client).select(["queueReason"]).limit(limit)
        with unavailable_is_retryable():
            waiting = {snap.id: snap.to_dict() or {} for snap in query.stream()}
            if not waiting:
                return 0
            indexed = {snap.id for snap in self.client.get_all(
                [self.client.document(waiting_path(i)) for i in waiting]) if snap.exists}
            written = 0
            for job_id, public in waiting.items():
                fields = waiting_fields(public)
                if job_id not in indexed and fields is not None:
                    with contextlib.suppress(gexc.AlreadyExists):
                        self.client.document(waiting_path(job_id)).create(fields)
                        written += 1
        return written

    def unnotified(self, limit: int) -> list[Job]:
        """Ended jobs whose notification is only claimed: a collection-group query on the
        server documents (field ``private_notify_state`` in infra/firestore.tf)."""
        query = self.client.collection_group(PRIVATE).where(
            filter=firestore.FieldFilter("notify.state", "==", NOTIFY_CLAIMED)).limit(limit)
        with unavailable_is_retryable():
            ids = [snap.reference.parent.parent.id for snap in query.stream()]
        return [job for job in map(self.get, ids) if job is not None]

    def recent(self, uid: str | None, limit: int, after: tuple[dt.datetime, str] | None = None) -> list[Job]:
        """Newest jobs, one owner's or all (index ``jobs_uid_created_desc``, its id last)."""
        query: Any = self.client.collection(JOBS)
        if uid is not None:
            query = query.where(filter=firestore.FieldFilter("uid", "==", uid))
        query = (query.order_by("createdAt", direction=firestore.Query.DESCENDING)
                 .order_by("__name__", direction=firestore.Query.DESCENDING).limit(limit))
        if after is not None:
            query = query.start_after({"createdAt": after[0], "__name__": self.ref(after[1])})
        with unavailable_is_retryable():
            return [Job.from_docs(snap.id, snap.to_dict() or {}, None) for snap in query.stream()]
