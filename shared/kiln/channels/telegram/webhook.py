"""``POST /telegram/webhook``: check the secret, read the update, answer at once.

Every update Telegram sends is answered 200 (unless the secret is wrong, or Firestore is
down and a retry can help), including the ones Kiln ignores, so Telegram never retries
them. The webhook never calls the Bot API (docs/telegram.md): replies ride in the webhook
answer itself (``{"method": "sendMessage", …}`` — no extra request, and a failed answer
executes nothing, so a retried update cannot reply twice). A new job's answer is a chat
action; its "working on it" message, whose id the progress edits need, is sent by the
worker that claims the job (``working``).
Everything the bot sends for a message in a forum topic goes to that topic
(``message_thread_id``, recorded with the job as ``server.telegram.threadId``).

One job per ``update_id``: the idempotency key ``tg-update:{update_id}`` maps to one job
id, and an update whose job exists already is answered without doing anything again.
What each kind of update and message does is decided in ``route`` / ``commands``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flask

from kiln import log
from kiln.channels.telegram import messages, working
from kiln.channels.telegram.bot import bot_for, chat_store, move_chat
from kiln.channels.telegram.chats import chat_uid, newest_first, owners, running_jobs
from kiln.channels.telegram.commands import (
    HINTS,
    JOB_COMMANDS,
    MALFORMED,
    decide,
    is_id,
    update_kind,
)
from kiln.core.errors import (
    OverloadedError,
    PermanentError,
    QuotaExceededError,
    RequestError,
    RetryableError,
    TransitionError,
    ValidationError,
)
from kiln.core.job import JobStatus, new_job_id
from kiln.core.requests import parse_job_request
from kiln.http.responses import error_response, json_response, read_json
from kiln.runtime import actions
from kiln.runtime.accept import accept_job
from kiln.runtime.admission import admit, plan_for

if TYPE_CHECKING:
    from kiln.channels.telegram.client import BotClient
    from kiln.compose import Services

logger = log.get("telegram.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024
STATUS_JOBS = 5
#: What the chat shows while the job waits for its worker (a Bot API chat action).
CHAT_ACTION = {"image": "upload_photo", "model": "upload_document"}
#: Seconds the webhook gives the one getMe a process makes (its answer is due in ~1 s).
USERNAME_TIMEOUT = 2.0
Reply = dict[str, Any] | None


@dataclass(frozen=True)
class Incoming:
    """The message a command came in (what replies and jobs need of it)."""

    update_id: int
    chat_id: int
    chat_type: str
    message_id: int | None
    from_id: int | None
    thread_id: int | None = None  # the forum topic the message is in

    @classmethod
    def of(cls, update_id: int, message: dict[str, Any]) -> Incoming:
        """A message ``commands.decide`` made a command of: well formed (``malformed``)."""
        topic = message.get("is_topic_message") and isinstance(message.get("message_thread_id"), int)
        return cls(update_id=update_id, chat_id=int(message["chat"]["id"]),
                   chat_type=str(message["chat"].get("type")), message_id=message.get("message_id"),
                   from_id=(message.get("from") or {}).get("id"),
                   thread_id=int(message["message_thread_id"]) if topic else None)

    @property
    def uid(self) -> str:
        return chat_uid(self.chat_id)

    def answer(self, method: str, **params: Any) -> dict[str, Any]:
        """A Bot API call carried by the webhook answer, in the message's topic."""
        call: dict[str, Any] = {"method": method, "chat_id": self.chat_id, **params}
        if self.thread_id is not None:
            call["message_thread_id"] = self.thread_id
        return call

    def reply(self, text: str) -> dict[str, Any]:
        """A sendMessage carried by the webhook answer, as a reply to the user's message."""
        answer = self.answer("sendMessage", text=text)
        if self.message_id is not None:
            answer["reply_parameters"] = {"message_id": self.message_id,
                                          "allow_sending_without_reply": True}
        return answer


def handle_update(request: flask.Request, services: Services) -> flask.Response:
    """Authenticate and handle one update; 200 for every update we accept."""
    started = time.perf_counter()
    if not _authentic(request.headers.get(SECRET_HEADER), services.settings.telegram_webhook_secret):
        return error_response(401, "unauthorized", "Unauthorized.")
    update = read_json(request, MAX_UPDATE_BYTES)
    if not isinstance(update, dict) or not is_id(update.get("update_id")):
        raise RequestError(400, "invalid_update", "The body is not a Telegram update.")
    answer = route(update, services)
    log.event(logger, "update handled", updateId=update["update_id"], type=update_kind(update),
              reply=(answer or {}).get("method"), ms=round((time.perf_counter() - started) * 1000, 1))
    return json_response(200, answer or {})


def _authentic(given: str | None, expected: str) -> bool:
    # An unset secret accepts nothing: the endpoint is public.
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def route(update: dict[str, Any], services: Services) -> Reply:
    """What to do with one update (``commands.decide``); the webhook answer or None."""
    bot = bot_for(services)
    decision = decide(update, bot_id=bot.bot_id, bot_username=lambda: _username(bot),
                      default_kind=services.settings.telegram_default_kind,
                      refusal=messages.NOTHING_FOR_SALE)
    if decision.why == MALFORMED:  # acknowledged (a retry would be no better), and logged
        log.event(logger, "malformed update ignored", logging.WARNING,
                  updateId=update["update_id"], type=update_kind(update))
    if decision.action == "answer":
        return decision.answer
    if decision.action == "blocked" and decision.chat_id is not None:
        chat_store(services).mark_blocked(decision.chat_id)
    if decision.action == "unblocked" and decision.chat_id is not None:
        chat_store(services).unblock(decision.chat_id)
    if decision.action == "migrate" and decision.migrate is not None:
        move_chat(services, *decision.migrate)
    if decision.command is None:
        return None
    command = decision.command
    incoming = Incoming.of(int(update["update_id"]), update["message"])
    if command.name in JOB_COMMANDS:
        return start_job(services, incoming, command.name, command.argument)
    # The chat's document, read once for what follows (its former ids, its noted cancels).
    state = chat_store(services).get(incoming.chat_id)
    if state.get("blocked"):  # it wrote to us: it has the bot again
        chat_store(services).unblock(incoming.chat_id)
    if command.name == "status":
        return show_status(services, incoming, state)
    if command.name == "cancel":
        return cancel_running(services, incoming, state)
    if command.name in ("help", "start"):
        return incoming.reply(messages.help_text(services.settings.telegram_default_kind))
    if command.name in HINTS:
        return incoming.reply(messages.HINTS[command.name])
    return incoming.reply(messages.unknown_command(command.typed))


def _username(bot: BotClient) -> str:
    """The bot's @username, for a command addressed to a bot (``/image@name``): one getMe
    per process, within the webhook's time (a 429 is not waited out). Either failure
    leaves the update to Telegram's retries (503), the cached name answering them.

    Raises:
        RetryableError: Telegram did not answer, asked to wait, or refused the token.
    """
    try:
        return str(bot.get_me(max_wait=0, timeout=USERNAME_TIMEOUT).get("username") or "")
    except PermanentError as exc:  # nothing can be sent with this token either
        log.event(logger, "bot token refused; the update is left to Telegram's retries",
                  logging.ERROR, code=exc.code)
        raise RetryableError("Telegram refused the bot token.", code=exc.code) from None


def start_job(services: Services, incoming: Incoming, kind: str, prompt: str) -> Reply:
    """Check the prompt and the chat's limits, say "working on it", record the job."""
    settings = services.settings
    prompt = " ".join(prompt.split())
    if not prompt:
        return incoming.reply(messages.empty_prompt(kind))
    longest = settings.prompt_max(kind)
    if len(prompt) > longest:
        return incoming.reply(messages.too_long(len(prompt), longest))
    try:
        job_request = parse_job_request({"kind": kind, "prompt": prompt})
    except ValidationError as exc:  # e.g. control characters: the message is for the user
        return incoming.reply(messages.invalid_request(exc.message))
    key = f"tg-update:{incoming.update_id}"
    job_id = new_job_id(incoming.uid, key)
    if services.store.get(job_id) is not None:
        log.event(logger, "update replayed; its job exists", updateId=incoming.update_id)
        return None
    telegram = {"chatId": incoming.chat_id, "chatType": incoming.chat_type,
                "threadId": incoming.thread_id, "messageId": incoming.message_id,
                "fromId": incoming.from_id, "updateId": incoming.update_id,
                "working": working.PENDING}
    # The same admission as every channel (the chat's plan is KILN_TELEGRAM_PLAN), deferred
    # as for POST /v1/jobs: the quota ticket is written in the job's own commit, so a
    # KilnError on the way (a 503: Telegram delivers the update again) has taken nothing.
    try:
        admission = admit(services, uid=incoming.uid, channel="telegram", plan=None,
                          defer=True)
        chat_store(services).unblock(incoming.chat_id)  # it wrote to us: it has the bot again
        accepted = accept_job(services, uid=incoming.uid, channel="telegram",
                              request=job_request, idempotency_key=key,
                              server={"telegram": telegram}, admission=admission)
    except QuotaExceededError:
        if services.store.get(job_id) is not None:
            return None  # Telegram delivered this update twice at once: the other one ran it
        plan = plan_for(services, uid=incoming.uid, channel="telegram", claimed=None)
        return incoming.reply(messages.quota_reached(plan.daily_jobs))  # (a grant's own)
    except ValidationError as exc:  # e.g. a plan of no jobs: the message is for the user
        return incoming.reply(messages.invalid_request(exc.message))
    except OverloadedError:
        return incoming.reply(messages.BUSY)
    if not accepted.created:  # a concurrent delivery of the same update won the race
        return None
    # The worker that claims the job says "working on it" (``working``); until then the
    # chat shows the bot at work, at no cost to this answer.
    return incoming.answer("sendChatAction", action=CHAT_ACTION.get(kind, "typing"))


def show_status(services: Services, incoming: Incoming, state: Mapping[str, Any]) -> Reply:
    """The chat's newest jobs (also those asked for before the group became a supergroup;
    ``state``: the chat's document)."""
    jobs = [job for uid in owners(incoming.chat_id, state)
            for job in services.store.find(uid=uid, limit=200)]
    return incoming.reply(messages.status(newest_first(jobs)[:STATUS_JOBS]))


def cancel_running(services: Services, incoming: Incoming, state: Mapping[str, Any]) -> Reply:
    """Cancel the chat's newest running job (the API's ``cancel`` transition; ``state``:
    the chat's document). The job is noted for the update first: a delivery of the same
    update again (its answer was lost) cancels that job again, not the next one."""
    chosen = (state.get("cancels") or {}).get(str(incoming.update_id))
    running = newest_first([job for uid in owners(incoming.chat_id, state)
                            for job in running_jobs(services.store, uid)])
    again = services.store.get(str(chosen)) if chosen else None
    if again is None:
        if not running:
            return incoming.reply(messages.NOTHING_TO_CANCEL)
        job = running[0]
        chat_store(services).note_cancel(incoming.chat_id, incoming.update_id, job.id)
    else:
        job = again
    if job.status is not JobStatus.CANCELED:  # (the update's first delivery canceled it)
        try:
            outcome = actions.cancel(services, job.id, by="chat")
        except TransitionError:
            outcome = None  # it ended meanwhile
        if outcome is None or not outcome.changed:
            return incoming.reply(messages.NOTHING_TO_CANCEL)
        # As the cancel read it: a "working" message recorded since the list was read is
        # edited here; one recorded after the cancel is edited by its sender.
        job = outcome.job
    text = messages.cancel_reply(job, len([j for j in running if j.id != job.id]))
    status_id = (job.server.telegram or {}).get("statusMessageId")
    if status_id and str((job.server.telegram or {}).get("chatId")) == str(incoming.chat_id):
        # One call in the answer: the "working" message itself now says it was canceled.
        return {"method": "editMessageText", "chat_id": incoming.chat_id,
                "message_id": status_id, "text": f"{messages.canceled(job)}\n{text}"}
    return incoming.reply(text)
