"""The stand-ins' callbacks are what Kiln verifies: real HTTP from the task-server and
Meshy stand-ins to a recording receiver, each request read back with
``kiln.providers.callbacks.verify``; the faults do what they say."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.providers.callbacks import CallbackUnauthenticated, verify
from kiln.settings import Settings
from kiln_dev.chaos_tasks import API_KEY, SlowTaskServer
from kiln_dev.standins.callbacks import CallbackFaults, CallbackSender
from kiln_dev.standins.provider import API_KEY as PROVIDER_KEY
from kiln_dev.standins.provider import ProviderServer
from support import Receiver, wait_for

SECRET = "whsec_" + "c3RhbmRpbnMtdGVzdC1zZWNyZXQtbm90LWEtcmVhbC1vbmU="
SETTINGS = Settings(project="demo-unit", taskserver_webhook_secret=SECRET,
                    meshy_webhook_secret="meshy-standin-token")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


def test_the_task_server_signs_its_end_and_its_faults_arrive_as_named(receiver: Receiver) -> None:
    """Given every fault at certainty, when a task ends, then the receiver gets an early
    end, a progress event, a forged end (refused by verify), the end and its replay (the
    same webhook-id); callback_times() records the job."""
    faults = CallbackFaults(duplicate=1.0, forge=1.0, early=1.0, progress=1, seed=3)
    tasks = SlowTaskServer(seconds=0.3, callback_secret=SECRET, faults=faults).start()
    try:
        created = httpx.post(f"{tasks.url}/v1/tasks", headers={
            "Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "job-standin"},
            json={"kind": "model", "prompt": "a cube", "callback_url": receiver.url})
        task_id = created.json()["task_id"]
        got = receiver.wait(5)
    finally:
        tasks.stop()
    now = dt.datetime.now(dt.UTC)
    read = []
    for _query, headers, body in got:
        try:
            [event] = verify("taskserver", headers, body, SETTINGS, now)
            read.append((event.kind, event.ended, event.task_id, event.event_id))
        except CallbackUnauthenticated:
            read.append(("forged", True, task_id, ""))
    # The sender's threads may land in any order on a loaded machine: what arrives is
    # asserted, not when.
    kinds = sorted(kind for kind, *_ in read)
    assert kinds == ["forged", "task.ended", "task.ended", "task.ended", "task.progress"]
    assert {t for _k, _e, t, _i in read} == {task_id}
    ended = Counter(event_id for kind, _e, _t, event_id in read if kind == "task.ended")
    assert sorted(ended.values()) == [1, 2]  # the early end; the end and its replay (same id)
    assert list(tasks.callback_times()) == ["job-standin"]


def test_the_meshy_stand_in_posts_the_task_object_with_the_token(receiver: Receiver) -> None:
    """Given a webhook configured as in Meshy's dashboard (payload version v2), when a
    text-to-3D task ends, then its v2 task object arrives with ?token= and verify reads it
    as that task's end."""
    server = ProviderServer(task_seconds=0.3, meshy_webhook_secret="meshy-standin-token",
                            meshy_webhook_url=receiver.url).start()
    try:
        created = httpx.post(f"{server.url}/openapi/v2/text-to-3d",
                             headers={"Authorization": f"Bearer {PROVIDER_KEY}"},
                             json={"prompt": "a cube", "should_texture": False})
        remote = created.json()["id"]
        [(query, headers, body)] = receiver.wait(1)
    finally:
        server.stop()
    assert json.loads(body)["output"]["model_urls"]["glb"]
    [event] = verify("meshy", headers, body, SETTINGS, dt.datetime.now(dt.UTC), query=query)
    assert event.task_id == remote and event.ended and event.kind == "succeeded"


def test_the_sender_drops_delays_and_reorders_as_told(receiver: Receiver) -> None:
    """Given a dropped end, a late end and a reordered progress event, then the first
    task's receiver gets its progress but no end, the second's end comes after its delay,
    and the third's last progress event arrives after the end it should have preceded."""
    def end() -> dict[str, Any]:
        return {"type": "task.ended", "data": {"status": "succeeded"}}

    def progress(percent: int) -> dict[str, Any]:
        return {"type": "task.progress", "data": {"progress": percent}}

    dropped = CallbackSender(SECRET, CallbackFaults(drop=1.0, progress=1))
    late = CallbackSender(SECRET, CallbackFaults(delay=0.4))
    reordered = CallbackSender(SECRET, CallbackFaults(progress=2, reorder=1.0))
    try:
        scheduled = time.time()
        dropped.schedule("dropped", receiver.url, 0.05, end, progress)
        late.schedule("late", receiver.url, 0.05, end)
        reordered.schedule("reordered", receiver.url, 0.05, end, progress)
        # 1 progress (dropped's end never comes), 1 late end, 2 progress + 1 end (reordered),
        # each recorded by its sender once the receiver answered
        wait_for(lambda: (len(dropped.sent), len(late.sent), len(reordered.sent)) == (1, 1, 3),
                 timeout=10, interval=0.02, what="every sender's deliveries")
    finally:
        for sender in (dropped, late, reordered):
            sender.close()
    assert [(s.kind, s.status) for s in dropped.sent] == [("progress", 200)]
    [late_end] = late.sent
    assert late_end.kind == "end" and late_end.at - scheduled >= 0.45
    assert [(s.kind, s.status) for s in reordered.sent] == [
        ("progress", 200), ("end", 200), ("reordered", 200)]
