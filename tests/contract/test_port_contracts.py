"""One contract per port, run against the in-memory fake and the real adapter on the
emulators: what unit tests assume of a fake is what production gets."""

from __future__ import annotations

import base64
import datetime as dt
import io
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from kiln.core import lifecycle, sentinels
from kiln.core.errors import PermanentError, RetryableError
from kiln.core.job import Change, Job, JobStatus
from kiln.core.policy import RetryPolicy
from kiln.core.requests import parse_job_request
from kiln.providers.base import GenerationRequest
from kiln.providers.offline import OfflineProvider
from kiln.runtime.artifacts import PngValidator
from kiln_dev.fakes import (
    FakeClock,
    FakeScheduler,
    InMemoryBlobs,
    InMemoryDevices,
    InMemoryJobStore,
    InMemoryTaskIndex,
    RecordingQueue,
)
from kiln_dev.stack import emulator_subscriber

POLICY = RetryPolicy()
BACKENDS = ["fake", "emulator"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Any:
    """(kind, the composition's services or None for the fake, a clock's now)."""
    if request.param == "fake":
        return None
    return request.getfixturevalue("services")


@pytest.fixture
def store(backend: Any) -> Any:
    return InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC))) if backend is None else backend.store


def new(job_id: str | None = None, **server: Any) -> Any:
    return lifecycle.new_job(job_id=job_id or uuid.uuid4().hex[:20], uid="contract",
                             channel="app", now=dt.datetime.now(dt.UTC), policy=POLICY,
                             request=parse_job_request({"kind": "image", "prompt": "a cube"}),
                             server=server or None, idempotency_key="key-1")


# --- JobStore ---------------------------------------------------------------------------


def test_create_once_and_read_back_typed(store: Any) -> None:
    job = new(telegram={"chatId": 7})
    assert store.create(job) is True
    assert store.create(job) is False
    read = store.get(job.id)
    assert isinstance(read, Job) and read.status is JobStatus.PENDING and read.uid == "contract"
    assert isinstance(read.created_at, dt.datetime) and read.created_at.tzinfo is not None
    assert read.server.idempotency_key == "key-1" and read.server.telegram == {"chatId": 7}
    assert read.server.deadline_at is not None and read.server.fingerprint
    assert store.get("nosuchjob-" + uuid.uuid4().hex[:8]) is None


def test_transact_applies_public_and_server_fields_and_sentinels(store: Any) -> None:
    job = new()
    store.create(job)
    value = store.transact(job.id, lambda j: (Change(
        {"attempts": sentinels.Increment(2), "stage": "x", "startedAt": sentinels.SERVER_TIME},
        {"checks": sentinels.Increment(1), "notify.state": "claimed", "wake": True}), "done"))
    assert value == "done"
    store.transact(job.id, lambda j: (Change({}, {"wake": sentinels.DELETE,
                                                  "notify.type": "t"}), None))
    read = store.get(job.id)
    assert (read.attempts, read.stage, read.server.checks) == (2, "x", 1)
    assert read.server.notify == {"state": "claimed", "type": "t"} and not read.server.wake
    assert isinstance(read.started_at, dt.datetime)


def test_a_decide_that_raises_writes_nothing(store: Any) -> None:
    job = new()
    store.create(job)

    def refuse(j: Job | None) -> tuple[Change, None]:
        raise PermanentError("no")

    with pytest.raises(PermanentError):
        store.transact(job.id, refuse)
    assert store.get(job.id).stage == "queued"
    assert store.transact("missing-" + uuid.uuid4().hex[:8], lambda j: (None, j)) is None


def test_apply_and_find(store: Any) -> None:
    uid = f"finder-{uuid.uuid4().hex[:8]}"
    ids = []
    for _ in range(3):
        job = new()
        job = type(job)(job.id, {**job.doc, "uid": uid}, job.server)
        store.create(job)
        ids.append(job.id)
    # A live lease: the session stack's sweeper shares this emulator and would hand a
    # processing job without one to its worker (seen under load: the lease taken over).
    store.apply(ids[0], Change({"status": "processing"}, {
        "leaseOwner": "w", "leaseExpiresAt": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)}))
    found = store.find(uid=uid)
    assert sorted(j.id for j in found) == sorted(ids)
    running = store.find(uid=uid, status="processing")
    assert [j.id for j in running] == [ids[0]] and running[0].server.lease_owner == "w"
    assert len(store.find(uid=uid, limit=2)) == 2
    assert store.find(uid=f"nobody-{uuid.uuid4().hex}") == []


def test_recent_is_the_owners_newest_first_and_limited(store: Any) -> None:
    uid = f"recent-{uuid.uuid4().hex[:8]}"
    ids = []
    for _ in range(4):
        job = new()
        store.create(type(job)(job.id, {**job.doc, "uid": uid}, job.server))
        ids.append(job.id)
        if isinstance(store, InMemoryJobStore):  # the emulator's clock moves by itself
            store.clock.advance(1.0)
    other = new()
    store.create(other)  # another owner's job is never listed
    assert store.recent(None, 1)[0].id == other.id  # (anyone's: it is the newest)
    assert [j.id for j in store.recent(uid, 10)] == ids[::-1]
    assert [j.id for j in store.recent(uid, 2)] == ids[:1:-1]
    assert all(j.uid == uid and j.created_at for j in store.recent(uid, 10))
    assert store.recent(f"nobody-{uuid.uuid4().hex}", 5) == []
    newest = store.recent(uid, 2)
    assert [j.id for j in store.recent(uid, 10, (newest[1].created_at, newest[1].id))] == \
        ids[1::-1]


def test_recent_pages_through_jobs_created_at_one_instant_by_id(store: Any) -> None:
    """Jobs created at the same instant (a batch's are) come by id, descending, and a
    page that starts after one of them neither repeats nor skips any."""
    uid, at = f"ties-{uuid.uuid4().hex[:8]}", dt.datetime(2026, 1, 2, 3, 4, 5, 678901, dt.UTC)
    ids = []
    for _ in range(5):
        job = new()
        store.create(type(job)(job.id, {**job.doc, "uid": uid, "createdAt": at}, job.server))
        ids.append(job.id)
    ordered = sorted(ids, reverse=True)
    assert [j.id for j in store.recent(uid, 10)] == ordered
    assert [j.id for j in store.recent(uid, 10, (at, ordered[1]))] == ordered[2:]
    assert [j.id for j in store.recent(uid, 2, (at, ordered[0]))] == ordered[1:3]


@pytest.fixture
def unswept_store(backend: Any, request: pytest.FixtureRequest) -> Any:
    """A store no sweeper watches: on the emulator, a project of its own (the session
    stack's sweeper re-publishes a pending job of its project after 3 s, and its worker
    may then claim it before a slowed-down race even starts)."""
    if backend is None:
        return InMemoryJobStore(FakeClock(dt.datetime.now(dt.UTC)))
    return request.getfixturevalue("stack").services(project="demo-contract-race").store


@pytest.mark.parametrize("read_first", [False, True], ids=["transaction", "on-a-read"])
def test_concurrent_claims_give_exactly_one_lease(unswept_store: Any, read_first: bool) -> None:
    """Eight workers race for one job: exactly one claims it. Each of the rest sees it
    busy or, when the contention outlasts its tries (the emulator holds a contended
    write up to 2 s; a slow machine makes that common), is told to come back later
    (``RetryableError`` ``contention``: its delivery is retried, and then sees it busy).
    Also when each decides on its own plain read first (``seen``)."""
    store = unswept_store
    job = new()
    store.create(job)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def race(n: int) -> None:
        seen = store.get(job.id) if read_first else None
        barrier.wait()
        now = dt.datetime.now(dt.UTC)
        try:
            outcomes.append(store.transact(job.id, lambda j: (
                (claim := lifecycle.claim(j, worker_id=f"w{n}", now=now, policy=POLICY,
                                          claim_token=f"t{n}")).change, claim.outcome),
                seen=seen))
        except RetryableError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 8
    assert outcomes.count("claimed") == 1
    assert set(outcomes) <= {"claimed", "busy", "contention"}
    assert store.get(job.id).attempts == 1


def test_a_change_decided_on_a_seen_job_is_written_when_nothing_changed_since(
        store: Any) -> None:
    """``transact(seen=...)``: decided once on the read, written on it, no second read."""
    job = new()
    store.create(job)
    seen = store.get(job.id)
    decided: list[Job | None] = []

    def decide(j: Job | None) -> tuple[Change, str]:
        decided.append(j)
        return Change({"stage": "seen"}, {"checks": sentinels.Increment(1)}), "written"

    assert store.transact(job.id, decide, seen=seen) == "written"
    assert decided == [seen]
    read = store.get(job.id)
    assert (read.stage, read.server.checks) == ("seen", 1)
    # Nothing to write is the answer, with no second read.
    assert store.transact(job.id, lambda j: (None, j), seen=read) is read


@pytest.mark.parametrize("touched", ["public", "server"])
def test_a_seen_job_written_meanwhile_is_decided_again_on_a_fresh_read(
        store: Any, touched: str) -> None:
    """A write between the read and the transaction (to either document): the change
    decided on the stale read does not land; the job is read and decided again."""
    job = new()
    store.create(job)
    seen = store.get(job.id)
    store.apply(job.id, Change({"stage": "meanwhile"}, {}) if touched == "public"
                else Change({}, {"wake": True}))
    decided: list[Job | None] = []

    def decide(j: Job | None) -> tuple[Change, int]:
        decided.append(j)
        return Change({"attempts": sentinels.Increment(1)},
                      {"checks": sentinels.Increment(1)}), len(decided)

    assert store.transact(job.id, decide, seen=seen) == 2
    assert decided[0] is seen
    fresh = decided[1]
    assert fresh is not None and (fresh.stage == "meanwhile" or fresh.server.wake)
    read = store.get(job.id)
    assert (read.attempts, read.server.checks) == (1, 1)  # written once


# --- DeviceStore, Queue, BlobStore --------------------------------------------------------


def device_store(backend: Any) -> tuple[Any, Callable[..., None]]:
    """The device store and how an app registers a device in it (the app writes the
    document itself, under the security rules)."""
    if backend is None:
        devices = InMemoryDevices()
        return devices, devices.register

    def register(uid: str, device_id: str, **doc: Any) -> None:
        backend.firestore.collection("users").document(uid).collection("devices").document(
            device_id).set(doc)

    return backend.devices, register


def test_devices(backend: Any) -> None:
    uid = f"dev-{uuid.uuid4().hex[:8]}"
    devices, register = device_store(backend)
    register(uid, "a", fid="fid-a", platform="android")
    register(uid, "b", token="tok-b", platform="ios")
    register(uid, "c", platform="web")  # no address: not a device
    assert sorted((d.id, d.fid, d.token) for d in devices.devices(uid)) == [
        ("a", "fid-a", ""), ("b", "", "tok-b")]
    [a] = [d for d in devices.devices(uid) if d.id == "a"]
    devices.delete_device(uid, a)
    assert [d.id for d in devices.devices(uid)] == ["b"]


def test_a_dead_address_is_forgotten_but_a_new_one_registered_meanwhile_is_kept(
        backend: Any) -> None:
    """Given a device FCM calls dead whose app registered its new address while the push
    was on its way (a token rotates when FCM stops taking the old one), then the new
    registration is kept; a registration still holding the dead address is deleted, and
    so is the same address under two device ids only once pushed."""
    uid = f"dev-{uuid.uuid4().hex[:8]}"
    devices, register = device_store(backend)
    at = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    register(uid, "phone", token="tok-old", platform="ios", updatedAt=at)
    register(uid, "web", fid="fid-w", platform="web", updatedAt=at)
    register(uid, "web-again", fid="fid-w", platform="web", updatedAt=at + dt.timedelta(1))
    read = {d.id: d for d in devices.devices(uid)}
    assert sorted(read) == ["phone", "web-again"]  # one address, one device
    register(uid, "phone", token="tok-new", platform="ios", updatedAt=at + dt.timedelta(2))
    devices.delete_device(uid, read["phone"])
    assert sorted((d.id, d.token) for d in devices.devices(uid)) == [
        ("phone", "tok-new"), ("web-again", "")]
    devices.delete_device(uid, read["web-again"])
    assert sorted(d.id for d in devices.devices(uid)) == ["phone", "web"]


def test_a_users_newest_device_gets_the_push_among_many_old_ones(backend: Any) -> None:
    """Given 120 stale registrations and, last, the phone in use (its id sorting after
    theirs), then the phone is among the devices a push goes to."""
    uid = f"dev-{uuid.uuid4().hex[:8]}"
    devices, register = device_store(backend)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    if backend is None:
        for n in range(120):
            register(uid, f"a{n:03d}", fid=f"fid-{n}", platform="web", updatedAt=at)
    else:
        writes = backend.firestore.batch()
        for n in range(120):
            writes.set(backend.firestore.collection("users").document(uid).collection(
                "devices").document(f"a{n:03d}"), {"fid": f"fid-{n}", "platform": "web",
                                                   "updatedAt": at})
        writes.commit()
    register(uid, "zz-phone", fid="fid-phone", platform="android",
             updatedAt=at + dt.timedelta(days=300))
    assert "zz-phone" in [d.id for d in devices.devices(uid)]


def test_a_device_another_user_registered_since_is_no_longer_the_first_users(
        backend: Any) -> None:
    """Given a phone registered by one user, then (signed out without deleting it) by
    another, then only the later user's devices hold it, and the earlier user's record of
    it is deleted; a token registered by two users at the same moment stays with both,
    and a third user's own device is untouched."""
    first, later, third = (f"dev-{uuid.uuid4().hex[:8]}" for _ in range(3))
    fid, token = f"fid-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    devices, register = device_store(backend)
    at = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    register(first, "phone", fid=fid, platform="android", updatedAt=at)
    register(first, "tablet", token=token, platform="ios", updatedAt=at)
    register(later, "phone", fid=fid, platform="android", updatedAt=at + dt.timedelta(hours=1))
    register(later, "tablet", token=token, platform="ios", updatedAt=at)
    register(third, "own", fid=f"fid-{uuid.uuid4().hex}", platform="web", updatedAt=at)
    assert [d.id for d in devices.devices(first)] == ["tablet"]
    assert sorted(d.id for d in devices.devices(later)) == ["phone", "tablet"]
    assert [d.id for d in devices.devices(third)] == ["own"]
    register(later, "phone", fid="fid-renewed", platform="android",
             updatedAt=at + dt.timedelta(hours=2))
    assert [d.id for d in devices.devices(first)] == ["tablet"]  # deleted, not hidden


def test_a_push_goes_to_a_users_newest_ten_devices_however_many_they_register(
        backend: Any) -> None:
    """Given a user who registered 14 devices (the rules cannot count them), then a push
    goes to the 10 registered last, each looked up once: not to all of them."""
    from kiln.core.job import MAX_DEVICES

    uid = f"dev-{uuid.uuid4().hex[:8]}"
    devices, register = device_store(backend)
    at = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    for n in range(14):
        register(uid, f"d{n:02d}", fid=f"fid-{uuid.uuid4().hex}", platform="web",
                 updatedAt=at + dt.timedelta(minutes=n))
    assert MAX_DEVICES == 10
    assert sorted(d.id for d in devices.devices(uid)) == [f"d{n:02d}" for n in range(4, 14)]


def test_queue_publish_returns_a_message_id(backend: Any) -> None:
    queue = RecordingQueue() if backend is None else backend.queue
    first = queue.publish("job-contract-1", reason="new")
    second = queue.publish("job-contract-1", reason="sweep-pending")
    assert isinstance(first, str) and first and first != second


def test_blobs_store_validated_streams_only(backend: Any) -> None:
    blobs = InMemoryBlobs() if backend is None else backend.blobs
    path = f"generations/contract/{uuid.uuid4().hex[:8]}/result.png"
    data = b"".join(OfflineProvider(0.0, 0.0, sleep=lambda _s: None).generate(
        GenerationRequest("x", "image", "a cube"), lambda _p, _s: None, lambda: False).chunks)
    stored = blobs.put_stream(path, [data[:100], data[100:]], "image/png", PngValidator(max_bytes=10**6))
    assert (stored.path, stored.bytes, stored.content_type) == (path, len(data), "image/png")
    assert blobs.exists(path) and blobs.read(path) == data
    reader = blobs.open(path, 256 * 1024)
    reader.seek(8)
    assert reader.read(4) == data[8:12]
    reader = blobs.open(path, 100)  # several downloads: reads cross their edges
    assert reader.read(150) == data[:150] and reader.tell() == 150
    assert reader.read(60) == data[150:210]
    assert reader.seek(0, io.SEEK_END) == len(data) and reader.read(10) == b""
    reader.seek(len(data) - 5)
    assert reader.read() == data[-5:] and reader.read() == b""
    reader.seek(0)
    assert reader.read() == data
    reader = blobs.open(path, 100)  # a read past the end says nothing of the size
    reader.seek(len(data) + 500)
    assert reader.read(10) == b"" and reader.seek(0, io.SEEK_END) == len(data)
    reader.close()
    bad = path.replace("result", "broken")
    with pytest.raises(PermanentError):
        blobs.put_stream(bad, [b"not a png at all"], "image/png", PngValidator(max_bytes=10**6))
    assert not blobs.exists(bad)


# --- TaskIndex --------------------------------------------------------------------------


@pytest.fixture
def task_index(backend: Any) -> Any:
    return InMemoryTaskIndex() if backend is None else backend.task_index


def test_task_index_links_a_task_to_its_job(task_index: Any) -> None:
    task = f"task/{uuid.uuid4().hex[:8]}"  # a "/" in a provider's id is kept apart
    assert task_index.link("taskserver", task, "job-1") is False
    assert task_index.job_for("taskserver", task) == "job-1"
    assert task_index.job_for("meshy", task) is None  # per provider
    assert task_index.link("taskserver", task, "job-1") is False  # a repeated link


def test_task_index_reports_a_callback_that_came_before_the_link(task_index: Any) -> None:
    task = f"task-{uuid.uuid4().hex[:8]}"
    assert task_index.job_for("taskserver", task) is None  # remembered as early
    assert task_index.link("taskserver", task, "job-2") is True
    assert task_index.job_for("taskserver", task) == "job-2"


def test_task_index_sees_each_event_once(task_index: Any) -> None:
    event = f"evt-{uuid.uuid4().hex[:8]}"
    assert task_index.first_seen("taskserver", event) is True
    assert task_index.first_seen("taskserver", event) is False
    assert task_index.first_seen("meshy", event) is True
    task_index.forget("taskserver", event)  # its handling failed: the retry is handled
    assert task_index.first_seen("taskserver", event) is True


def test_task_index_sees_an_event_once_among_racers(task_index: Any) -> None:
    event = f"evt-{uuid.uuid4().hex[:8]}"
    seen: list[bool] = []
    threads = [threading.Thread(target=lambda: seen.append(task_index.first_seen("taskserver", event)))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == [False] * 5 + [True]


# --- Scheduler --------------------------------------------------------------------------


class Checks:
    """A scheduler under test and the check messages it published, per job: the fake's
    are released by firing it at their time, the emulator's pulled from a subscription."""

    def __init__(self, scheduler: Any, arrived: Callable[..., list[Any]]) -> None:
        self.scheduler = scheduler
        self.arrived = arrived  # (job id, due at, count) → [(delivery, reason, arrived at)]


@pytest.fixture
def checks(backend: Any, request: pytest.FixtureRequest) -> Any:
    if backend is None:
        queue = RecordingQueue()
        fake = FakeScheduler(queue)

        def fire(job_id: str, at: dt.datetime, count: int = 1) -> list[Any]:
            when = max(at, dt.datetime.now(dt.UTC))
            fake.fire(when)
            return [(d, reason, when) for d, (_j, reason) in zip(queue.deliveries, queue.published,
                                                                 strict=True) if d.job_id == job_id]

        return Checks(fake, fire)
    return Checks(backend.scheduler, request.getfixturevalue("jobs_subscription"))


@pytest.fixture(scope="module")
def jobs_subscription(services: Any) -> Any:
    """A pull subscription on the jobs topic of the session's stack (the worker's push one
    acks every message); a function that waits for a job's check message."""
    from kiln.adapters.pubsub import decode_message

    settings = services.settings
    subscriber = emulator_subscriber(settings.pubsub_emulator_host)
    path = subscriber.subscription_path(settings.project, f"contract-checks-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=path, topic=f"projects/{settings.project}/topics/"
                                                    f"{settings.jobs_topic}")
    seen: dict[str, list[Any]] = {}

    def arrived(job_id: str, at: dt.datetime, count: int = 1) -> list[Any]:
        deadline = time.monotonic() + max(0.0, (at - dt.datetime.now(dt.UTC)).total_seconds()) + 10
        while len(seen.get(job_id, ())) < count and time.monotonic() < deadline:
            answer = subscriber.pull(subscription=path, max_messages=50, timeout=5)
            now = dt.datetime.now(dt.UTC)
            for received in answer.received_messages:
                data = base64.b64encode(received.message.data).decode()
                delivery = decode_message({"message": {"data": data}})
                seen.setdefault(delivery.job_id, []).append(
                    (delivery, received.message.attributes["reason"], now))
            if answer.received_messages:
                subscriber.acknowledge(subscription=path,
                                       ack_ids=[m.ack_id for m in answer.received_messages])
        return seen.get(job_id, [])

    yield arrived
    subscriber.delete_subscription(subscription=path)
    subscriber.transport.close()


def test_scheduler_publishes_the_check_at_its_time_once(checks: Any) -> None:
    """Given a check due in a second, when it is scheduled twice, then the second schedule
    is refused and the jobs topic gets the check message once, not before its time."""
    job_id, at = uuid.uuid4().hex[:20], dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert checks.scheduler.schedule(job_id, 3, at) is True
    assert checks.scheduler.schedule(job_id, 3, at) is False
    ((delivery, reason, when),) = checks.arrived(job_id, at)
    assert (delivery.job_id, delivery.check, reason) == (job_id, 3, "check")
    assert at - dt.timedelta(milliseconds=100) <= when <= at + dt.timedelta(seconds=3)


def test_scheduler_publishes_a_past_check_promptly(checks: Any) -> None:
    """Given a check whose time has passed, when it is scheduled, then it arrives at once;
    another check of the same job is a new task."""
    job_id, now = uuid.uuid4().hex[:20], dt.datetime.now(dt.UTC)
    assert checks.scheduler.schedule(job_id, 1, now - dt.timedelta(minutes=1)) is True
    assert checks.scheduler.schedule(job_id, 2, now - dt.timedelta(minutes=1)) is True
    arrived = checks.arrived(job_id, now, 2)
    assert sorted(d.check for d, _r, _w in arrived) == [1, 2]
    assert max(w for _d, _r, w in arrived) <= now + dt.timedelta(seconds=3)


def test_a_jobs_quota_tickets_are_created_in_its_commit_or_nothing_is(
        store: Any, backend: Any) -> None:
    """``NewJob.tickets`` ride on the create: taken with the job, not at all on a replay,
    and a ticket another request holds fails the create with nothing written."""
    import dataclasses

    from kiln.core.errors import TicketTakenError
    from kiln.core.job import Tickets
    from kiln_dev.fakes_queue import InMemoryCounters

    counters = InMemoryCounters(store) if backend is None else backend.counters
    key = f"quota:contract:{uuid.uuid4().hex}"
    first = dataclasses.replace(new(), tickets=Tickets(key, (1,)))
    assert store.create(first) and counters.used(key) == 1
    assert not store.create(dataclasses.replace(first, tickets=Tickets(key, (2,))))  # replay
    assert counters.used(key) == 1
    second = dataclasses.replace(new(), tickets=Tickets(key, (1,)))
    with pytest.raises(TicketTakenError):
        store.create(second)
    assert store.get(second.id) is None and counters.used(key) == 1


def test_concurrent_creates_each_get_their_own_answer(store: Any, backend: Any) -> None:
    """Given 16 creates at once (the real store's creates share commits: see
    tests/integration/test_group_creates.py): twelve new jobs, one new job twice, a
    replay and a job whose quota ticket another holds, then each new job is created once
    (the doubled one True for exactly one caller), the replay is False, the ticket's job
    raises TicketTakenError and is not written, and no other answer depends on theirs."""
    import dataclasses

    from kiln.core.errors import TicketTakenError
    from kiln.core.job import Tickets
    from kiln_dev.fakes_queue import InMemoryCounters

    if backend is None:
        InMemoryCounters(store)  # the fake store's tickets
    key = f"quota:contract:{uuid.uuid4().hex}"
    existing = new()
    assert store.create(existing)
    assert store.create(dataclasses.replace(new(), tickets=Tickets(key, (1,))))
    fresh, twice = [new() for _ in range(12)], new()
    taken = dataclasses.replace(new(), tickets=Tickets(key, (1,)))
    jobs = [*fresh, twice, twice, existing, taken]
    start, results = threading.Barrier(len(jobs)), [None] * len(jobs)

    def create(index: int) -> None:
        start.wait()
        try:
            results[index] = store.create(jobs[index])
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()

    assert results[:12] == [True] * 12
    assert sorted(results[12:14]) == [False, True] and results[14] is False
    assert isinstance(results[15], TicketTakenError) and store.get(taken.id) is None
    assert all(store.get(job.id) is not None for job in [*fresh, twice, existing])
