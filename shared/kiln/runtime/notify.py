"""Completion notifications: at most one per job, whatever redeliveries happen.

The transition that ends a job (``complete`` / ``fail``) also claims the notification in
the same write. Only the worker (or sweeper) whose transaction made that claim calls
:func:`deliver`; a redelivery sees a terminal job and does nothing. A worker that
crashed between the claim and the send leaves it claimed: the sweeper sends it after
``sweeper.UNSENT_GRACE_SECONDS`` (a second send in that rare case is absorbed by the
push's collapse key and the webhook event's stable id).

The app push goes to the owner's registered devices (any channel). A channel with its own
conversation (Telegram) is registered in the composition root (``Services.channels``)
and is told of the start, of progress and of the end. A channel that cannot reach its
chat right now defers the end itself (its report says ``deferred``: the state is then
``retrying``) and finishes it from the sweeper's pass (``redeliver``), which records the
final ``sent`` or ``error``.
"""

from __future__ import annotations

import logging
from typing import Any

from kiln import log, tracing
from kiln.adapters.fcm import build_message, image_url
from kiln.compose import Services
from kiln.core import lifecycle, timeline
from kiln.core.job import Job
from kiln.runtime import batch_end

logger = log.get("notify")


def on_started(services: Services, job: Job) -> None:
    """Tell the job's channel that a worker took the job (never fails the job)."""
    channel = services.channels.get(job.channel)
    if channel is None:
        return
    try:
        channel.on_started(services, job)
    except Exception as exc:
        log.event(logger, "channel start notice failed", logging.WARNING,
                  error=type(exc).__name__)


def redeliver(services: Services) -> int:
    """Let each channel finish the deliveries it deferred; how many were tried."""
    tried = 0
    for name, channel in services.channels.items():
        try:
            tried += channel.redeliver(services)
        except Exception as exc:  # one channel's outage must not stop the sweep
            log.event(logger, "channel redelivery failed", logging.WARNING, channel=name,
                      error=type(exc).__name__)
    return tried


def on_progress(services: Services, job: Job, progress: int, stage: str) -> None:
    """Pass a progress write on to the job's channel (never fails the job)."""
    channel = services.channels.get(job.channel)
    if channel is None:
        return
    try:
        channel.on_progress(services, job, progress, stage)
    except Exception as exc:
        log.event(logger, "channel progress update failed", logging.WARNING,
                  error=type(exc).__name__)


@tracing.traced("kiln.notify")
def deliver(services: Services, job_id: str) -> dict[str, Any]:
    """Send the claimed notification of an ended job; record what was sent."""
    job = services.store.get(job_id)
    report: dict[str, Any] = {}
    if job is None:
        return report
    try:
        report["push"] = send_push(services, job)
        channel = services.channels.get(job.channel)
        if channel is not None:
            report["channel"] = channel.on_finished(services, job)
        state = "retrying" if "deferred" in report.get("channel", {}) else "sent"
    except Exception as exc:  # a notification failure must not un-finish the job
        log.event(logger, "notification failed", logging.ERROR, error=type(exc).__name__)
        report["error"] = type(exc).__name__
        state = "error"
    services.store.apply(job_id, timeline.carry(lifecycle.notified(state, report),
                                                {"notified": services.clock.now()}))
    batch_end.on_job_ended(services, job)
    return report


def send_push(services: Services, job: Job) -> dict[str, Any]:
    """FCM to the owner's devices; the ones FCM calls dead are deleted. A batch's jobs
    send none of their own: the batch sends one push when it has ended."""
    if job.batch_id is not None:
        return {"sent": 0, "failed": 0, "removed": 0, "batch": job.batch_id}
    devices = services.devices.devices(job.uid) if job.uid else []
    if not devices:
        return {"sent": 0, "failed": 0, "removed": 0}
    title, body, data = build_message(job, services.settings.link_template)
    result = services.push.send(devices, title, body, data, image=image_url(job))
    for device_id in result.dead_devices:
        services.devices.delete_device(job.uid, device_id)
        log.event(logger, "removed dead device", deviceId=device_id)
    log.event(logger, "push sent", sent=result.sent, failed=result.failed,
              removed=len(result.dead_devices), type=data["type"])
    return {"sent": result.sent, "failed": result.failed, "removed": len(result.dead_devices)}
