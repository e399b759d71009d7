"""A push relay for the local stack: Pub/Sub push with the cloud's concurrency.

The Pub/Sub emulator's push loop carries at most two requests at once per subscription
(measured: 16 pushes to an endpoint that holds each for 2 s take 16 s), so on a `kiln dev`
stack two slow jobs stall every other one, where the cloud pushes as many as the worker's
instances accept. ``PushRelay`` pulls from a *pull* subscription (``concurrency``
messages outstanding per stream) and POSTs each message to the worker in the push
format (``{"message": {data, attributes, messageId, publishTime}, "subscription"}``), on
its own thread: a 2xx acks, anything else is retried after the subscription's backoff
(1 s doubling to 10 s, as the stack's push subscription is configured), as Pub/Sub does.
A hung delivery holds one slot, never the others.

It pulls over several ``StreamingPull`` calls whose polls are spread in time, as the
emulator answers a waiting pull only about every 50 ms, and opens each again every few
seconds so that they stay spread (``RESPREAD``). The calls are made on the gRPC channel
directly: a stream is ended by half-closing it, which the subscriber client cannot do.
"""

from __future__ import annotations

import base64
import contextlib
import queue
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub

MIN_BACKOFF, MAX_BACKOFF = 1.0, 10.0
#: The emulator's streaming pull looks for messages, then sleeps 50 ms: one stream
#: delivers a message 25 ms after its publish on average (measured: p50 37 ms). Each
#: stream's period is 50 ms plus its work, so the streams' polls drift: four started
#: spread apart measured p50 11.5 ms in one run and 21.8 ms (p90 33 ms) in the next, once
#: their polls had drifted together; eight, 10.5–10.9 ms with p90 ≤ 17 ms; twelve 9.6–9.8
#: ms (publish → a bare endpoint, 2 runs × 40). The idle emulator's CPU stayed within its
#: noise (10–21 % of a core) from 0 to 12 extra streams.
EMULATOR_POLL, STREAMS = 0.05, 8
#: Each stream is half-closed after ``RESPREAD`` s (the first time after its share of it,
#: so they take turns) and opened again at a random moment of the poll's cycle. The stream
#: that polls first after a publish delivers it and so polls a little later next time,
#: closer to the stream behind it: over a long run the polls gather (measured, publish → a
#: bare endpoint, 1,000 sequential messages, p50 per 100: 10.5 ms over the first, 31.3 ms
#: over the last). A half-closed stream ends at the emulator's next loop (45–48 ms later)
#: without sending anything more; a stream cancelled instead can take a message with it,
#: which then waits out its ack deadline.
RESPREAD = 4.0
#: How long a delivered message stays leased: the relay's whole ``timeout``, so a
#: delivery never needs its lease extended (the emulator's maximum is 600 s).
ACK_DEADLINE = 600
#: How often a held stream's thread looks for the relay being stopped.
HELD_CHECK = 0.5

_Pull, _Pulled = pubsub.StreamingPullRequest.pb(), pubsub.StreamingPullResponse.pb()
_Ack, _Modify = pubsub.AcknowledgeRequest.pb(), pubsub.ModifyAckDeadlineRequest.pb()


class PushRelay:
    """Relays ``subscription`` (a pull subscription) to ``endpoint``, ``concurrency`` at once."""

    def __init__(self, emulator_host: str, subscription: str, endpoint: str, *,
                 concurrency: int, timeout: float = float(ACK_DEADLINE),
                 streams: int = STREAMS, respread: float = RESPREAD) -> None:
        self.subscription, self.endpoint = subscription, endpoint
        self.concurrency, self.timeout, self.respread = concurrency, timeout, respread
        self.streams = streams
        self._channel = grpc.insecure_channel(emulator_host)
        self._pull = self._channel.stream_stream(
            "/google.pubsub.v1.Subscriber/StreamingPull",
            request_serializer=_Pull.SerializeToString, response_deserializer=_Pulled.FromString)
        self._ack = self._channel.unary_unary(
            "/google.pubsub.v1.Subscriber/Acknowledge",
            request_serializer=_Ack.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString)
        self._modify = self._channel.unary_unary(
            "/google.pubsub.v1.Subscriber/ModifyAckDeadline",
            request_serializer=_Modify.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString)
        self._pool = ThreadPoolExecutor(concurrency * streams, thread_name_prefix="push")
        self._slots = threading.Semaphore(concurrency)
        self._http = httpx.Client(timeout=timeout, limits=httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency))
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open = threading.Event()  # cleared: deliveries wait (``hold``)
        self._open.set()
        self._threads: list[threading.Thread] = []
        self._ends: list[queue.SimpleQueue[None]] = []  # a stream's half-close, when put
        self.in_flight = 0
        self.peak = 0
        self.opened = 0  # streams opened, first and again

    def start(self) -> PushRelay:
        for n in range(self.streams):
            if n:  # the streams' polls fall at different moments
                self._stop.wait(EMULATOR_POLL / self.streams)
            thread = threading.Thread(target=self._run, args=(n,), daemon=True,
                                      name=f"push-relay-{n}")
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, n: int) -> None:
        """Pull until stopped: each stream is half-closed after its turn and read to its
        end, then opened again at a random moment of the emulator's cycle; a broken one
        (an emulator restart, a cut connection) is opened again after a second. While the
        relay is held none is open; on release the streams take turns again."""
        first_turn = turn = self.respread * (n + 1) / self.streams
        while not self._stop.is_set():
            if not self._open.is_set():  # held: no stream until released
                while not self._open.wait(HELD_CHECK):
                    if self._stop.is_set():
                        return
                turn = first_turn  # (taking turns again)
            end: queue.SimpleQueue[None] = queue.SimpleQueue()
            with self._lock:  # under the lock _end_streams() half-closes the streams listed
                if self._stop.is_set() or not self._open.is_set():
                    continue
                self._ends.append(end)
                self.opened += 1
            timer = threading.Timer(turn, end.put, args=(None,))
            timer.daemon = True
            timer.start()
            broken = False
            try:
                for pulled in self._pull(self._requests(end)):
                    for received in pulled.received_messages:
                        self._pool.submit(self._deliver, received)
            except grpc.RpcError:
                broken = True
            finally:
                timer.cancel()
                end.put(None)  # the request stream ends whatever ended the responses
                with self._lock:
                    self._ends.remove(end)
            if broken:
                self._stop.wait(1.0)
            else:
                self._stop.wait(random.uniform(0, EMULATOR_POLL))
            turn = self.respread

    def _requests(self, end: queue.SimpleQueue[None]) -> Iterator[Any]:
        yield _Pull(subscription=self.subscription, stream_ack_deadline_seconds=ACK_DEADLINE,
                    max_outstanding_messages=self.concurrency)
        end.get()  # then half-close: the emulator ends the stream at its next loop

    def hold(self) -> None:
        """Pull and deliver nothing until :meth:`release`, for measuring the ingress alone
        (``kiln_dev.bench``): every stream is half-closed and none is opened, so new
        messages wait in the subscription and the relay and the emulator do no work for
        them (on the cloud, Pub/Sub's push runs on no machine of Kiln's); messages pulled
        before wait, leased. Measured, sequential acknowledgements with the streams left
        open were 0.6 ms (floor) and 1.4 ms (Kiln) slower at p50."""
        self._open.clear()
        self._end_streams()

    def _end_streams(self) -> None:
        """Half-close every open stream. A stream about to open checks ``_stop`` and
        ``_open`` under the same lock, so none opens after its flag was changed."""
        with self._lock:
            for end in self._ends:
                end.put(None)

    @property
    def streams_open(self) -> int:
        with self._lock:
            return len(self._ends)

    def release(self) -> None:
        self._open.set()

    def _deliver(self, received: Any) -> None:
        message, ack_id = received.message, received.ack_id
        while not self._open.wait(1.0):
            if self._stop.is_set():
                self._nack(ack_id)
                return
        while not self._slots.acquire(timeout=1.0):  # ``concurrency`` at once, all streams
            if self._stop.is_set():
                self._nack(ack_id)
                return
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            body = {"message": {"data": base64.b64encode(message.data).decode(),
                                "attributes": dict(message.attributes),
                                "messageId": message.message_id,
                                "publishTime": message.publish_time.ToDatetime().strftime(
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
                self._answer(self._ack, _Ack(subscription=self.subscription, ack_ids=[ack_id]))
            else:
                # Back after the backoff, as the push subscription's retry policy brings it
                # (the slot waits it out, as a held message would be kept leased).
                self._stop.wait(min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (tries - 1)))
                self._nack(ack_id)
        finally:
            with self._lock:
                self.in_flight -= 1
            self._slots.release()

    def _nack(self, ack_id: str) -> None:
        self._answer(self._modify, _Modify(subscription=self.subscription, ack_ids=[ack_id],
                                           ack_deadline_seconds=0))

    def _answer(self, call: Any, request: Any) -> None:
        # A lost ack or nack only brings the message back after its deadline (the worker
        # takes a duplicate delivery); a stopped relay's channel is closed.
        with contextlib.suppress(grpc.RpcError, ValueError):
            call(request, timeout=10)

    def stop(self) -> None:
        self._stop.set()
        self._end_streams()
        for thread in self._threads:
            thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        self._channel.close()
