"""The end of a batch: announced once, when its last job ends.

Called after any job of a batch ends (``kiln.runtime.notify.deliver`` for completed and
failed jobs, ``kiln.runtime.actions.cancel`` for canceled ones). Each call counts the
batch's ended jobs (one count aggregation, not a read per job); the call that finds every
job ended reads their statuses once and creates the batch's end
marker (create-if-absent), and only the one that created it sends the app user's one
push. For an API tenant every such call emits ``batch.completed`` through
``kiln.webhooks.events.emit``, whose event id is stable per batch (a second emit is a
no-op), so a crash between the marker and the emit loses nothing when the event is
emitted again. The last job to end always sees all the others ended: each call runs after
its own job's end was committed.
"""

from __future__ import annotations

import logging
from typing import Any

from kiln import log
from kiln.compose import Services
from kiln.core.batches import Batch, counts, ended
from kiln.core.job import Job
from kiln.webhooks import events

logger = log.get("batches")


def on_job_ended(services: Services, job: Job) -> bool:
    """Announce the job's batch if this job was its last to end; True when announced
    by this call (never raises: a batch's notice must not un-finish a job)."""
    if job.batch_id is None:
        return False
    try:
        batch = services.batches.get(job.batch_id)
        if batch is None or services.batches.ended_count(batch.id) < len(batch.job_ids):
            return False
        statuses = services.batches.statuses(batch.id)
        if not ended(batch, statuses):
            return False
        tally = counts({job_id: statuses[job_id] for job_id in batch.job_ids})
        first = services.batches.mark_ended(batch.id)
        if batch.channel == "api" and batch.tenant:
            emit_completed(services, batch, tally)
        elif first:
            push_completed(services, batch, tally)
        if first:
            log.event(logger, "batch ended", batchId=batch.id, **tally)
        return first
    except Exception as exc:
        log.event(logger, "batch end notice failed", logging.ERROR, batchId=job.batch_id,
                  error=type(exc).__name__)
        return False


def event_data(batch: Batch, tally: dict[str, int]) -> dict[str, Any]:
    """The ``data`` of a ``batch.completed`` event."""
    return {"batchId": batch.id, "total": len(batch.job_ids), "counts": tally,
            "jobIds": list(batch.job_ids)}


def emit_completed(services: Services, batch: Batch, tally: dict[str, int]) -> str:
    """``batch.completed`` for the tenant; the event's id (stable per batch)."""
    assert batch.tenant is not None
    return events.emit(services, tenant=batch.tenant, event_type="batch.completed",
                       subject_id=batch.id, data=event_data(batch, tally))


def push_completed(services: Services, batch: Batch, tally: dict[str, int]) -> int:
    """The app user's one push for the whole batch; how many devices it reached."""
    devices = services.devices.devices(batch.uid)
    if not devices:
        return 0
    total, done = len(batch.job_ids), tally.get("completed", 0)
    result = services.push.send(devices, "Your batch is ready",
                                f"{done} of {total} finished.",
                                {"type": "batch_completed", "batchId": batch.id,
                                 "total": str(total), "completed": str(done)})
    for device_id in result.dead_devices:
        services.devices.delete_device(batch.uid, device_id)
    return result.sent
