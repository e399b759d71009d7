"""Completion notifications: at most one per job, whatever redeliveries happen.

The transition that ends a job (``complete`` / ``fail``) also claims the notification in
the same write. :func:`deliver` first takes the claim (``claimed`` → ``sending``, one
write decided on what it read, :func:`take`): only the call that moved it sends, so a
worker and the sweeper, or two sweeps, never both send. A redelivery sees a terminal job
and does nothing. A worker that crashed between the ending write and the take leaves it
claimed: the sweeper sends it after ``sweeper.UNSENT_GRACE_SECONDS``. One that crashed
between the take and the record (``sent``) leaves it ``sending``, which nobody repairs:
at most once, a chat message included. An API tenant's (:data:`AT_LEAST_ONCE`) is not
taken: its webhook event has a stable id, so it is sent again until recorded, and a send
that met a passing fault (the webhook store unreachable) records nothing, leaving the
claim to the sweeper; such a tenant's cancel claims one too (``kiln.runtime.actions``).
The record of what was sent is bookkeeping; when it cannot be written the notification
stays ``sending`` (``claimed`` for an API tenant's) and the job stays ended.

The app push goes to the owner's registered devices, for jobs of the app channel only
(the reserved uids of other channels are not app users). A batch's jobs send none of
their own (the batch sends one when it ends, after its last job's own notice), except
a job retried after its batch was announced (``batch_end.announced_before``). A channel
with its own conversation (Telegram) is registered in the composition root
(``Services.channels``) and is told of the start, of progress and of the end. A channel
that cannot reach its chat right now defers the end itself (its report says
``deferred``: the state is then ``retrying``) and finishes it from the sweeper's pass
(``redeliver``), which records the final ``sent`` or ``error``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from typing import Any

from kiln import log, tracing
from kiln.compose import Services
from kiln.core import lifecycle, timeline
from kiln.core.errors import RetryableError
from kiln.core.job import Change, Device, Job
from kiln.runtime import batch_end

logger = log.get("notify")
#: Channels whose end notice may be sent twice and must not be lost: an API tenant's is a
#: webhook event with a stable id (a second emit is a no-op; deliveries are retried for
#: days) and no push. Their claim is not taken: it stays ``claimed`` until the record, so
#: a sender that died is followed by the sweeper's.
AT_LEAST_ONCE = frozenset({"api"})


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


def redeliver(services: Services, started: dt.datetime | None = None) -> int:
    """Let each channel finish the deliveries it deferred (in a sweep that began at
    ``started``); how many were tried."""
    tried = 0
    for name, channel in services.channels.items():
        try:
            tried += channel.redeliver(services, started)
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
def deliver(services: Services, job_id: str) -> dict[str, Any] | None:
    """Take the claimed notification of an ended job, send it and record what was sent;
    None when it was not this call's to send (nothing sent). Never raises: a
    notification must not un-finish a job (a claim it could not take is left to the
    sweeper)."""
    try:
        job = take(services, job_id)
    except Exception as exc:
        log.event(logger, "notification not taken; left to the sweeper", logging.WARNING,
                  error=type(exc).__name__)
        return None
    return None if job is None else send(services, job)


def take(services: Services, job_id: str) -> Job | None:
    """Move the job's notification from ``claimed`` to ``sending``; the job as read by
    that write (its places included) with that notification, or None when it was not
    claimed (sent, being sent, or no notification). A write that landed although its
    answer was lost is recognised by the token it carries.

    Raises:
        RetryableError: the store is unreachable and the claim was not taken.
    """
    token = uuid.uuid4().hex

    def ours(job: Job | None) -> bool:
        return _sending(job, token)

    def decide(job: Job | None) -> tuple[Change | None, Job | None]:
        if ours(job):  # decided again after our own write landed
            return None, job
        if job is None or not job.terminal or \
                (job.server.notify or {}).get("state") != lifecycle.NOTIFY_CLAIMED:
            return None, None
        if job.channel in AT_LEAST_ONCE:  # sent again until its record is written
            return None, job
        taken = {**(job.server.notify or {}), "state": lifecycle.NOTIFY_SENDING,
                 "report": {"sender": token}}  # (the job as written: its record's guard)
        return lifecycle.notified(lifecycle.NOTIFY_SENDING, {"sender": token}), \
            dataclasses.replace(job, server=dataclasses.replace(job.server, notify=taken))

    try:
        return services.store.transact(job_id, decide, seen=services.store.get(job_id))
    except RetryableError:
        job = services.store.get(job_id)
        if not ours(job):
            raise
        return job


def send(services: Services, job: Job) -> dict[str, Any]:
    """Send the notification of ``job`` (taken by :func:`take`) and record what was sent.
    An :data:`AT_LEAST_ONCE` notice whose send met a passing fault (the webhook store
    unreachable) is not recorded: it stays ``claimed`` for the sweeper to send again."""
    report: dict[str, Any] = {}
    try:
        try:  # what the push needs, read before anything is sent
            # a retried job of an announced batch is pushed on its own; the batch's own
            # notice (if this job ends it) comes after the job's
            alone = batch_end.announced_before(services, job)
            devices = push_devices(services, job, alone=alone)
        except RetryableError as exc:  # nothing sent: the sweeper's pass sends it
            log.event(logger, "notification not sent; left to the sweeper", logging.WARNING,
                      code=exc.code)
            _release(services, job)
            return {"error": type(exc).__name__}
        report["push"] = send_push(services, job, devices)
        channel = services.channels.get(job.channel)
        if channel is not None:
            report["channel"] = channel.on_finished(services, job)
        batch_end.on_job_ended(services, job)
        state = "retrying" if "deferred" in report.get("channel", {}) else "sent"
    except Exception as exc:  # a notification failure must not un-finish the job
        report["error"] = type(exc).__name__
        if isinstance(exc, RetryableError) and job.channel in AT_LEAST_ONCE:
            log.event(logger, "notification not sent; left to the sweeper", logging.WARNING,
                      code=exc.code)
            return report  # still claimed: the sweeper's pass sends it again
        log.event(logger, "notification failed", logging.ERROR, error=type(exc).__name__)
        state = "error"
    change = timeline.carry(lifecycle.notified(state, report), {"notified": services.clock.now()})
    try:
        if _sender(job) is None:  # (an at-least-once notice: the sweeper's to retake)
            services.store.apply(job.id, change)
        else:  # only over its own "sending": a retry since may have claimed its run's push
            _over_own_claim(services, job, change)
    except Exception as exc:  # sent: it stays "sending", which nobody sends again
        log.event(logger, "notification sent; its record not written", logging.WARNING,
                  state=state, error=type(exc).__name__)
    return report


def _sending(job: Job | None, sender: str) -> bool:
    """Whether ``job``'s notification is still the one ``sender`` took to send."""
    return job is not None and (job.server.notify or {}).get("state") == \
        lifecycle.NOTIFY_SENDING and _sender(job) == sender


def _sender(job: Job) -> str | None:
    """The token of whoever took ``job``'s notification to send it (:func:`take`)."""
    return ((job.server.notify or {}).get("report") or {}).get("sender")


def _over_own_claim(services: Services, job: Job, change: Change) -> None:
    """Write ``change`` only while ``job``'s notification is still the one this caller
    took (``job`` as :func:`take` answered it)."""
    sender = _sender(job)
    services.store.transact(job.id, lambda now: (
        change if sender is not None and _sending(now, sender) else None, None))


def push_devices(services: Services, job: Job, *, alone: bool = False) -> list[Device] | None:
    """The devices the job's push goes to: None when it sends none of its own (not an app
    job; a batch's job, whose batch sends one push when it has ended, unless ``alone``).

    Raises:
        RetryableError: the device store is unreachable.
    """
    if job.channel != "app" or (job.batch_id is not None and not alone):
        return None
    return services.devices.devices(job.uid) if job.uid else []


def _release(services: Services, job: Job) -> None:
    """Give a taken notification back to the sweeper (``claimed`` again), over its own
    ``sending`` claim only; one that cannot be given back stays ``sending`` (logged)."""
    if _sender(job) is None:  # (an at-least-once notice was never taken: still claimed)
        return
    try:
        _over_own_claim(services, job, lifecycle.notified(lifecycle.NOTIFY_CLAIMED,
                                                          {"released": True}))
    except Exception as exc:
        log.event(logger, "notification not given back; it is lost", logging.ERROR,
                  error=type(exc).__name__)


def send_push(services: Services, job: Job, devices: list[Device] | None) -> dict[str, Any]:
    """FCM to ``devices`` (:func:`push_devices`); the ones FCM calls dead are deleted."""
    none = {"sent": 0, "failed": 0, "removed": 0}
    if devices is None:
        return {**none, "batch": job.batch_id} if job.channel == "app" and job.batch_id else none
    if not devices:
        return none
    # (Here, not at the top: the ingress sends a backend's cancel through this module and
    # must not load firebase_admin's messaging for it; docs/benchmarks.md, cold starts.)
    from kiln.adapters.fcm import build_message, image_url

    title, body, data = build_message(job, services.settings.link_template)
    result = services.push.send(devices, title, body, data, image=image_url(job))
    by_id = {device.id: device for device in devices}
    for device_id in result.dead_devices:
        services.devices.delete_device(job.uid, by_id[device_id])
        log.event(logger, "removed dead device", deviceId=device_id)
    log.event(logger, "push sent", sent=result.sent, failed=result.failed,
              removed=len(result.dead_devices), type=data["type"])
    return {"sent": result.sent, "failed": result.failed, "removed": len(result.dead_devices)}
