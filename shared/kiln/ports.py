"""The outside services Kiln talks to, one ``typing.Protocol`` each.

The real adapters live in ``kiln.adapters`` (Firestore, Pub/Sub, Cloud Storage, FCM,
Firebase Auth); the in-memory fakes in ``kiln_dev.fakes``. The same contract tests
(``tests/contract``) run against both, so a fake cannot drift from its adapter. The
composition root (``kiln.compose``) wires one of each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

from kiln.core.batches import Batch
from kiln.core.job import Change, Device, Job, NewJob
from kiln.core.keys import ApiKey, Tenant
from kiln.webhooks.model import Delivery as WebhookDelivery
from kiln.webhooks.model import Endpoint, Event

T = TypeVar("T")

#: ``decide(job)`` → (the change to write or None, the value to return).
Decide = Callable[[Job | None], tuple[Change | None, T]]
#: ``decide(delivery)`` → (the fields to merge or None, the value to return).
DecideDelivery = Callable[[WebhookDelivery | None], tuple[Mapping[str, Any] | None, T]]


class JobStore(Protocol):
    """Jobs: the public document and its server state, always changed together."""

    def create(self, job: NewJob) -> bool:
        """Create both documents at once, with ``job.tickets`` if any; False when a job
        with this id exists, or the batch ``job.key_batch`` does (nothing written).

        Raises:
            TicketTakenError: one of ``job.tickets`` was taken first (nothing written).
        """
        ...

    def get(self, job_id: str) -> Job | None: ...

    def transact(self, job_id: str, decide: Decide[T], *, seen: Job | None = None) -> T:
        """Read the job, ``decide``, write the change, atomically; return the value.
        ``decide`` may run more than once (contention) and may raise to write nothing.

        ``seen``: the job as a ``get`` just read it. ``decide(seen)`` runs first; a change
        of both documents is written only if neither changed since that read (one write,
        no transaction), and nothing to write is the answer. Otherwise the job is read
        and decided again, as without ``seen``."""
        ...

    def apply(self, job_id: str, change: Change) -> None:
        """A blind write of a change that needs no read (server bookkeeping)."""
        ...

    def find(self, *, status: str | None = None, uid: str | None = None,
             limit: int = 100, waiting: bool = False, rotate: bool = False) -> list[Job]:
        """Jobs by status and/or owner; ``waiting``: only those waiting in the fair queue
        (``queueReason`` set); ``rotate``: with more matches than ``limit``, which are
        returned moves from call to call, so each match is returned by some calls."""
        ...

    def reindex_waiting(self, limit: int) -> int:
        """Make every waiting job (up to ``limit`` looked at) found by ``find(waiting=True)``
        (a store that indexes them apart writes the entries it lacks); how many written."""
        ...

    def recent(self, uid: str | None, limit: int, after: tuple[dt.datetime, str] | None = None
               ) -> list[Job]:
        """The owner's (None: anyone's) newest ``limit`` jobs, newest first (by creation time, then id:
        one indexed query however many jobs the owner has); ``after``: only those that
        come after the job of that (creation time, id) in that order, the next page.
        Public documents only: each job's ``server`` is empty."""
        ...

    def unnotified(self, limit: int) -> list[Job]:
        """Up to ``limit`` jobs whose end notification is claimed, never sent (any order)."""
        ...


class BatchStore(Protocol):
    """Batches (``batches/{batchId}``), written with their jobs in one commit."""

    def create(self, batch: Batch, jobs: Sequence[NewJob], *, key_job: str | None = None) -> bool:
        """Create the batch and every job's two documents at once (all or nothing); False
        when the batch exists, or one of its jobs, or the single job ``key_job`` (the one
        its caller's Idempotency-Key would name; nothing written)."""
        ...

    def get(self, batch_id: str) -> Batch | None: ...

    def statuses(self, batch_id: str) -> dict[str, str]:
        """Job id → status of the jobs whose ``batchId`` is ``batch_id`` (one query)."""
        ...

    def ended_count(self, batch_id: str) -> int:
        """How many of the batch's jobs have ended (one count aggregation: a batch's end
        check costs no read per job)."""
        ...

    def mark_ended(self, batch_id: str, token: str = "") -> bool:
        """Create the batch's end marker; True only for the first caller (``token``: the
        caller's, so a create that landed but whose answer was lost is still its own)."""
        ...

    def ended_at(self, batch_id: str) -> dt.datetime | None:
        """When the batch's end marker was created (its announcement); None before."""
        ...

    def close(self, batch_id: str) -> None:
        """Mark the batch announced (``open`` false): the sweeper stops looking at it."""
        ...

    def open_batches(self, limit: int) -> list[Batch]:
        """Up to ``limit`` batches not yet closed: a window that moves from call to call."""
        ...


class DeviceStore(Protocol):
    """Where a user's app instances receive pushes (``users/{uid}/devices/*``)."""

    def devices(self, uid: str) -> list[Device]:
        """The user's devices with an address, leaving out (and deleting) any that another
        user registered since: a phone signed in as someone else (``Device.moved``)."""
        ...

    def delete_device(self, uid: str, device: Device) -> None:
        """Forget a registration FCM called dead, if it still holds ``device``'s address:
        an app that registered its new address meanwhile keeps it."""
        ...


@dataclass(frozen=True)
class Delivery:
    """What one job message asks: run ``job_id``; with ``check``, the scheduled check
    number ``check`` of a job that waits on a remote task."""

    job_id: str
    check: int | None = None
    published_at: dt.datetime | None = None  # when Pub/Sub took the message (its timeline)


class Queue(Protocol):
    """Wakes a worker for a job (the message carries only the id, and for a scheduled
    check of a waiting job its check number)."""

    def publish(self, job_id: str, *, reason: str = "new", check: int | None = None) -> str: ...


class Scheduler(Protocol):
    """Publishes a job's check message later (Cloud Tasks): the timer of a job that waits
    on a remote task, so no invocation sleeps."""

    def schedule(self, job_id: str, check: int, at: dt.datetime) -> bool:
        """Publish ``(job_id, check)`` to the jobs topic at ``at`` (at once if past).
        One task per (job, check): False when that one was scheduled already (refused).

        Raises:
            RetryableError: the scheduling service did not take it.
        """
        ...


class TaskIndex(Protocol):
    """A provider's task id → its job, and provider callback events seen (dedupe)."""

    def link(self, provider: str, task_id: str, job_id: str) -> bool:
        """Record that ``task_id`` belongs to ``job_id``; True when a callback for the task
        arrived before this link (the job should be checked at once)."""
        ...

    def job_for(self, provider: str, task_id: str) -> str | None:
        """The job of a task; None for a task not linked (yet), remembered as early so
        :meth:`link` reports it."""
        ...

    def first_seen(self, provider: str, event_id: str) -> bool:
        """True the first time a provider event id is seen, False for a replay."""
        ...

    def forget(self, provider: str, event_id: str) -> None:
        """Unsee an event whose handling failed, so the provider's retry is not a replay."""
        ...


@dataclass(frozen=True)
class StoredObject:
    path: str
    content_type: str
    bytes: int
    sha256: str
    download_url: str


class Validator(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> Any: ...


class BlobStore(Protocol):
    """Results in the bucket, each with a download URL."""

    def put_stream(self, path: str, chunks: Iterable[bytes], content_type: str,
                   validator: Validator | None = None) -> StoredObject: ...

    def put_bytes(self, path: str, data: bytes, content_type: str) -> StoredObject: ...

    def open(self, path: str, chunk_size: int) -> IO[bytes]:
        """A seekable reader of a stored object."""
        ...

    def read(self, path: str) -> bytes: ...

    def exists(self, path: str) -> bool: ...

    def delete(self, path: str) -> None: ...

    def list(self, prefix: str) -> list[str]: ...


@dataclass
class PushResult:
    sent: int = 0
    failed: int = 0
    dead_devices: list[str] = field(default_factory=list)


class Push(Protocol):
    """App notifications (FCM)."""

    def send(self, devices: Sequence[Device], title: str, body: str, data: dict[str, str],
             *, image: str | None = None) -> PushResult: ...


@dataclass(frozen=True)
class Identity:
    """A verified caller: its uid and the plan its credentials carry (None: none, or a
    claim that cannot be trusted, e.g. an unsigned local token's)."""

    uid: str
    plan: str | None = None


class Verifier(Protocol):
    """Who calls the HTTP API: the uid behind an ``Authorization`` header."""

    def verify(self, authorization: str | None) -> str: ...

    def verify_user(self, authorization: str | None) -> tuple[str, str | None]:
        """The uid and its plan (the custom claim ``plan``, None when unset or from a
        token whose claims cannot be trusted)."""
        ...

    def identify(self, authorization: str | None) -> Identity:
        """The caller with its plan claim (``verify``'s checks, same errors)."""
        ...


class Counters(Protocol):
    """Admission's counts with no hot document: a quota is numbered tickets, one document
    each, created once (create-if-absent makes it exact under concurrency); the jobs not
    yet started are counted by a query."""

    def take(self, key: str, count: int, limit: int, holder: str = "") -> list[int] | None:
        """Take ``count`` of the ``limit`` tickets of ``key`` for ``holder`` (the job they
        pay for, when one): their numbers, or None (nothing taken) when fewer than
        ``count`` are left.

        Raises:
            RetryableError: the store is unavailable or too contended right now.
        """
        ...

    def reserve(self, key: str, count: int, limit: int) -> list[int] | None:
        """The numbers ``count`` new tickets of ``key`` should have, taken later by a job's
        create (``NewJob.tickets``): no write, usually no read either; None when fewer
        than ``count`` are left."""
        ...

    def give_back(self, key: str, numbers: list[int]) -> None:
        """Return tickets taken for a request that created nothing."""
        ...

    def used(self, key: str) -> int:
        """How many tickets of ``key`` are taken."""
        ...

    def waiting(self, reason: str | None = None, *, unknown: int | None = None) -> int:
        """Jobs accepted and not yet started (``pending``); with ``reason``, those waiting
        for it (``queueReason``). About a second stale (read in the background). With
        ``unknown``, a process that has no count yet answers ``unknown`` at once and
        reads the count in the background (the acknowledgement never waits on it)."""
        ...


class Slots(Protocol):
    """Pools of places held by running jobs: a user's running limit, a provider account's
    capacity. One document per place, so no document is written more than twice per job."""

    def take(self, pool: str, capacity: int, job_id: str,
             done: Callable[[str, float], bool] | None = None,
             limit: int | None = None) -> bool:
        """Hold a free place of ``pool`` (of ``capacity``) for ``job_id``; True when held
        (also when it held one already). With ``done``, a place is free when
        ``done(holder, held_for)`` (``held_for``: seconds since the place was taken, so a
        holder still starting is told from one that went away); with ``limit``, no place
        is taken while ``limit`` are held (a narrowed window)."""
        ...

    def release(self, pool: str, job_id: str) -> None:
        """Give back ``job_id``'s place in ``pool`` (nothing when it holds none)."""
        ...

    def holders(self, pool: str) -> list[str]: ...

    def narrow(self, pool: str, capacity: int, until: dt.datetime) -> None:
        """Use at most ``capacity`` places of ``pool`` until ``until`` (a provider's 429)."""
        ...

    def window(self, pool: str, capacity: int, now: dt.datetime) -> int:
        """The places usable now: ``capacity``, or less while a narrowing lasts."""
        ...


class KeyStore(Protocol):
    """API keys (``apiKeys/{keyId}``, hashes only) and tenants (``tenants/{tenant}``);
    server-only documents."""

    def put_key(self, key: ApiKey) -> None: ...

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]: ...

    def revoke_key(self, key_id: str, at: dt.datetime) -> bool:
        """Mark the key revoked; False when there is no such key."""
        ...

    def get_tenant(self, tenant: str) -> Tenant | None: ...

    def put_tenant(self, tenant: Tenant) -> None:
        """Create the tenant record, or replace its plan and settings."""
        ...


class Clock(Protocol):
    """Wall time for documents, monotonic time for budgets, and sleeping."""

    def now(self) -> dt.datetime: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class Channel(Protocol):
    """A channel with a conversation of its own (Telegram): told of progress and of the
    end. ``services`` is the composition root (``kiln.compose.Services``)."""

    def on_started(self, services: Any, job: Job) -> None: ...

    def on_progress(self, services: Any, job: Job, progress: int, stage: str) -> None: ...

    def on_finished(self, services: Any, job: Job) -> dict[str, Any]: ...

    def redeliver(self, services: Any, started: dt.datetime | None = None) -> int:
        """Finish deferred deliveries (a sweep's pass, begun at ``started``); how many."""


class WebhookStore(Protocol):
    """Webhook endpoints, tenants' signing secrets, events, deliveries and their attempts
    (``kiln.webhooks.model``; server-only Firestore collections)."""

    def put_endpoint(self, endpoint: Endpoint, limit: int | None = None) -> bool:
        """Store it; False (nothing written) when its tenant has ``limit`` endpoints
        already, counted atomically with the write (registrations at once never pass the
        limit, and none is refused for contention)."""
        ...

    def endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    def endpoints(self, tenant: str | None = None) -> list[Endpoint]: ...

    def delete_endpoint(self, endpoint_id: str) -> bool:
        """Delete it and free its room; False when there is none (already deleted; a
        delete that meets it gone meanwhile, its own retried commit or another, is True)."""
        ...

    def disable_endpoint(self, endpoint_id: str, reason: str) -> None: ...

    def tenant_secret(self, tenant: str, new: str) -> str:
        """The tenant's secret for per-job webhook URLs; ``new`` becomes it if it has none."""
        ...

    def create_event(self, event: Event) -> bool:
        """Record an event; False when one with its id exists (nothing written)."""
        ...

    def event(self, event_id: str) -> Event | None: ...

    def create_delivery(self, delivery: WebhookDelivery) -> bool:
        """Record a delivery; False when one with its id exists (nothing written)."""
        ...

    def delivery(self, delivery_id: str) -> WebhookDelivery | None: ...

    def transact_delivery(self, delivery_id: str, decide: DecideDelivery[T]) -> T:
        """Read, ``decide`` (fields to merge or None), write, atomically; return the value."""
        ...

    def deliveries(self, *, endpoint_id: str | None = None, event_id: str | None = None,
                   due_before: dt.datetime | None = None, limit: int = 100) -> list[WebhookDelivery]:
        """Deliveries of an endpoint or event (newest first), or the pending ones whose
        next attempt is due before ``due_before``."""
        ...

    def add_attempt(self, delivery_id: str, number: int, record: Mapping[str, Any]) -> None:
        """Record attempt ``number`` once: a second record of it (an invocation whose
        lease ran out) is dropped."""
        ...

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]: ...
