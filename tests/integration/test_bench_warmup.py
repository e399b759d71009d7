"""``make bench``'s warm-up of the emulators (``kiln_dev.bench_e2e.warm_emulators``) on
the real emulators: it works them and leaves nothing that grows or that Kiln could read."""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as gexc

from kiln_dev.bench_e2e import WARMUP, warm_emulators
from kiln_dev.stack import LocalStack


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
    with stack.pubsub_publisher() as publisher, stack.pubsub_subscriber() as subscriber:
        with pytest.raises(gexc.NotFound):
            publisher.get_topic(topic=publisher.topic_path(stack.config.project, WARMUP))
        with pytest.raises(gexc.NotFound):
            subscriber.get_subscription(
                subscription=subscriber.subscription_path(stack.config.project, WARMUP))
