"""What the real adapters do beyond their port contracts (``tests/contract``): Firestore's
lock contention, Pub/Sub's message format, resumable uploads, firebase-admin's FCM client."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln import tracing
from kiln.adapters.fcm import FcmPush
from kiln.adapters.firestore import in_transaction
from kiln.adapters.pubsub import decode_message
from kiln.core import lifecycle, sentinels
from kiln.core.errors import PermanentError
from kiln.core.job import Change, Device
from kiln.core.policy import RetryPolicy
from kiln.core.requests import parse_job_request
from kiln.runtime.artifacts import GlbValidator
from kiln.settings import Settings
from kiln_dev.stack import emulator_subscriber


def test_deadlocked_transactions_end_with_one_write(services: Any) -> None:
    """Two transactions that both read before either commits deadlock on the emulator's
    locks (one is aborted after its lock timeout): exactly one writes, and the other comes
    back with the answer from what the winner wrote, not an error."""
    ref = services.firestore.collection("kilnTestLocks").document(uuid.uuid4().hex)
    ref.set({"owner": None})
    both_read = threading.Barrier(2, timeout=30)
    outcomes: list[str] = []

    def race(name: str) -> None:
        tries = 0

        def body(tx: Any) -> str:
            nonlocal tries
            tries += 1
            owner = (ref.get(transaction=tx).to_dict() or {}).get("owner")
            if tries == 1:
                both_read.wait()  # both hold their read locks now
            if owner is not None:
                return "lost"
            tx.update(ref, {"owner": name})
            return "won"

        def settled() -> tuple[bool, str]:
            return (ref.get().to_dict() or {}).get("owner") is not None, "lost"

        outcomes.append(in_transaction(services.firestore, body, settled=settled))

    threads = [threading.Thread(target=race, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost", "won"]
    assert ref.get().to_dict()["owner"] in ("a", "b")


def test_a_write_on_a_read_that_meets_another_transactions_lock_is_decided_again(
        services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``transact(seen=...)`` while another transaction holds the job's documents: the
    emulator aborts the waiting commit after its 2 s lock timeout; the change is then
    decided again in a transaction once the lock is gone, and written once (the claim's
    and the completion's path in the worker, never a release for retry)."""
    store = services.store
    job = lifecycle.new_job(job_id=uuid.uuid4().hex[:20], uid="locks", channel="app",
                            now=dt.datetime.now(dt.UTC), policy=RetryPolicy(),
                            request=parse_job_request({"kind": "image", "prompt": "a cube"}))
    store.create(job)
    seen = store.get(job.id)
    holder = store.client.transaction(max_attempts=1)
    holder._begin()
    list(store.client.get_all([store.ref(job.id), store.server_ref(job.id)], transaction=holder))
    aborted = threading.Event()
    real_batch = store.client.batch

    def observed_batch() -> Any:  # the real batch; its commit's Aborted is only noticed
        batch = real_batch()
        commit = batch.commit

        def noticed(*args: Any, **kwargs: Any) -> Any:
            try:
                return commit(*args, **kwargs)
            except gexc.Aborted:
                aborted.set()
                raise
        batch.commit = noticed
        return batch

    monkeypatch.setattr(store.client, "batch", observed_batch)
    decided: list[Any] = []
    answer: list[Any] = []

    def decide(current: Any) -> tuple[Change, int]:
        decided.append(current)
        return Change({"stage": "decided"}, {"checks": sentinels.Increment(1)}), len(decided)

    def write() -> None:
        try:
            answer.append(store.transact(job.id, decide, seen=seen))
        except Exception as exc:  # the assertion below shows it
            answer.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert aborted.wait(30), "the commit on the read was not held by the lock"
    holder._rollback()
    writer.join(60)
    assert answer == [2] and decided[0] is seen
    read = store.get(job.id)
    assert (read.stage, read.server.checks) == ("decided", 1)


@pytest.fixture
def jobs_subscription(services: Any, stack: Any) -> Iterator[tuple[Any, str]]:
    """A pull subscription of its own on the jobs topic (subscriber, path), deleted after."""
    subscriber = emulator_subscriber(services.settings.pubsub_emulator_host)
    sub = subscriber.subscription_path(stack.config.project, f"t-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=sub, topic=services.queue.topic_path)
    yield subscriber, sub
    subscriber.delete_subscription(subscription=sub)
    subscriber.transport.close()


def test_publish_reaches_a_subscriber_as_job_id(
        services: Any, jobs_subscription: tuple[Any, str]) -> None:
    """A published job id arrives as base64 JSON that decode_message reads back; with
    tracing off it carries no trace context, with tracing on the emulator delivers the
    ``traceparent`` attribute and the delivery continues the publish's trace."""
    subscriber, sub = jobs_subscription

    def pulled() -> Any:
        response = subscriber.pull(subscription=sub, max_messages=1, timeout=10)
        (received,) = response.received_messages
        subscriber.acknowledge(subscription=sub, ack_ids=[received.ack_id])
        return received.message

    services.queue.publish("abcdef123456")
    message = pulled()
    data = {"message": {"data": base64.b64encode(message.data).decode()}}
    assert decode_message(data).job_id == "abcdef123456"
    assert dict(message.attributes) == {"jobId": "abcdef123456", "reason": "new"}

    spans = InMemorySpanExporter()
    tracing.configure(Settings(trace_sample=1.0), exporter=spans)
    try:
        services.queue.publish("abcdef123456")
        message = pulled()
        envelope = {"message": {"data": base64.b64encode(message.data).decode(),
                                "attributes": dict(message.attributes)}}
        tracing.delivered(lambda data: decode_message(data))(envelope)
    finally:
        tracing.configure(Settings())
    found = {s.name: s for s in spans.get_finished_spans()}
    assert found["kiln.deliver"].parent.span_id == found["pubsub.publish"].context.span_id
    assert found["kiln.deliver"].context.trace_id == found["pubsub.publish"].context.trace_id


def test_concurrent_publishes_each_arrive_once_with_their_own_id(
        services: Any, jobs_subscription: tuple[Any, str]) -> None:
    """Given 32 threads publishing 8 jobs each at once (publishes made while a call is on
    the wire share the next one), every job arrives exactly once, with its own attributes
    and the message id its publisher was given."""
    subscriber, sub = jobs_subscription
    start = threading.Barrier(32)
    given: dict[str, str] = {}

    def publisher(n: int) -> None:
        start.wait()
        for i in range(8):
            job_id = f"group{n:03d}{i:04d}"
            given[job_id] = services.queue.publish(job_id, reason="new", check=i)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(given) == 256 and len(set(given.values())) == 256

    received: dict[str, Any] = {}
    while len(received) < 256:
        response = subscriber.pull(subscription=sub, max_messages=100, timeout=10)
        assert response.received_messages, f"{256 - len(received)} messages never arrived"
        subscriber.acknowledge(subscription=sub,
                               ack_ids=[r.ack_id for r in response.received_messages])
        for r in response.received_messages:
            job_id = r.message.attributes["jobId"]
            assert job_id not in received, f"{job_id} arrived twice"
            received[job_id] = r.message
    assert {job_id: m.message_id for job_id, m in received.items()} == given
    for job_id, message in received.items():
        envelope = {"message": {"data": base64.b64encode(message.data).decode()}}
        assert decode_message(envelope).job_id == job_id
        assert message.attributes["check"] == str(int(job_id[-4:]))


@pytest.mark.parametrize("data", [None, {}, {"message": {"data": "%%%"}},
                                  {"message": {"data": base64.b64encode(b"[1]").decode()}},
                                  {"message": {"data": base64.b64encode(
                                      json.dumps({"jobId": "../../x"}).encode()).decode()}}])
def test_poison_messages_are_permanent(data: Any) -> None:
    """Unreadable payloads raise PermanentError('poison_message'), never retry."""
    with pytest.raises(PermanentError) as info:
        decode_message(data)
    assert info.value.code == "poison_message"


def test_blob_stream_is_checksummed_and_typed(services: Any) -> None:
    """Chunks uploaded resumably come back byte-identical with type, size and sha256."""
    import hashlib

    data = bytes(range(256)) * 4096 * 3  # 3 MiB, several upload pieces
    path = f"generations/u/{uuid.uuid4().hex[:8]}/result.bin"
    stored = services.blobs.put_stream(path, [data[i:i + 100_000] for i in range(0, len(data),
                                                                                  100_000)],
                                       "application/octet-stream")
    assert stored.bytes == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert services.blobs.read(path) == data
    blob = services.blobs.bucket.get_blob(path)
    assert blob.content_type == "application/octet-stream"
    assert blob.metadata["firebaseStorageDownloadTokens"]


def test_a_one_piece_blob_is_stored_whole_with_its_metadata(services: Any) -> None:
    """A file of one piece (a thumbnail, most images) goes up in one request, once
    validated, with the same type, token and caching as a streamed one."""
    import hashlib

    data = b"\x89PNG small" * 100
    path = f"generations/u/{uuid.uuid4().hex[:8]}/thumb.png"
    stored = services.blobs.put_bytes(path, data, "image/png")
    assert stored.bytes == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert services.blobs.read(path) == data
    blob = services.blobs.bucket.get_blob(path)
    assert blob.content_type == "image/png" and blob.cache_control == "private, max-age=3600"
    assert blob.metadata["firebaseStorageDownloadTokens"]


def test_invalid_artifact_leaves_nothing_in_the_bucket(services: Any) -> None:
    """A GLB that fails validation raises and no object (not even partial) exists."""
    path = f"generations/u/{uuid.uuid4().hex[:8]}/result.glb"
    bogus = [b"glTF" + b"\x02\x00\x00\x00" + b"\xff" * 4] + [b"\x00" * 1_000_000] * 3
    with pytest.raises(PermanentError):
        services.blobs.put_stream(path, bogus, "model/gltf-binary", GlbValidator())
    assert not services.blobs.exists(path)
    assert services.blobs.list(path.rsplit("/", 1)[0]) == []


def test_fcm_client_sends_and_reports_dead_devices(services: Any, fcm: Any) -> None:
    """firebase-admin's client hits the local FCM server; UNREGISTERED (FID or token) is
    reported dead, UNAVAILABLE only failed."""
    fcm.fail("fid-gone", "UNREGISTERED")
    fcm.fail("tok-gone", "UNREGISTERED")
    fcm.fail("fid-busy", "UNAVAILABLE")
    push: FcmPush = services.push
    devices = [Device("d1", fid="fid-ok"), Device("d2", fid="fid-gone"), Device("d3", fid="fid-busy"),
               Device("d4", token="tok-gone"), Device("d5", token="tok-ok")]
    result = push.send(devices, "t", "b", {"type": "generation_completed", "jobId": "j",
                                           "kind": "image", "link": "/jobs/j"})
    assert (result.sent, result.failed, sorted(result.dead_devices)) == (2, 3, ["d2", "d4"])
    sent = [m["message"] for m in fcm.messages[-2:]]
    assert sorted(m.get("fid") or m["token"] for m in sent) == ["fid-ok", "tok-ok"]
    assert all(m["data"]["jobId"] == "j" for m in sent)


@contextlib.contextmanager
def answer_lost(monkeypatch: pytest.MonkeyPatch, owner: type, name: str,
                error: Exception) -> Iterator[None]:
    """Inside, the SDK method ``owner.name`` does its write, then raises ``error``: the
    write landed, its answer was lost (what the SDK's own retry of it then meets)."""
    real = getattr(owner, name)

    def landed_then_lost(self: Any, *args: Any, **kwargs: Any) -> Any:
        real(self, *args, **kwargs)
        raise error

    monkeypatch.setattr(owner, name, landed_then_lost)
    try:
        yield
    finally:
        monkeypatch.setattr(owner, name, real)


def test_a_registration_whose_commit_landed_before_its_retry_keeps_its_one_slot(
        services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an endpoint's commit that lands but whose answer is lost, so the SDK's retry
    of it meets its own slot (AlreadyExists), then the registration succeeds in that one
    slot: the endpoint names it, and no second slot is taken."""
    from google.cloud.firestore_v1.batch import WriteBatch

    from kiln.webhooks import model
    from kiln.webhooks.model import Endpoint

    tenant = "t-" + uuid.uuid4().hex[:8]
    endpoint = Endpoint(model.new_endpoint_id(), tenant, "https://a.example/h",
                        model.new_secret(), (), created_at=dt.datetime.now(dt.UTC))
    with answer_lost(monkeypatch, WriteBatch, "commit",
                     gexc.AlreadyExists("Document already exists")):
        assert services.webhooks.put_endpoint(endpoint, limit=2) is True
    slots = services.firestore.collection("webhookTenants").document(tenant).collection(
        "endpointSlots").get()
    assert [(s.id, s.to_dict()["endpoint"]) for s in slots] == [("0", endpoint.id)]
    stored = services.firestore.collection("webhookEndpoints").document(endpoint.id).get()
    assert stored.to_dict()["slot"] == 0


def test_a_device_registered_again_while_its_move_is_decided_is_kept(
        services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given alice's phone registered later by bob, when alice signs in on it again while
    a push for her decides it moved (between the read and the delete), then her new
    registration is not deleted."""
    users = services.firestore.collection("users")
    alice, bob = (f"dev-{uuid.uuid4().hex[:8]}" for _ in range(2))
    fid, at = f"fid-{uuid.uuid4().hex}", dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    phone = users.document(alice).collection("devices").document("phone")
    phone.set({"fid": fid, "platform": "android", "updatedAt": at})
    users.document(bob).collection("devices").document("phone").set(
        {"fid": fid, "platform": "android", "updatedAt": at + dt.timedelta(hours=1)})
    store = services.devices
    elsewhere = store._elsewhere

    def signed_in_again(uid: str, device: Device) -> list[Device]:
        found = elsewhere(uid, device)
        phone.set({"fid": fid, "platform": "android", "updatedAt": at + dt.timedelta(hours=2)})
        return found

    monkeypatch.setattr(store, "_elsewhere", signed_in_again)
    assert store.devices(alice) == []  # as read, it had moved
    assert phone.get().exists


def test_a_delete_whose_commit_landed_before_its_retry_is_a_delete(
        services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an endpoint delete that lands but whose answer is lost, so the SDK's retry
    meets its own precondition (the endpoint is gone), then the delete says it deleted it
    (the API's 204, not a 404), and its slot is free for the next registration."""
    from google.cloud.firestore_v1.batch import WriteBatch

    from kiln.webhooks import model
    from kiln.webhooks.model import Endpoint

    tenant = "t-" + uuid.uuid4().hex[:8]

    def endpoint() -> Endpoint:
        return Endpoint(model.new_endpoint_id(), tenant, "https://a.example/h",
                        model.new_secret(), (), created_at=dt.datetime.now(dt.UTC))

    first = endpoint()
    assert services.webhooks.put_endpoint(first, limit=1) is True
    with answer_lost(monkeypatch, WriteBatch, "commit", gexc.NotFound("No document to update")):
        assert services.webhooks.delete_endpoint(first.id) is True
    assert services.webhooks.endpoint(first.id) is None
    assert services.webhooks.put_endpoint(endpoint(), limit=1) is True


def test_a_batch_end_marker_whose_answer_was_lost_is_still_the_callers(
        services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the create of a batch's end marker that lands but whose answer is lost (a
    deadline), then the call that made it is still told it was first (it sends the one
    push), and any other call is not."""
    from google.cloud.firestore_v1.document import DocumentReference

    batch_id = "b" + uuid.uuid4().hex[:19]
    with answer_lost(monkeypatch, DocumentReference, "create",
                     gexc.DeadlineExceeded("Deadline exceeded")):
        assert services.batches.mark_ended(batch_id, "mine") is True
    assert services.batches.mark_ended(batch_id, "theirs") is False
    assert services.batches.ended_at(batch_id) is not None
