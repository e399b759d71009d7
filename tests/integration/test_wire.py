"""The acknowledgement's raw-protobuf calls (``kiln.adapters.wire``) against the real
emulators: what they create reads back exactly as what the SDK creates, a create of an
existing document writes nothing, and an unreachable Firestore is an error in time."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.adapters import wire
from kiln.adapters.firestore import FirestoreJobStore, _fields, connect
from kiln.core import sentinels
from kiln.core.errors import RetryableError
from kiln.core.job import NewJob
from kiln_dev.faults import TcpProxy
from kiln_dev.stack import LocalStack

AT = dt.datetime(2026, 12, 6, 7, 30, 15, 123456, tzinfo=dt.UTC)
#: Every kind of value Kiln's documents hold, and a few they might.
DOCUMENT: dict[str, Any] = {
    "none": None, "text": "a red cube ✓", "empty": "", "yes": True, "no": False,
    "zero": 0, "big": 2**62, "negative": -7, "ratio": 0.25, "at": AT,
    "naive": dt.datetime(2026, 1, 2, 3, 4, 5), "old": dt.datetime(1969, 7, 20, 20, 17, 40, 5),
    "offset": dt.datetime(2026, 6, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
    "blob": b"\x00\xff",
    "nested": {"a": {"b": [1, "two", None, {"c": AT}]}, "x.y": "dotted", "`q`": 1},
    "emptyMap": {}, "emptyList": [], "tuple": (1, 2), "geo": firestore.GeoPoint(1.5, -2.5),
    "createdAt": sentinels.SERVER_TIME,
    "stamps": {"deep": sentinels.SERVER_TIME, "odd key.with dots": sentinels.SERVER_TIME,
               "kept": 1},
}


def _server_times(doc: dict[str, Any]) -> list[dt.datetime]:
    return [doc.pop("createdAt"), doc["stamps"].pop("deep"),
            doc["stamps"].pop("odd key.with dots")]


def test_documents_created_on_the_wire_read_back_as_the_sdk_creates_them(
        services: Any) -> None:
    """Given one document of every value kind, when it is created once through the SDK and
    once as a raw commit, then both read back equal, server timestamps included (set by
    the server, at any depth, under keys that need quoting)."""
    client = services.firestore
    sdk, raw = (client.collection("kilnTestWire").document(uuid.uuid4().hex) for _ in "ab")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    sdk.create(_fields(DOCUMENT))
    wire.Creates(client).commit([(raw.path, DOCUMENT)])

    by_sdk, by_wire = sdk.get().to_dict(), raw.get().to_dict()
    assert by_sdk is not None and by_wire is not None
    stamps = _server_times(by_sdk) + _server_times(by_wire)
    assert all(isinstance(t, dt.datetime) and t >= before for t in stamps)
    assert by_wire == by_sdk
    assert by_wire["nested"]["a"]["b"][3]["c"] == AT
    assert by_wire["stamps"] == {"kept": 1}


def test_a_raw_commit_with_one_existing_document_writes_none(services: Any) -> None:
    """Given a commit of a new document and one that exists, then AlreadyExists is raised
    and the new one was not created."""
    collection = services.firestore.collection("kilnTestWire")
    fresh, existing = (collection.document(uuid.uuid4().hex) for _ in "ab")
    existing.create({"v": 1})
    with pytest.raises(gexc.AlreadyExists):
        wire.Creates(services.firestore).commit([(fresh.path, {"v": 2}),
                                                 (existing.path, {"v": 3})])
    assert not fresh.get().exists
    assert existing.get().to_dict() == {"v": 1}


def test_a_document_being_created_cannot_delete_a_field(services: Any) -> None:
    ref = services.firestore.collection("kilnTestWire").document(uuid.uuid4().hex)
    with pytest.raises(ValueError, match="delete"):
        wire.Creates(services.firestore).commit([(ref.path, {"gone": sentinels.DELETE})])
    assert not ref.get().exists


def test_a_job_created_while_firestore_is_unreachable_fails_in_time(stack: LocalStack) -> None:
    """Given the job store's Firestore behind a TCP proxy that is down, when a job is
    created, then it fails as RetryableError ``store_unavailable`` within the commit's
    timeout, and nothing is created."""
    proxy = TcpProxy(stack.config.host, stack.config.firestore_port).start()
    try:
        store = FirestoreJobStore(connect(stack.config.project, proxy.address))
        store.creates = wire.Creates(store.client, timeout=1.0)
        proxy.down()
        job = NewJob(f"wire{uuid.uuid4().hex[:12]}", {"status": "pending"}, {"handoffs": 0})
        started = time.monotonic()
        with pytest.raises(RetryableError) as caught:
            store.create(job)
        assert caught.value.code == "store_unavailable"
        assert time.monotonic() - started < 1.0 + 2
    finally:
        proxy.stop()
    assert FirestoreJobStore(connect(stack.config.project,
                                     f"{stack.config.host}:{stack.config.firestore_port}")
                             ).get(job.id) is None
