"""``make bench``'s warm-up of the emulators (``kiln_dev.bench_e2e.warm_emulators``) on
the real emulators: it works them and leaves nothing that grows or that Kiln could read."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.pubsub_v1 import SubscriberClient
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from kiln_dev.bench_e2e import WARMUP, warm_emulators
from kiln_dev.stack import LocalStack
from support import emulator_publisher


def test_warming_the_emulators_writes_over_the_same_documents_and_removes_its_topic(
        stack: LocalStack, services: Any) -> None:
    """Given 60 commits and publishes from 4 threads, the warm-up collection holds four job
    documents (each with its server document), written over and over with the job's
    fields, and the warm-up's topic and subscription are gone afterwards."""
    seconds = warm_emulators(stack, 60, threads=4)

    assert seconds > 0
    docs = {doc.id: doc.to_dict() for doc in services.firestore.collection(WARMUP).stream()}
    assert sorted(docs) == ["w0", "w1", "w2", "w3"]
    assert all(doc["status"] == "pending" and doc["createdAt"] is not None
               for doc in docs.values())
    server = services.firestore.document(f"{WARMUP}/w0/private/server").get()
    assert server.exists
    address = f"{stack.config.host}:{stack.config.pubsub_port}"
    publisher = emulator_publisher(address)
    subscriber = SubscriberClient(transport=SubscriberGrpcTransport(
        channel=grpc.insecure_channel(address)))
    with pytest.raises(gexc.NotFound):
        publisher.get_topic(topic=publisher.topic_path(stack.config.project, WARMUP))
    with pytest.raises(gexc.NotFound):
        subscriber.get_subscription(
            subscription=subscriber.subscription_path(stack.config.project, WARMUP))
