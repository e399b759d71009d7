"""The "working on it" message of a new job: sent beside the webhook's answer, never in it.

The webhook records the job with ``server.telegram.working = "pending"`` and hands the
message to a small thread pool of its process, so the acknowledgement never waits on the
Bot API and the message still appears within a second of the update. When the Bot API
answers, its id is recorded (``statusMessageId``, ``working = "sent"``) for the progress
edits and the result; when the call fails, ``working = "failed"`` and the worker that
takes the job sends it instead (``notifier.on_started``). The worker waits a bounded
time for a pending message before it delivers the end, and a message that arrives after
``/cancel`` is edited to say so, so no "Working on…" message is left behind
(docs/telegram.md).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from kiln import log
from kiln.channels.telegram import messages
from kiln.channels.telegram.bot import bot_for, chat_store
from kiln.channels.telegram.delivery import Address
from kiln.core import lifecycle
from kiln.core.errors import KilnError
from kiln.core.job import Job, JobStatus

if TYPE_CHECKING:
    from kiln.compose import Services

logger = log.get("telegram.working")

PENDING, SENT, FAILED = "pending", "sent", "failed"
#: The longest the worker waits for a pending "working" message (the Bot API's timeout).
WAIT_SECONDS = 12.0
#: Sends wait on the network, not the CPU: enough threads for a slow Bot API under a burst.
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="telegram-working")


def announce(services: Services, job_id: str, to: Address, text: str) -> Future[bool]:
    """Send ``text`` for ``job_id`` without waiting; True (in the future) when it was sent."""
    return _POOL.submit(send, services, job_id, to, text)


def later(services: Services, job_id: str, to: Address, text: str) -> Future[bool]:
    """Once the webhook's pending send settles: send ``text`` if it failed."""
    def run() -> bool:
        job = services.store.get(job_id)
        if job is None:
            return False
        job = settled(services, job)
        if (job.server.telegram or {}).get("working") != FAILED or job.terminal \
                or chat_store(services).is_blocked(to.chat_id):
            return False
        return send(services, job_id, to, text)

    return _POOL.submit(run)


def send(services: Services, job_id: str, to: Address, text: str) -> bool:
    """Send the "working" message now and record what happened."""
    now = time.time()
    try:
        sent = to.send(bot_for(services), text, max_wait=0)
    except KilnError as exc:  # the worker sends it instead; the result comes either way
        log.event(logger, "working message not sent", logging.WARNING, code=exc.code)
        sent = None
    try:
        if not sent:
            services.store.apply(job_id, lifecycle.channel_state("telegram", {"working": FAILED}))
            return False
        services.store.apply(job_id, lifecycle.channel_state("telegram", {
            "statusMessageId": int(sent["message_id"]), "sentAt": now, "working": SENT}))
        job = services.store.get(job_id)
        if job is not None and job.status is JobStatus.CANCELED:  # /cancel came first
            bot_for(services).edit_message_text(to.chat_id, int(sent["message_id"]),
                                                messages.canceled(job), max_wait=0)
    except KilnError as exc:
        log.event(logger, "working message not recorded", logging.WARNING, code=exc.code)
        return False
    return True


def settled(services: Services, job: Job, *, timeout: float = WAIT_SECONDS,
            poll: float = 0.2) -> Job:
    """``job`` once its pending "working" message is sent or failed (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (job.server.telegram or {}).get("working") == PENDING and time.monotonic() < deadline:
        time.sleep(poll)
        job = services.store.get(job.id) or job
    return job
