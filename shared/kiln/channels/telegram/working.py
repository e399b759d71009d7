"""The "working on it" message of a new job: sent by the worker that claims the job.

The webhook only records the job (``server.telegram.working = "pending"``) and answers:
it never waits on the Bot API, and it starts nothing that would run after its answer (on
Cloud Run an instance gets CPU only while it serves a request, so a thread left behind by
the webhook may not run until the next update arrives). The job's Pub/Sub message reaches
a worker within a fraction of a second; the worker that claims the job sends the message
inside its own invocation, before generating (``notifier.on_started``), and records its
id (``statusMessageId``, ``working = "sent"``) for the progress edits and the result. The
claim makes that worker the only sender, so a duplicate delivery cannot send it twice.
When Telegram refuses it (a 429 longer than ``MAX_WAIT``, an outage), ``working =
"failed"`` and the result arrives as a new reply; a 403 marks the chat blocked
(docs/telegram.md).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from kiln import log
from kiln.channels.telegram import messages
from kiln.channels.telegram.bot import bot_for
from kiln.channels.telegram.delivery import Address
from kiln.core import lifecycle
from kiln.core.errors import KilnError
from kiln.core.job import JobStatus

if TYPE_CHECKING:
    from kiln.compose import Services

logger = log.get("telegram.working")

PENDING, SENT, FAILED = "pending", "sent", "failed"
#: The longest a 429 may hold the message back (and the generation behind it).
MAX_WAIT = 5.0


def send(services: Services, job_id: str, to: Address, text: str, *,
         max_wait: float = MAX_WAIT) -> bool:
    """Send the "working" message now and record what happened; True when it was sent."""
    try:
        sent = to.send(bot_for(services), text, max_wait=max_wait)
    except KilnError as exc:  # the result comes either way, as a reply of its own
        log.event(logger, "working message not sent", logging.WARNING, code=exc.code)
        sent = None
    try:
        if not sent:
            services.store.apply(job_id, lifecycle.channel_state("telegram", {"working": FAILED}))
            return False
        services.store.apply(job_id, lifecycle.channel_state("telegram", {
            "statusMessageId": int(sent["message_id"]), "sentAt": time.time(), "working": SENT}))
        now = services.store.get(job_id)
    except KilnError as exc:
        log.event(logger, "working message not recorded", logging.WARNING, code=exc.code)
        return False
    if now is not None and now.status is JobStatus.CANCELED:
        # /cancel came while this was being sent, and found no message to edit (its
        # own reply said so): this one would say "working" for good.
        try:
            bot_for(services).edit_message_text(to.chat_id, int(sent["message_id"]),
                                                messages.canceled(now), max_wait=0)
        except KilnError as exc:
            log.event(logger, "working message of a canceled job left", logging.WARNING,
                      code=exc.code)
    return True
