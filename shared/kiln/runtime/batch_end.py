"""The end of a batch: announced once, when its last job ends.

Called after any job of a batch ends (``kiln.runtime.notify.deliver`` for completed and
failed jobs and for a backend's canceled ones, ``kiln.runtime.actions.cancel`` for an app's
or a chat's canceled ones). Each call counts the
batch's ended jobs (one count aggregation, not a read per job); a call that finds every
job ended reads their statuses once and creates the batch's end marker
(create-if-absent): only the one that created it sends the app user's one push. For an
API tenant every such call emits ``batch.completed`` through ``kiln.webhooks.events.emit``,
whose event id is stable per batch (a second emit is a no-op). Then the batch is closed
(its one later write). The last job to end always sees all the others ended: each call
runs after its own job's end was committed. The sweeper (:func:`sweep`) looks at open
batches only and announces any whose jobs have all ended, so an end check that failed, or
a process that died between the marker and the emit, loses no ``batch.completed``.

A job retried after its batch was announced ends after the announcement: its push would
be lost (a batch's jobs send none of their own), so a retried job that ended after its
batch's end marker was created is notified on its own (:func:`announced_before`); one
that ended before it rides the batch's push as its other jobs do, even when its own notice
runs after the announcement (its worker was slower, or died and the sweeper sent it). The
two times are the store's (server timestamps). When the marker cannot be read, a retried
job is notified on its own (a second notice rather than none).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kiln import log
from kiln.compose import Services
from kiln.core.batches import Batch, counts, ended
from kiln.core.job import Device, Job
from kiln.webhooks import events

logger = log.get("batches")


def announced_before(services: Services, job: Job) -> bool:
    """Whether ``job`` (retried) ended after its batch was announced: it is then notified
    on its own. Read before the job's own notice, so the batch's comes after it. When
    the batch's end marker cannot be read, True (a second notice rather than none)."""
    if job.batch_id is None or not job.server.retries:
        return False
    try:
        announced = services.batches.ended_at(job.batch_id)
    except Exception as exc:
        log.event(logger, "batch not read", logging.WARNING, batchId=job.batch_id,
                  error=type(exc).__name__)
        return True
    if announced is None:
        return False
    return job.completed_at is None or job.completed_at > announced


def on_job_ended(services: Services, job: Job) -> bool:
    """Announce the job's batch if this job was its last to end; True when announced by
    this call (never raises: a batch's notice must not un-finish a job)."""
    if job.batch_id is None:
        return False
    try:
        batch = services.batches.get(job.batch_id)
        return batch is not None and announce_if_ended(services, batch)
    except Exception as exc:
        log.event(logger, "batch end notice failed", logging.ERROR, batchId=job.batch_id,
                  error=type(exc).__name__)
        return False


def announce_if_ended(services: Services, batch: Batch) -> bool:
    """Announce ``batch`` if all its jobs have ended; True when this call was the first."""
    if services.batches.ended_count(batch.id) < len(batch.job_ids):
        return False
    statuses = services.batches.statuses(batch.id)
    if not ended(batch, statuses):
        return False
    tally = counts({job_id: statuses[job_id] for job_id in batch.job_ids})
    api = batch.channel == "api" and bool(batch.tenant)
    # An app user's devices are read before the marker: a read that fails leaves the
    # batch open for the sweeper instead of marked with nobody left to push.
    devices = [] if api else services.devices.devices(batch.uid)
    first = services.batches.mark_ended(batch.id, uuid.uuid4().hex)
    if api:
        emit_completed(services, batch, tally)
    elif first:
        push_completed(services, batch, tally, devices)
    services.batches.close(batch.id)
    if first:
        log.event(logger, "batch ended", batchId=batch.id, **tally)
    return first


def sweep(services: Services, limit: int = 200) -> int:
    """The sweeper's repair: announce open batches whose jobs have all ended (a job's own
    end check failed, or its process died after the job ended); how many it announced."""
    announced = 0
    try:
        batches = services.batches.open_batches(limit)
    except Exception as exc:  # the job sweep goes on without the batch one
        log.event(logger, "batch sweep failed", logging.WARNING, error=type(exc).__name__)
        return 0
    for batch in batches:
        try:  # one batch's trouble stops no other's announcement
            announced += announce_if_ended(services, batch)
        except Exception as exc:
            log.event(logger, "batch end not announced", logging.WARNING, batchId=batch.id,
                      error=type(exc).__name__)
    return announced


def event_data(batch: Batch, tally: dict[str, int]) -> dict[str, Any]:
    """The ``data`` of a ``batch.completed`` event."""
    return {"batchId": batch.id, "total": len(batch.job_ids), "counts": tally,
            "jobIds": list(batch.job_ids)}


def emit_completed(services: Services, batch: Batch, tally: dict[str, int]) -> str:
    """``batch.completed`` for the tenant; the event's id (stable per batch)."""
    assert batch.tenant is not None
    return events.emit(services, tenant=batch.tenant, event_type="batch.completed",
                       subject_id=batch.id, data=event_data(batch, tally))


def push_completed(services: Services, batch: Batch, tally: dict[str, int],
                   devices: list[Device]) -> int:
    """The app user's one push for the whole batch, to ``devices`` (read before the end
    marker); how many devices it reached."""
    if not devices:
        return 0
    total, done = len(batch.job_ids), tally.get("completed", 0)
    result = services.push.send(devices, "Your batch is ready",
                                f"{done} of {total} finished.",
                                {"type": "batch_completed", "batchId": batch.id,
                                 "total": str(total), "completed": str(done)})
    by_id = {device.id: device for device in devices}
    for device_id in result.dead_devices:
        services.devices.delete_device(batch.uid, by_id[device_id])
    return result.sent
