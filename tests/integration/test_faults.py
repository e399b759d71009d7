"""The fault proxies against the real emulators: they pass traffic, and they break it.

Uses the shared session stack's emulators only through proxies of its own, so the
session stack itself never sees a fault.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.adapters.firestore import connect
from kiln.adapters.firestore_queue import COUNT_TIMEOUT, FirestoreCounters
from kiln.adapters.pubsub import PubSubQueue
from kiln.core.errors import RetryableError
from kiln_dev.faults import HttpFaultProxy, TcpProxy
from kiln_dev.stack import LocalStack
from support import wait_for


@pytest.fixture
def storage_proxy(stack: LocalStack) -> Iterator[HttpFaultProxy]:
    proxy = HttpFaultProxy(stack.config.host, stack.config.storage_port, seed=3).start()
    yield proxy
    proxy.stop()


def _media_upload(proxy: HttpFaultProxy, stack: LocalStack, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{proxy.url}/upload/storage/v1/b/{stack.bucket}/o",
                      params={"uploadType": "media", "name": name}, content=data,
                      headers={"Content-Type": "application/octet-stream"}, timeout=10)


def test_http_proxy_passes_uploads_and_downloads(storage_proxy: HttpFaultProxy,
                                                 stack: LocalStack, services: Any) -> None:
    """Given a calm proxy, when uploading and downloading through it, then the bytes
    arrive intact and the request is counted."""
    name = f"faults/{uuid.uuid4().hex}.bin"
    assert _media_upload(storage_proxy, stack, name, b"through the proxy").status_code == 200
    assert services.blobs.read(name) == b"through the proxy"
    download = httpx.get(f"{storage_proxy.url}/download/storage/v1/b/{stack.bucket}/o/"
                         f"{name.replace('/', '%2F')}", params={"alt": "media"}, timeout=10)
    assert download.content == b"through the proxy"
    assert storage_proxy.stats["requests"] == 2


def test_http_proxy_injects_503_without_forwarding(storage_proxy: HttpFaultProxy,
                                                   stack: LocalStack, services: Any) -> None:
    """Given error_rate 1, when uploading, then the client gets a 503 JSON error and the
    object is never created."""
    storage_proxy.error_rate = 1.0
    name = f"faults/{uuid.uuid4().hex}.bin"
    response = _media_upload(storage_proxy, stack, name, b"x")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == 503
    assert not services.blobs.exists(name)
    assert storage_proxy.stats["error"] == 1


def test_http_proxy_resets_before_and_after_forwarding(storage_proxy: HttpFaultProxy,
                                                       stack: LocalStack, services: Any) -> None:
    """Given resets, when uploading, then the client sees a broken connection either way;
    a reset *after* forwarding leaves the object created (the client never heard)."""
    before, after = f"faults/{uuid.uuid4().hex}", f"faults/{uuid.uuid4().hex}"
    storage_proxy.reset_rate = 1.0
    with pytest.raises(httpx.TransportError):
        _media_upload(storage_proxy, stack, before, b"x")
    storage_proxy.calm()
    storage_proxy.reset_after_rate = 1.0
    with pytest.raises(httpx.TransportError):
        _media_upload(storage_proxy, stack, after, b"y")
    assert not services.blobs.exists(before)
    assert services.blobs.read(after) == b"y"


def test_http_proxy_faults_only_matching_requests(storage_proxy: HttpFaultProxy,
                                                  stack: LocalStack) -> None:
    """Given a matcher for uploads, when both uploads and reads go through, then only
    uploads fail; and ``down`` resets everything regardless."""
    storage_proxy.error_rate = 1.0
    storage_proxy.match = lambda method, path: path.startswith("/upload/")
    assert _media_upload(storage_proxy, stack, "faults/m", b"x").status_code == 503
    listing = httpx.get(f"{storage_proxy.url}/storage/v1/b/{stack.bucket}/o", timeout=10)
    assert listing.status_code == 200
    storage_proxy.down = True
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{storage_proxy.url}/storage/v1/b/{stack.bucket}/o", timeout=10)


def test_a_fresh_instance_admits_without_waiting_for_the_waiting_count(stack: LocalStack) -> None:
    """Given Firestore unreachable (its proxy down) and counters with no count yet, then
    the admission's ``waiting(unknown=0)`` answers 0 at once (the read goes on in the
    background), where a plain ``waiting()`` fails as unavailable within its timeout."""
    proxy = TcpProxy(stack.config.host, stack.config.firestore_port).start()
    try:
        counters = FirestoreCounters(connect(stack.config.project, proxy.address))
        proxy.down()
        assert counters.waiting(unknown=0) == 0
        assert counters.waiting(unknown=0) == 0  # one background read at a time
        started = time.monotonic()
        with pytest.raises(RetryableError):
            FirestoreCounters(counters.client).waiting()
        assert time.monotonic() - started < COUNT_TIMEOUT + 2
    finally:
        proxy.stop()


def test_tcp_proxy_cuts_pubsub_and_restores_it(stack: LocalStack, services: Any) -> None:
    """Given the Pub/Sub emulator behind a TCP proxy, when the proxy goes down, then a
    publish fails as RetryableError (queue_unavailable) within the publish timeout, and
    publishing works again after it is up (once gRPC has reconnected)."""
    proxy = TcpProxy(stack.config.host, stack.config.pubsub_port).start()
    try:
        # A queue on the proxy, given explicitly (the environment still names the emulator).
        queue = PubSubQueue.connect(stack.config.project, services.settings.jobs_topic,
                                    emulator_host=proxy.address, timeout=2.0)
        assert queue.publish("proxyjob0001", reason="test")
        proxy.down()
        started = time.monotonic()
        with pytest.raises(RetryableError) as caught:
            queue.publish("proxyjob0002", reason="test")
        assert caught.value.code == "queue_unavailable"
        assert time.monotonic() - started <= queue.timeout + 2
        assert proxy.stats["refused"] > 0
        proxy.up()

        def publish() -> str | None:
            # gRPC reconnects with its own backoff after an outage: the first publishes
            # after it may still fail (the sweeper covers those jobs).
            try:
                return queue.publish("proxyjob0003", reason="test")
            except RetryableError:
                return None

        assert wait_for(publish, 90, interval=0.5, what="publishing after the outage")
    finally:
        proxy.stop()


def test_a_stored_result_whose_read_fails_is_storage_unavailable(
        storage_proxy: HttpFaultProxy, stack: LocalStack, services: Any) -> None:
    """Given a stored result, when Storage answers its reads 503 (through the fault proxy),
    then the reader raises RetryableError storage_unavailable (a Telegram upload of the
    file tries again later), not the client's own error (which sent the link instead);
    once Storage answers, the same reader reads on."""
    from kiln.adapters.storage import CloudStorage
    path = f"faults/read-{uuid.uuid4().hex[:8]}.bin"
    data = bytes(range(256)) * 64
    services.blobs.put_bytes(path, data, "application/octet-stream")
    blobs = CloudStorage(stack.bucket, project=stack.config.project,
                         emulator_host=storage_proxy.url, read_retry=None)  # fails at once
    reader = blobs.open(path, 4096)
    storage_proxy.error_rate = 1.0
    with pytest.raises(RetryableError) as info:
        reader.read(100)
    assert info.value.code == "storage_unavailable"
    storage_proxy.error_rate = 0.0
    reader.seek(0)
    assert reader.read(100) == data[:100]
    reader.close()


def test_a_stalled_read_of_a_stored_result_ends_with_the_call_it_serves(
        storage_proxy: HttpFaultProxy, stack: LocalStack, services: Any) -> None:
    """Given a stored result read inside a call that must end in 0.5 s (a Telegram
    upload of the file, :func:`kiln.paced.ending_by`), when Storage stalls the read, then
    the read gives up by the call's end with RetryableError (the delivery is tried again
    later), instead of waiting out Storage's 60 s per request and its retries; with no
    time left it does not ask Storage at all."""
    from kiln.adapters.storage import CloudStorage
    from kiln.paced import ending_by
    path = f"faults/stall-{uuid.uuid4().hex[:8]}.bin"
    services.blobs.put_bytes(path, b"x" * 5000, "application/octet-stream")
    blobs = CloudStorage(stack.bucket, project=stack.config.project,
                         emulator_host=storage_proxy.url)
    reader = blobs.open(path, 4096)
    storage_proxy.hold = threading.Event()
    try:
        started = time.monotonic()
        with ending_by(started + 0.5), pytest.raises(RetryableError):
            reader.read(100)
        assert time.monotonic() - started < 5.0
        held = storage_proxy.stats["held"]
        with ending_by(time.monotonic() - 1), pytest.raises(RetryableError) as info:
            reader.read(100)
        assert info.value.code == "storage_timeout"
        assert storage_proxy.stats["held"] == held
    finally:
        storage_proxy.hold.set()
        storage_proxy.hold = None
    with ending_by(time.monotonic() + 30):
        assert reader.read(100) == b"x" * 100


def test_reads_left_stalled_do_not_hold_up_the_next_one(
        storage_proxy: HttpFaultProxy, stack: LocalStack, services: Any) -> None:
    """Given five reads of one object that Storage stalls, each given up at its call's end
    (0.3 s), then a read of another object, while they still hang, is served at once:
    an abandoned read holds no worker a later read waits for."""
    from kiln.adapters.storage import CloudStorage
    from kiln.paced import ending_by
    stalled, fine = (f"faults/{name}-{uuid.uuid4().hex[:8]}.bin" for name in ("held", "fine"))
    services.blobs.put_bytes(stalled, b"s" * 100, "application/octet-stream")
    services.blobs.put_bytes(fine, b"f" * 100, "application/octet-stream")
    blobs = CloudStorage(stack.bucket, project=stack.config.project,
                         emulator_host=storage_proxy.url, read_retry=None)
    storage_proxy.match = lambda _method, url: "held-" in url
    storage_proxy.hold = threading.Event()
    try:
        for _ in range(5):
            with ending_by(time.monotonic() + 0.3), pytest.raises(RetryableError):
                blobs.open(stalled, 4096).read(10)
        started = time.monotonic()
        with ending_by(started + 5):
            assert blobs.open(fine, 4096).read(10) == b"f" * 10
        assert time.monotonic() - started < 2.0
    finally:
        storage_proxy.hold.set()


def test_a_read_storage_drips_ends_with_the_call_it_serves(
        storage_proxy: HttpFaultProxy, stack: LocalStack, services: Any) -> None:
    """Given a stored result read inside a call that must end in 1 s, when Storage sends
    the answer one byte every 0.1 s (each socket read well within its timeout, the whole
    answer 6.4 s), then the read gives up by the call's end with ``storage_timeout``."""
    from kiln.adapters.storage import CloudStorage
    from kiln.paced import ending_by
    path = f"faults/drip-{uuid.uuid4().hex[:8]}.bin"
    services.blobs.put_bytes(path, b"y" * 64, "application/octet-stream")
    blobs = CloudStorage(stack.bucket, project=stack.config.project,
                         emulator_host=storage_proxy.url)
    reader = blobs.open(path, 4096)
    storage_proxy.match = lambda method, _url: method == "GET"
    storage_proxy.drip = 0.1
    try:
        started = time.monotonic()
        with ending_by(started + 1.0), pytest.raises(RetryableError) as info:
            reader.read(64)
        assert info.value.code == "storage_timeout"
        assert time.monotonic() - started < 2.5
    finally:
        storage_proxy.calm()
        storage_proxy.match = lambda _method, _url: True


def test_an_upload_storage_refuses_is_storage_unavailable_and_leaves_nothing(
        storage_proxy: HttpFaultProxy, stack: LocalStack, services: Any) -> None:
    """Given Storage answering a resumable upload's pieces 503 (the client's own
    InvalidResponse, not an API error), then put_stream raises RetryableError
    storage_unavailable and no object is left."""
    from kiln.adapters.storage import CloudStorage
    blobs = CloudStorage(stack.bucket, project=stack.config.project,
                         emulator_host=storage_proxy.url, chunk_size=256 * 1024,
                         upload_retry=None)  # fails at once
    path = f"faults/upload-{uuid.uuid4().hex[:8]}.bin"
    storage_proxy.match = lambda method, url: method == "PUT"  # the pieces, not the session
    storage_proxy.error_rate = 1.0
    with pytest.raises(RetryableError) as info:
        blobs.put_stream(path, [b"x" * 200_000] * 3, "application/octet-stream")
    assert info.value.code == "storage_unavailable"
    assert not services.blobs.exists(path)
