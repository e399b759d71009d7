"""Completion notifications: at most one per job, whatever redeliveries happen.

The transition that ends a job (``complete`` / ``fail``) also claims the notification
in the same Firestore write (``_server.notify.state = "claimed"``). Only the worker whose
transaction made that claim calls :func:`deliver`; a redelivery sees a terminal job and
does nothing. A crash between the claim and the send loses that one push rather than
ever sending two: at most once, by construction.

The app push goes to the owner's registered devices (any channel). A channel with its
own conversation (Telegram) has a module named in ``CHANNEL_MODULES`` that may define
``on_finished(services, job_id, job) -> dict`` (the reply) and
``on_progress(services, job_id, job, progress, stage)`` (live updates); it is imported
only when a job of that channel needs it.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from google.cloud.firestore import SERVER_TIMESTAMP

from kiln import log
from kiln.adapters import fcm as push
from kiln.compose import Services

logger = log.get("notify")

#: channel → module with its ``on_finished`` / ``on_progress`` hooks.
CHANNEL_MODULES: dict[str, str] = {"telegram": "kiln.channels.telegram.notifier"}


def channel_module(job: dict[str, Any]) -> ModuleType | None:
    name = CHANNEL_MODULES.get(str(job.get("channel")))
    return importlib.import_module(name) if name else None


def on_progress(services: Services, job_id: str, job: dict[str, Any], progress: int,
                stage: str) -> None:
    """Pass a progress write on to the job's channel (never fails the job)."""
    module = channel_module(job)
    hook = getattr(module, "on_progress", None)
    if hook is None:
        return
    try:
        hook(services, job_id, job, progress, stage)
    except Exception as exc:
        log.event(logger, "channel progress update failed", logging.WARNING,
                  error=type(exc).__name__)


def deliver(services: Services, job_id: str) -> dict[str, Any]:
    """Send the claimed notification of a finished job; record what was sent."""
    job = services.store.get(job_id) or {}
    report: dict[str, Any] = {}
    try:
        report["push"] = send_push(services, job_id, job)
        hook = getattr(channel_module(job), "on_finished", None)
        if hook is not None:
            report["channel"] = hook(services, job_id, job)
        state = "sent"
    except Exception as exc:  # a notification failure must not un-finish the job
        log.event(logger, "notification failed", logging.ERROR, error=type(exc).__name__)
        report["error"] = type(exc).__name__
        state = "error"
    services.store.update(job_id, {
        "_server.notify.state": state,
        "_server.notify.at": SERVER_TIMESTAMP,
        "_server.notify.report": report,
    })
    return report


def send_push(services: Services, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """FCM to the owner's devices; the ones FCM calls dead are deleted."""
    uid = str(job.get("uid", ""))
    devices = services.store.devices(uid) if uid else []
    if not devices:
        return {"sent": 0, "failed": 0, "removed": 0}
    title, body, data = push.build_message(job_id, job, services.settings.link_template)
    result = services.push.send(devices, title, body, data, image=push.image_url(job))
    for device_id in result.dead_devices:
        services.store.delete_device(uid, device_id)
        log.event(logger, "removed dead device", deviceId=device_id)
    log.event(logger, "push sent", sent=result.sent, failed=result.failed,
              removed=len(result.dead_devices), type=data["type"])
    return {"sent": result.sent, "failed": result.failed, "removed": len(result.dead_devices)}
