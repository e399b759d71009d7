"""A push relay for the local stack: Pub/Sub push with the cloud's concurrency.

The Pub/Sub emulator's push loop carries at most two requests at once per subscription
(measured: 16 pushes to an endpoint that holds each for 2 s take 16 s), so on a `kiln dev`
stack two slow jobs stall every other one, where the cloud pushes as many as the worker's
instances accept. ``PushRelay`` pulls from a *pull* subscription with flow control
(``concurrency`` messages outstanding) and POSTs each message to the worker in the push
format (``{"message": {data, attributes, messageId, publishTime}, "subscription"}``), on
its own thread: a 2xx acks, anything else is retried after the subscription's backoff
(1 s doubling to 10 s, as the stack's push subscription is configured), as Pub/Sub does.
A hung delivery holds one slot, never the others. It pulls over several streams whose
polls are spread in time, as the emulator answers a waiting pull only about every 50 ms.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

MIN_BACKOFF, MAX_BACKOFF = 1.0, 10.0
#: The emulator's streaming pull looks for messages, then sleeps 50 ms: one stream
#: delivers a message 25 ms after its publish on average (measured: p50 37 ms). Each
#: stream's period is 50 ms plus its work, so the streams' polls drift: four started
#: spread apart measured p50 11.5 ms in one run and 21.8 ms (p90 33 ms) in the next, once
#: their polls had drifted together; eight, 10.5–10.9 ms with p90 ≤ 17 ms; twelve 9.6–9.8
#: ms (publish → a bare endpoint, 2 runs × 40). The idle emulator's CPU stayed within its
#: noise (10–21 % of a core) from 0 to 12 extra streams.
EMULATOR_POLL, STREAMS = 0.05, 8


class PushRelay:
    """Relays ``subscription`` (a pull subscription) to ``endpoint``, ``concurrency`` at once."""

    def __init__(self, emulator_host: str, subscription: str, endpoint: str, *,
                 concurrency: int, timeout: float = 600.0, streams: int = STREAMS) -> None:
        self.subscription, self.endpoint = subscription, endpoint
        self.concurrency, self.timeout = concurrency, timeout
        self._channels = [grpc.insecure_channel(emulator_host) for _ in range(streams)]
        self._subscribers = [pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=channel)) for channel in self._channels]
        self._slots = threading.Semaphore(concurrency)
        self._http = httpx.Client(timeout=timeout, limits=httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency))
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open = threading.Event()  # cleared: deliveries wait (``hold``)
        self._open.set()
        self._threads: list[threading.Thread] = []
        self.in_flight = 0
        self.peak = 0

    def start(self) -> PushRelay:
        for n, subscriber in enumerate(self._subscribers):
            if n:  # the streams' polls fall at different moments
                self._stop.wait(EMULATOR_POLL / len(self._subscribers))
            thread = threading.Thread(target=self._run, args=(subscriber,), daemon=True,
                                      name=f"push-relay-{n}")
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, subscriber: Any) -> None:
        """Pull until stopped; a broken stream (an emulator restart) is opened again."""
        while not self._stop.is_set():
            executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="push")
            future = subscriber.subscribe(
                self.subscription, self._deliver,
                flow_control=pubsub_v1.types.FlowControl(max_messages=self.concurrency),
                scheduler=ThreadScheduler(executor))
            with contextlib.suppress(Exception):
                while not self._stop.is_set() and not future.done():
                    self._stop.wait(0.5)
            future.cancel()
            with contextlib.suppress(Exception):
                future.result(timeout=5)
            self._stop.wait(1.0)

    def hold(self) -> None:
        """Deliver nothing until :meth:`release` (messages wait, leased, as on a worker
        that is busy elsewhere); for measuring the ingress alone (``kiln_dev.bench``)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _deliver(self, message: Any) -> None:
        while not self._open.wait(1.0):
            if self._stop.is_set():
                message.nack()
                return
        while not self._slots.acquire(timeout=1.0):  # ``concurrency`` at once, all streams
            if self._stop.is_set():
                message.nack()
                return
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            body = {"message": {"data": base64.b64encode(message.data).decode(),
                                "attributes": dict(message.attributes),
                                "messageId": message.message_id,
                                "publishTime": message.publish_time.strftime(
                                    "%Y-%m-%dT%H:%M:%S.%fZ")},
                    "subscription": self.subscription}
            try:
                ok = self._http.post(self.endpoint, json=body).is_success
            except httpx.HTTPError:
                ok = False
            with self._lock:
                tries = 0 if ok else self._attempts.get(message.message_id, 0) + 1
                if ok:
                    self._attempts.pop(message.message_id, None)
                else:
                    self._attempts[message.message_id] = tries
            if ok:
                message.ack()
            else:
                # Back after the backoff, as the push subscription's retry policy brings it
                # (the slot waits it out: the client would keep extending a held message).
                self._stop.wait(min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (tries - 1)))
                message.nack()
        finally:
            with self._lock:
                self.in_flight -= 1
            self._slots.release()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._http.close()
        for channel in self._channels:
            channel.close()
