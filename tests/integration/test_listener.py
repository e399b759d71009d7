"""What the owner's snapshot listener sees, with the real Firestore client on the emulator:
contract fields only, and a snapshot only when one of them changed."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import uuid
from typing import Any

from kiln.core import lifecycle
from kiln.core.job import PUBLIC_FIELDS, Change
from kiln.core.requests import parse_job_request
from kiln.runtime.worker import RunOutcome, run_job

MARKER = "listener-test-end"


def test_the_listener_sees_no_server_state_and_no_empty_snapshot(services: Any) -> None:
    """Given a job run to completion in-process (claim, progress, lease heartbeats, the
    result, the notification's bookkeeping), then every snapshot the owner's listener got
    holds only contract fields, and no two consecutive snapshots look the same."""
    job_id = uuid.uuid4().hex[:20]
    request = parse_job_request({"kind": "image", "prompt": "a teal sphere"})
    assert services.store.create(lifecycle.new_job(
        job_id=job_id, uid=f"listener-{job_id[:6]}", channel="app", request=request,
        now=dt.datetime.now(dt.UTC), policy=services.policy))
    seen: list[dict[str, Any]] = []
    first, ended = threading.Event(), threading.Event()

    def on_snapshot(docs: list[Any], _changes: Any, _read_time: Any) -> None:
        for doc in docs:
            if doc.exists:
                seen.append(doc.to_dict() or {})
                first.set()
                if (doc.to_dict() or {}).get("stage") == MARKER:
                    ended.set()

    watch = services.firestore.collection("jobs").document(job_id).on_snapshot(on_snapshot)
    try:
        assert first.wait(30), "the listener never got its first snapshot"
        assert run_job(job_id, services) is RunOutcome.COMPLETED
        job = services.store.get(job_id)
        assert job.server.notify["state"] == "sent"  # bookkeeping written after the end
        # A last visible write: snapshots arrive in order, so once it is seen every
        # earlier snapshot has been delivered too.
        services.store.apply(job_id, Change({"stage": MARKER}))
        assert ended.wait(30), f"the marker snapshot never came; saw {len(seen)}"
    finally:
        watch.unsubscribe()
    statuses = [doc["status"] for doc in seen]
    assert statuses[0] == "pending" and "processing" in statuses and "completed" in statuses
    for doc in seen:
        assert set(doc) <= set(PUBLIC_FIELDS), f"server-only fields: {set(doc) - set(PUBLIC_FIELDS)}"
    for before, after in itertools.pairwise(seen):
        assert before != after, f"a snapshot with no visible change: {after}"
