"""The real adapters against the emulators: store, queue, blobs, push."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from typing import Any

import pytest
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

from kiln.adapters.fcm import FcmPush
from kiln.adapters.firestore import JobStore, in_transaction, utcnow
from kiln.adapters.pubsub import decode_message
from kiln.core import lifecycle
from kiln.core.errors import PermanentError
from kiln.core.job import Device
from kiln.core.requests import parse_job_request
from kiln.runtime.artifacts import GlbValidator


def new_doc(uid: str = "u") -> dict[str, Any]:
    return lifecycle.new_job(uid=uid, channel="app", now=utcnow(), max_age_seconds=3600,
                             request=parse_job_request({"kind": "image", "prompt": "a cat"}))


def test_create_is_once_per_id(services: Any) -> None:
    """Given a job id, the first create wins and the second reports it exists."""
    job_id = uuid.uuid4().hex[:20]
    assert services.store.create(job_id, new_doc())
    assert not services.store.create(job_id, new_doc("other"))
    assert services.store.get(job_id)["uid"] == "u"


def test_concurrent_claims_give_exactly_one_lease(stack: Any) -> None:
    """Eight workers claim the same job at once: exactly one gets it (transactions). The
    job lives in a project of its own, so the stack's sweeper and worker never touch it."""
    store = JobStore(firestore.Client(project=f"demo-claims-{uuid.uuid4().hex[:8]}"))
    job_id = uuid.uuid4().hex[:20]
    store.create(job_id, new_doc())
    outcomes: list[str] = []

    def claim(worker: str) -> None:
        def decide(job: dict[str, Any] | None) -> tuple[Any, str]:
            c = lifecycle.claim(job or {}, worker_id=worker, now=utcnow(), lease_seconds=60,
                                max_attempts=3, claim_token=worker)
            return c.updates, c.outcome

        outcomes.append(store.transact(job_id, decide))

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["busy"] * 7 + ["claimed"]
    assert (store.get(job_id) or {})["attempts"] == 1


def test_deadlocked_transactions_end_with_one_write(services: Any) -> None:
    """Two transactions that both read before either commits deadlock on the emulator's
    locks (one is aborted after its lock timeout): exactly one writes, and the other comes
    back with the answer from what the winner wrote, not an error."""
    ref = services.store.client.collection("kilnTestLocks").document(uuid.uuid4().hex)
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

        outcomes.append(in_transaction(services.store.client, body, settled=settled))

    threads = [threading.Thread(target=race, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost", "won"]
    assert ref.get().to_dict()["owner"] in ("a", "b")


def test_publish_reaches_a_subscriber_as_job_id(services: Any, stack: Any) -> None:
    """A published job id arrives as base64 JSON that decode_message reads back."""
    subscriber = pubsub_v1.SubscriberClient()
    sub = subscriber.subscription_path(stack.config.project, f"t-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=sub, topic=services.queue.topic_path)
    services.queue.publish("abcdef123456")
    response = subscriber.pull(subscription=sub, max_messages=1, timeout=10)
    message = response.received_messages[0].message
    data = {"message": {"data": base64.b64encode(message.data).decode()}}
    assert decode_message(data) == "abcdef123456"
    assert message.attributes["jobId"] == "abcdef123456"
    subscriber.delete_subscription(subscription=sub)


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


def test_devices_are_read_and_deleted(services: Any) -> None:
    """Devices under users/{uid}/devices are listed (FID or legacy token; a document with
    neither is skipped) and a dead one removed."""
    uid = f"u-{uuid.uuid4().hex[:6]}"
    devices = services.firestore.collection("users").document(uid).collection("devices")
    devices.document("a").set({"fid": "fa", "platform": "ios", "updatedAt": dt.datetime.now()})
    devices.document("b").set({"token": "tb", "platform": "android"})
    devices.document("c").set({"platform": "web"})
    assert sorted(services.store.devices(uid), key=lambda d: d.id) == [
        Device("a", fid="fa"), Device("b", token="tb")]
    services.store.delete_device(uid, "a")
    assert services.store.devices(uid) == [Device("b", token="tb")]
