"""The "working on it" message of a new job: sent beside the webhook's answer, never in it.

The webhook records the job with ``server.telegram.working = "pending"`` and hands the
message to a small thread pool of its process, so the acknowledgement never waits on the
Bot API and the message still appears within a second of the update. Exactly one sender
sends it: whoever first records its claim key while it is ``pending`` (or ``failed``)
(:func:`claim`). That is normally the ingress's thread; but a thread that runs after the
answer gets CPU on Cloud Run only while its instance serves requests, so the worker that
takes the job claims it too (``notifier.on_started``) and, if it wins, sends it inside
its own invocation. When the Bot API answers, the id is recorded (``statusMessageId``,
``working = "sent"``) for the progress edits and the result; a failed send records
``failed``, which the worker claims and sends again. The worker waits a bounded time for a
send in flight before it delivers the end, and a message that arrives after ``/cancel``
is edited to say so, so no "Working on…" message is left behind (docs/telegram.md).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from kiln import log
from kiln.channels.telegram import messages
from kiln.channels.telegram.bot import bot_for
from kiln.channels.telegram.delivery import Address
from kiln.core import lifecycle
from kiln.core.errors import KilnError
from kiln.core.job import Job, JobStatus
from kiln.core.sentinels import Increment

if TYPE_CHECKING:
    from kiln.compose import Services

logger = log.get("telegram.working")

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
#: The namespace of the claim keys in the task index (its seen-once keys).
CLAIMS = "telegram"
#: The longest the worker waits for a send in flight (the Bot API's timeout).
WAIT_SECONDS = 12.0
#: Sends wait on the network, not the CPU: enough threads for a slow Bot API under a burst.
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="telegram-working")


def announce(services: Services, job_id: str, to: Address, text: str) -> Future[bool]:
    """Send ``text`` for ``job_id`` without waiting, unless another sender claimed it;
    True (in the future) when this call sent it."""
    return _POOL.submit(send_if_claimed, services, job_id, to, text)


def send_if_claimed(services: Services, job_id: str, to: Address, text: str) -> bool:
    """Send ``text`` now if this caller wins the claim (see :func:`claim`)."""
    try:
        won = claim(services, job_id)
    except KilnError as exc:
        log.event(logger, "working message not claimed", logging.WARNING, code=exc.code)
        return False
    return won and send(services, job_id, to, text)


def claim(services: Services, job_id: str) -> bool:
    """True for the one caller that may send the message now: the job still wants it
    (``pending`` or ``failed``) and this caller recorded the claim key first. The key is a
    create-if-absent of its own (the task index's seen-once keys), not a transaction on the
    job, which the worker's claim holds at that very moment; a failed send releases it."""
    job = services.store.get(job_id)
    if job is None or job.terminal or \
            (job.server.telegram or {}).get("working") not in (PENDING, FAILED):
        return False
    if not services.task_index.first_seen(CLAIMS, _claim_key(job_id, job)):
        return False
    services.store.apply(job_id, lifecycle.channel_state("telegram", {"working": SENDING}))
    return True


def release(services: Services, job_id: str) -> None:
    """A send failed: ``failed``, and the next try's claim key is free for the next sender."""
    services.store.apply(job_id, lifecycle.channel_state(
        "telegram", {"working": FAILED, "workingTries": Increment(1)}))


def _claim_key(job_id: str, job: Job) -> str:
    # One key per try: the n-th claim after n-1 failed sends.
    return f"working:{job_id}:{int((job.server.telegram or {}).get('workingTries') or 0)}"


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
            release(services, job_id)
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
    """``job`` once no "working" message is on its way (sent, failed, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (job.server.telegram or {}).get("working") in (PENDING, SENDING) \
            and time.monotonic() < deadline:
        time.sleep(poll)
        job = services.store.get(job.id) or job
    return job
