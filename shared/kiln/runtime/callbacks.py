"""Receive one provider callback: verify it, de-duplicate it, wake the task's job.

Only an event that says the task *ended* does anything (a progress event would cost a
poll each; the scheduled checks report progress). An ended event is recorded once
(``task_index.first_seen``: a replay answers ``duplicate``), its task looked up
(``task_index.job_for``: a task not linked yet is remembered, and the worker's link then
checks the job at once) and its job woken (``checks.wake``: coalesced, so two ends of one
job cost one check). The callback never changes the job: the check polls the provider.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping

from kiln import log
from kiln.compose import Services
from kiln.core.errors import RetryableError
from kiln.providers.callbacks import task_key, verify
from kiln.runtime import checks

logger = log.get("callbacks")


class Received(enum.StrEnum):
    ACCEPTED = "accepted"  # an end, recorded: its job was woken (or will be, once linked)
    DUPLICATE = "duplicate"  # an end seen before
    IGNORED = "ignored"  # progress only


def receive(services: Services, provider: str, headers: Mapping[str, str], body: bytes,
            query: Mapping[str, str] | None = None) -> Received:
    """Act on one callback request.

    Raises:
        CallbackRefused: the request is not authentic or not well formed (see
            :func:`kiln.providers.callbacks.verify`).
        RetryableError: Firestore is unavailable (the provider should send it again).
    """
    events = verify(provider, headers, body, services.settings, services.clock.now(),
                    query=query)
    outcome = Received.IGNORED
    for event in events:
        if not event.ended:
            continue
        if not services.task_index.first_seen(provider, event.event_id):
            outcome = outcome if outcome is Received.ACCEPTED else Received.DUPLICATE
            continue
        outcome = Received.ACCEPTED
        try:
            _wake(services, provider, task_key(provider, event.task_id))
        except Exception:
            # Unseen again, so the provider's retry is handled, not taken for a replay.
            with contextlib.suppress(RetryableError):
                services.task_index.forget(provider, event.event_id)
            raise
    return outcome


def _wake(services: Services, provider: str, task: str) -> None:
    job_id = services.task_index.job_for(provider, task)
    if job_id is None:
        log.event(logger, "callback before its task was linked", provider=provider)
        return
    woken = checks.wake(services, job_id, reason=f"callback-{provider}")
    log.event(logger, "callback received", provider=provider, jobId=job_id, woken=woken)
