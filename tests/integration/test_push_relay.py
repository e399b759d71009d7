"""The local stack's push relay (``kiln_dev.pusher``): more than two pushes at once, a
held push never stalls the others, a failed push comes back after the backoff."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from google.pubsub_v1 import PublisherClient, PubsubMessage

from kiln_dev.pusher import PushRelay
from kiln_dev.stack import LocalStack
from support import wait_for


class Sink:
    """An endpoint that holds every push until released; the first push of each key in
    ``fail_once`` is answered 500."""

    def __init__(self, fail_once: set[str]) -> None:
        self.release, self.lock = threading.Event(), threading.Lock()
        self.held: set[str] = set()
        self.answered: list[tuple[str, int]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = body["message"]["attributes"]["key"]
                assert body["message"]["publishTime"].endswith("Z")
                status = 204
                with sink.lock:
                    if key in fail_once:
                        fail_once.discard(key)
                        status = 500
                    else:
                        sink.held.add(key)
                if status == 204:
                    sink.release.wait(30)
                self.send_response(status)
                self.end_headers()
                with sink.lock:
                    sink.answered.append((key, status))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"


@pytest.fixture
def relay_topic(stack: LocalStack) -> Iterator[tuple[PublisherClient, str, str]]:
    publisher, subscriber = stack.pubsub_publisher(), stack.pubsub_subscriber()
    name = f"relay-{uuid.uuid4().hex[:8]}"
    topic = publisher.topic_path(stack.config.project, name)
    subscription = subscriber.subscription_path(stack.config.project, name)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": subscription, "topic": topic,
                                            "ack_deadline_seconds": 60})
    yield publisher, topic, subscription
    subscriber.delete_subscription(subscription=subscription)
    publisher.delete_topic(topic=topic)
    publisher.transport.close()
    subscriber.transport.close()


def test_six_pushes_at_once_and_a_failed_one_comes_back(
        stack: LocalStack, relay_topic: tuple[PublisherClient, str, str]) -> None:
    """Given a relay with 6 slots and an endpoint that holds every push, when 8 messages
    are published, then 6 are held at once (never more) while the rest wait; once released
    all 8 are acked, and the one answered 500 first is delivered again."""
    publisher, topic, subscription = relay_topic
    sink = Sink(fail_once={"m7"})
    relay = PushRelay(stack.pubsub_host, subscription, sink.url, concurrency=6).start()
    try:
        for i in range(8):
            publisher.publish(topic=topic, messages=[
                PubsubMessage(data=b"{}", attributes={"key": f"m{i}"})])
        wait_for(lambda: len(sink.held) >= 6, 30, what="six pushes held at once")
        assert relay.peak == 6
        sink.release.set()
        wait_for(lambda: {k for k, s in sink.answered if s == 204} == {f"m{i}" for i in range(8)},
                 30, what="every push answered")
        assert ("m7", 500) in sink.answered and relay.peak == 6
    finally:
        sink.release.set()
        relay.stop()
        sink.server.shutdown()


def test_streams_opened_again_and_again_lose_and_repeat_nothing(
        stack: LocalStack, relay_topic: tuple[PublisherClient, str, str]) -> None:
    """Given a relay whose streams are half-closed and opened again every 0.2 s, when 200
    messages are published one after another and in bursts while pushes are in flight,
    then every one is pushed exactly once (a stream that was cancelled instead could take
    a message with it until its ack deadline)."""
    publisher, topic, subscription = relay_topic
    sink = Sink(fail_once=set())
    sink.release.set()  # answered at once
    relay = PushRelay(stack.pubsub_host, subscription, sink.url, concurrency=8,
                      respread=0.2).start()
    keys = [f"r{i}" for i in range(200)]
    try:
        for i, key in enumerate(keys):
            publisher.publish(topic=topic, messages=[
                PubsubMessage(data=b"{}", attributes={"key": key})])
            if i % 10 == 9:  # now and then, wait for the pushes so far: streams turn over
                wait_for(lambda n=i + 1: len(sink.answered) >= n, 30, what="the pushes so far")
        wait_for(lambda: len(sink.answered) >= len(keys), 60, what="every push")
        assert relay.opened > 2 * relay.streams, relay.opened
    finally:
        relay.stop()
        sink.server.shutdown()
    pushed = [key for key, _status in sink.answered]
    assert sorted(pushed) == sorted(keys)


def test_a_held_relay_closes_its_streams_and_loses_nothing(
        stack: LocalStack, relay_topic: tuple[PublisherClient, str, str]) -> None:
    """Given a relay delivering, when it is held, then every stream ends (the emulator and
    the relay do no work for new messages), and none is opened while it is held; each
    message published meanwhile is pushed once after it is released."""
    publisher, topic, subscription = relay_topic
    sink = Sink(fail_once=set())
    sink.release.set()
    relay = PushRelay(stack.pubsub_host, subscription, sink.url, concurrency=4, streams=4,
                      respread=120).start()  # (no turn ends)

    def publish(key: str) -> None:
        publisher.publish(topic=topic, messages=[PubsubMessage(data=b"{}", attributes={"key": key})])

    try:
        publish("before")
        wait_for(lambda: len(sink.answered) == 1, 30, what="the first push")
        wait_for(lambda: relay.streams_open == 4, 30, what="every stream open")
        opened = relay.opened
        relay.hold()
        wait_for(lambda: relay.streams_open == 0, 10, what="every stream ended")
        held = [f"h{i}" for i in range(20)]
        for key in held:
            publish(key)
        assert relay.opened == opened  # no stream was opened while held
        relay.release()
        wait_for(lambda: len(sink.answered) >= 1 + len(held), 30, what="the held messages")
        assert relay.opened >= opened + 1
    finally:
        relay.stop()
        sink.server.shutdown()
    assert sorted(key for key, _ in sink.answered) == sorted(["before", *held])
