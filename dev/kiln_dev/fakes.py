"""In-memory fakes of Kiln's ports (``kiln.ports``), for unit tests.

Each keeps to its port's contract, which ``tests/contract`` checks against the fake and
the real adapter alike: a job is two documents changed together, Kiln's sentinels
resolve against the fake clock, a transaction's ``decide`` that raises writes nothing.
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import hashlib
import io
import secrets
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from kiln.core import sentinels
from kiln.core.errors import RetryableError, TicketTakenError
from kiln.core.job import QUEUE_REASONS, Change, Device, Job, NewJob, newest
from kiln.core.lifecycle import NOTIFY_CLAIMED
from kiln.ports import Decide, Delivery, Identity, PushResult, StoredObject, Validator

T = TypeVar("T")
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)



def rotated(ids: list[str], limit: int, pivot: str | None = None) -> list[str]:
    """``kiln.adapters.scan.rotated`` of the fakes: over ``limit`` ids, in id order from
    ``pivot`` (a random one when None), wrapping around; else ``ids`` as they are."""
    if len(ids) <= limit:
        return ids
    ordered = sorted(ids)
    at = bisect.bisect_left(ordered, pivot if pivot is not None else secrets.token_hex(10))
    return ordered[at:] + ordered[:at]

class FakeClock:
    """Time that moves only when told (or when something sleeps)."""

    def __init__(self, start: dt.datetime = EPOCH) -> None:
        self._now = start
        self._mono = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds


def _resolve(value: Any, old: Any, now: dt.datetime) -> Any:
    if value is sentinels.SERVER_TIME:
        return now
    if isinstance(value, sentinels.Increment):
        return (old or 0) + value.by
    if isinstance(value, dict):
        return {k: _resolve(v, None, now) for k, v in value.items()}
    return copy.deepcopy(value)


def apply_fields(doc: dict[str, Any], fields: Mapping[str, Any], now: dt.datetime) -> None:
    """Firestore's update semantics: dotted names reach into maps; DELETE removes."""
    for name, value in fields.items():
        *parents, leaf = name.split(".")
        target = doc
        for part in parents:
            nested = target.get(part)
            if not isinstance(nested, dict):
                nested = target[part] = {}
            target = nested
        if value is sentinels.DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = _resolve(value, target.get(leaf), now)


class InMemoryJobStore:
    """``kiln.ports.JobStore`` in a dict; counts writes per document."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.docs: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}  # job id → writes so far (a read's ``version``)
        self.public_writes: Counter[str] = Counter()
        self.server_writes: Counter[str] = Counter()
        self.unavailable = False
        self.counters: Any = None  # an InMemoryCounters bound to this store, for tickets
        self.batch_ids: Any = ()  # an InMemoryBatchStore's ids, once one is bound to it
        self._lock = threading.RLock()

    def _check(self) -> None:
        if self.unavailable:
            raise RetryableError("The job store is unavailable.", code="store_unavailable")

    def create(self, job: NewJob) -> bool:
        with self._lock:
            self._check()
            if job.id in self.docs or job.key_batch in self.batch_ids:
                return False
            tickets = job.tickets
            if tickets is not None and not self.counters.confirm(
                    tickets.key, list(tickets.numbers), tickets.holder):
                raise TicketTakenError("A quota ticket was taken first.")
            now = self.clock.now()
            self.versions[job.id] = 0
            self.docs[job.id], self.servers[job.id] = {}, {}
            apply_fields(self.docs[job.id], job.doc, now)
            apply_fields(self.servers[job.id], job.server, now)
            return True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._check()
            doc = self.docs.get(job_id)
            if doc is None:
                return None
            return Job.from_docs(job_id, copy.deepcopy(doc), copy.deepcopy(self.servers[job_id]),
                                 version=self.versions.get(job_id))

    def transact(self, job_id: str, decide: Decide[T], *, seen: Job | None = None) -> T:
        with self._lock:
            if seen is not None and seen.version is not None:
                self._check()
                change, value = decide(seen)
                if not change:
                    return value
                if change.job and change.server and seen.version == self.versions.get(job_id):
                    self.apply(job_id, change)
                    return value
            change, value = decide(self.get(job_id))
            if change:
                self.apply(job_id, change)
            return value

    def apply(self, job_id: str, change: Change) -> None:
        with self._lock:
            self._check()
            if job_id not in self.docs:
                raise KeyError(f"no job {job_id}")  # Firestore: NotFound on update
            now = self.clock.now()
            self.versions[job_id] = self.versions.get(job_id, 0) + 1
            if change.job:
                apply_fields(self.docs[job_id], change.job, now)
                self.public_writes[job_id] += 1
            if change.server:
                apply_fields(self.servers[job_id], change.server, now)
                self.server_writes[job_id] += 1

    def find(self, *, status: str | None = None, uid: str | None = None,
             limit: int = 100, waiting: bool = False, rotate: bool = False) -> list[Job]:
        with self._lock:
            ids = [job_id for job_id, doc in self.docs.items()
                   if (status is None or doc.get("status") == status)
                   and (uid is None or doc.get("uid") == uid)
                   and (not waiting or doc.get("queueReason") in QUEUE_REASONS)]
            ids = rotated(ids, limit) if rotate else ids
            return [job for job in (self.get(i) for i in ids[:limit]) if job is not None]

    def reindex_waiting(self, limit: int) -> int:
        return 0  # ``find`` reads the jobs themselves: no index to keep

    def unnotified(self, limit: int) -> list[Job]:
        with self._lock:
            self._check()
            ids = [job_id for job_id, server in self.servers.items()
                   if (server.get("notify") or {}).get("state") == NOTIFY_CLAIMED]
            return [job for job in (self.get(i) for i in ids[:limit]) if job is not None]

    def recent(self, uid: str | None, limit: int, after: tuple[dt.datetime, str] | None = None
               ) -> list[Job]:
        with self._lock:
            self._check()
            ids = sorted(((doc["createdAt"], job_id) for job_id, doc in self.docs.items()
                          if uid in (None, doc.get("uid")) and (after is None or
                                                        (doc["createdAt"], job_id) < after)),
                         reverse=True)
            return [Job.from_docs(job_id, copy.deepcopy(self.docs[job_id]), None)
                    for _, job_id in ids[:limit]]


class InMemoryDevices:
    """``kiln.ports.DeviceStore``."""

    def __init__(self) -> None:
        self.by_uid: dict[str, dict[str, dict[str, Any]]] = {}

    def register(self, uid: str, device_id: str, **doc: Any) -> None:
        self.by_uid.setdefault(uid, {})[device_id] = doc

    def devices(self, uid: str) -> list[Device]:
        kept = []
        found = (Device.from_doc(i, doc) for i, doc in self.by_uid.get(uid, {}).items())
        elsewhere = [other for owner, docs in self.by_uid.items() if owner != uid
                     for other in (Device.from_doc(i, d) for i, d in docs.items())
                     if other is not None]
        for device in newest(device for device in found if device is not None):
            if device.moved(elsewhere):
                self.by_uid.get(uid, {}).pop(device.id, None)
            else:
                kept.append(device)
        return kept

    def delete_device(self, uid: str, device: Device) -> None:
        docs = self.by_uid.get(uid, {})
        now = Device.from_doc(device.id, docs.get(device.id) or {})
        if now is not None and now.address == device.address:
            docs.pop(device.id, None)


class RecordingQueue:
    """``kiln.ports.Queue``: records what was published; can refuse the next N."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.deliveries: list[Delivery] = []  # in order, with check numbers
        self.fail_next = 0

    def publish(self, job_id: str, *, reason: str = "new", check: int | None = None) -> str:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RetryableError("The job queue is unavailable.", code="queue_unavailable")
        self.published.append((job_id, reason))
        self.deliveries.append(Delivery(job_id, check))
        return str(len(self.published))

    def ids(self) -> list[str]:
        return [job_id for job_id, _reason in self.published]


@dataclass(frozen=True)
class ScheduledCheck:
    job_id: str
    check: int
    at: dt.datetime


class FakeScheduler:
    """``kiln.ports.Scheduler``: remembers checks by (job, check) like Cloud Tasks' task
    names (a second schedule of one is refused); tests release due ones with :meth:`due`
    (or the queue they publish to, with :meth:`fire`)."""

    def __init__(self, queue: RecordingQueue | None = None) -> None:
        self.queue = queue
        self.pending: dict[tuple[str, int], ScheduledCheck] = {}
        self.names: set[tuple[str, int]] = set()
        self.fail_next = 0

    def schedule(self, job_id: str, check: int, at: dt.datetime) -> bool:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RetryableError("The scheduler is unavailable.", code="scheduler_unavailable")
        key = (job_id, check)
        if key in self.names:
            return False
        self.names.add(key)
        self.pending[key] = ScheduledCheck(job_id, check, at)
        return True

    def due(self, now: dt.datetime) -> list[ScheduledCheck]:
        """Remove and return the checks due at ``now``, earliest first."""
        ready = sorted((c for c in self.pending.values() if c.at <= now), key=lambda c: c.at)
        for item in ready:
            del self.pending[(item.job_id, item.check)]
        return ready

    def next_at(self) -> dt.datetime | None:
        return min((c.at for c in self.pending.values()), default=None)

    def fire(self, now: dt.datetime) -> list[ScheduledCheck]:
        """Publish the due checks to ``queue`` (as the real scheduler does)."""
        assert self.queue is not None
        ready = self.due(now)
        for item in ready:
            self.queue.publish(item.job_id, reason="check", check=item.check)
        return ready


class InMemoryTaskIndex:
    """``kiln.ports.TaskIndex`` in dicts (one lock: callbacks race the worker's link)."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], str] = {}
        self.early: set[tuple[str, str]] = set()
        self.events: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def link(self, provider: str, task_id: str, job_id: str) -> bool:
        with self._lock:
            self.jobs[(provider, task_id)] = job_id
            return (provider, task_id) in self.early

    def job_for(self, provider: str, task_id: str) -> str | None:
        with self._lock:
            job_id = self.jobs.get((provider, task_id))
            if job_id is None:
                self.early.add((provider, task_id))
            return job_id

    def first_seen(self, provider: str, event_id: str) -> bool:
        with self._lock:
            if (provider, event_id) in self.events:
                return False
            self.events.add((provider, event_id))
            return True

    def forget(self, provider: str, event_id: str) -> None:
        with self._lock:
            self.events.discard((provider, event_id))


class InMemoryBlobs:
    """``kiln.ports.BlobStore``: objects in a dict, validated like the real upload."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.fail_next = 0

    def put_stream(self, path: str, chunks: Iterable[bytes], content_type: str,
                   validator: Validator | None = None) -> StoredObject:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RetryableError("Cloud Storage is unavailable.", code="storage_unavailable")
        data = bytearray()
        for chunk in chunks:
            if validator is not None:
                validator.feed(chunk)
            data += chunk
        if validator is not None:
            validator.finish()  # raises before anything is stored
        self.objects[path] = (bytes(data), content_type)
        return StoredObject(path, content_type, len(data), hashlib.sha256(data).hexdigest(),
                            f"memory://{path}")

    def put_bytes(self, path: str, data: bytes, content_type: str) -> StoredObject:
        return self.put_stream(path, [data], content_type)

    def open(self, path: str, chunk_size: int) -> IO[bytes]:
        return io.BytesIO(self.read(path))

    def read(self, path: str) -> bytes:
        try:
            return self.objects[path][0]
        except KeyError:
            raise RetryableError("The result could not be read.",
                                 code="storage_unavailable") from None

    def exists(self, path: str) -> bool:
        return path in self.objects

    def delete(self, path: str) -> None:
        self.objects.pop(path, None)

    def list(self, prefix: str) -> list[str]:
        return sorted(path for path in self.objects if path.startswith(prefix))


@dataclass
class SentPush:
    devices: list[Device]
    title: str
    body: str
    data: dict[str, str]
    image: str | None


@dataclass
class RecordingPush:
    """``kiln.ports.Push``: records each send; devices listed in ``dead`` are refused."""

    sent: list[SentPush] = field(default_factory=list)
    dead: set[str] = field(default_factory=set)

    def send(self, devices: Sequence[Device], title: str, body: str, data: dict[str, str],
             *, image: str | None = None) -> PushResult:
        self.sent.append(SentPush(list(devices), title, body, dict(data), image))
        dead = [d.id for d in devices if d.id in self.dead]
        return PushResult(sent=len(devices) - len(dead), failed=len(dead), dead_devices=dead)


class TokenVerifier:
    """``kiln.ports.Verifier``: ``Bearer uid:<uid>`` signs in as ``<uid>``;
    ``uid:<uid>#<plan>`` (or ``uid:<uid>;plan=<plan>``) with the custom claim ``plan``."""

    def verify(self, authorization: str | None) -> str:
        return self.identify(authorization).uid

    def verify_user(self, authorization: str | None) -> tuple[str, str | None]:
        identity = self.identify(authorization)
        return identity.uid, identity.plan

    def identify(self, authorization: str | None) -> Identity:
        from kiln.core.errors import RequestError

        scheme, _, token = (authorization or "").partition(" ")
        token, _, plan = token.partition(";plan=")
        if scheme.lower() != "bearer" or not token.startswith("uid:") or len(token) == 4:
            raise RequestError(401, "unauthenticated", "Sign in first.")
        uid, _, claimed = token[4:].partition("#")
        return Identity(uid, plan or claimed or None)


# The fair queue's ports, kept in a module of their own (re-exported here).
from kiln_dev.fakes_queue import InMemoryCounters as InMemoryCounters  # noqa: E402
from kiln_dev.fakes_queue import InMemorySlots as InMemorySlots  # noqa: E402
