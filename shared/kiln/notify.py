"""Completion notifications: at most one per job, whatever redeliveries happen.

The transition that ends a job (``complete`` / ``fail``) also claims the notification
in the same Firestore write (``_server.notify.state = "claimed"``). Only the worker whose
transaction made that claim calls :func:`deliver`; a redelivery sees a terminal job and
does nothing. A crash between the claim and the send loses that one push rather than
ever sending two: at most once, by construction.

Channels register observers here: the app push goes to the owner's devices; the
Telegram channel replies in the chat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from google.cloud.firestore import SERVER_TIMESTAMP

from kiln import log, push
from kiln.services import Services

logger = log.get("notify")

#: channel → function(services, job_id, job) that tells the user about a finished job.
ChannelNotifier = Callable[[Services, str, dict[str, Any]], dict[str, Any]]
CHANNEL_NOTIFIERS: dict[str, ChannelNotifier] = {}


def register_channel(channel: str, notifier: ChannelNotifier) -> None:
    CHANNEL_NOTIFIERS[channel] = notifier


def deliver(services: Services, job_id: str) -> dict[str, Any]:
    """Send the claimed notification of a finished job; record what was sent."""
    job = services.store.get(job_id) or {}
    report: dict[str, Any] = {}
    try:
        report["push"] = send_push(services, job_id, job)
        channel_notifier = CHANNEL_NOTIFIERS.get(str(job.get("channel")))
        if channel_notifier is not None:
            report["channel"] = channel_notifier(services, job_id, job)
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
    """FCM to the owner's devices; dead tokens are deleted."""
    uid = str(job.get("uid", ""))
    tokens = services.store.device_tokens(uid) if uid else []
    if not tokens:
        return {"sent": 0, "failed": 0, "removed": 0}
    title, body, data = push.build_message(job_id, job, services.settings.link_template)
    result = services.push.send(tokens, title, body, data)
    for device_id in result.dead_devices:
        services.store.delete_device(uid, device_id)
        log.event(logger, "removed dead device token", deviceId=device_id)
    log.event(logger, "push sent", sent=result.sent, failed=result.failed,
              removed=len(result.dead_devices), type=data["type"])
    return {"sent": result.sent, "failed": result.failed, "removed": len(result.dead_devices)}
