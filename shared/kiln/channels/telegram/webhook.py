"""``POST /telegram/webhook``: check the secret, read the update, answer within a second.

Every update Telegram sends is answered 200 (unless the secret is wrong, or Firestore is
down and a retry can help), including the ones Kiln ignores, so Telegram never retries
them. Simple replies ride in the webhook answer itself (``{"method": "sendMessage", …}``
— no extra request, and a failed answer executes nothing, so a retried update cannot
reply twice). A job is different: its "working on it" message is sent synchronously
before the job is recorded, so the job's server state (``server.telegram``) is created
once with that message's id (for the progress edits) and no second write is needed.

One job per ``update_id``: the idempotency key ``tg-update:{update_id}`` maps to one job
id, and an update whose job exists already is answered without doing anything again.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flask

from kiln import log
from kiln.channels.telegram import messages
from kiln.channels.telegram.bot import bot_for, chat_store
from kiln.channels.telegram.chats import chat_uid, newest_first, running_jobs, today
from kiln.channels.telegram.commands import JOB_COMMANDS, interpret, update_kind
from kiln.core.errors import KilnError, RequestError, TransitionError, ValidationError
from kiln.core.job import PROMPT_MAX, new_job_id
from kiln.core.requests import parse_job_request
from kiln.http.responses import error_response, json_response, read_json
from kiln.runtime import actions
from kiln.runtime.accept import accept_job

if TYPE_CHECKING:
    from kiln.compose import Services

logger = log.get("telegram.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024
STATUS_JOBS = 5
Reply = dict[str, Any] | None


@dataclass(frozen=True)
class Incoming:
    """The message a command came in (what replies and jobs need of it)."""

    update_id: int
    chat_id: int
    chat_type: str
    message_id: int | None
    from_id: int | None

    @property
    def uid(self) -> str:
        return chat_uid(self.chat_id)

    def reply(self, text: str) -> dict[str, Any]:
        """A sendMessage carried by the webhook answer, as a reply to the user's message."""
        answer: dict[str, Any] = {"method": "sendMessage", "chat_id": self.chat_id, "text": text}
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
    if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
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
    """What to do with one update; the webhook answer (a Bot API call) or None."""
    callback = update.get("callback_query")
    if isinstance(callback, dict) and callback.get("id"):
        # Kiln sends no buttons: stop the client's spinner and ignore it.
        return {"method": "answerCallbackQuery", "callback_query_id": callback["id"]}
    message = update.get("message")
    if not isinstance(message, dict) or not isinstance((message.get("chat") or {}).get("id"), int):
        return None  # edited messages, channel posts, member updates, …
    bot = bot_for(services)
    command = interpret(message, bot_id=bot.bot_id, bot_username=lambda: bot.username,
                        default_kind=services.settings.telegram_default_kind)
    if command is None:
        return None
    incoming = Incoming(
        update_id=int(update["update_id"]), chat_id=int(message["chat"]["id"]),
        chat_type=str(message["chat"].get("type")), message_id=message.get("message_id"),
        from_id=(message.get("from") or {}).get("id"),
    )
    if command.name in JOB_COMMANDS:
        return start_job(services, incoming, command.name, command.argument)
    if command.name == "status":
        return show_status(services, incoming)
    if command.name == "cancel":
        return cancel_running(services, incoming)
    if command.name in ("help", "start"):
        return incoming.reply(messages.help_text(services.settings.telegram_default_kind))
    return incoming.reply(messages.unknown_command(command.typed))


def start_job(services: Services, incoming: Incoming, kind: str, prompt: str) -> Reply:
    """Check the prompt and the chat's limits, say "working on it", record the job."""
    settings = services.settings
    prompt = " ".join(prompt.split())
    if not prompt:
        return incoming.reply(messages.empty_prompt(kind))
    if len(prompt) > PROMPT_MAX:
        return incoming.reply(messages.too_long(len(prompt)))
    try:
        job_request = parse_job_request({"kind": kind, "prompt": prompt})
    except ValidationError as exc:  # e.g. control characters: the message is for the user
        return incoming.reply(messages.invalid_request(exc.message))
    key = f"tg-update:{incoming.update_id}"
    job_id = new_job_id(incoming.uid, key)
    if services.store.get(job_id) is not None:
        log.event(logger, "update replayed; its job exists", updateId=incoming.update_id)
        return None
    chats, day = chat_store(services), today(services.clock.now())
    place = chats.reserve(incoming.chat_id, job_id=job_id, day=day,
                          quota=settings.telegram_daily_quota,
                          max_running=settings.telegram_max_running_per_chat, now=time.time())
    if place.refused == "running":
        return incoming.reply(messages.too_many_running(settings.telegram_max_running_per_chat))
    if place.refused == "quota":
        return incoming.reply(messages.quota_reached(settings.telegram_daily_quota))
    status_id = _say_working(services, incoming, kind, prompt)
    telegram = {"chatId": incoming.chat_id, "chatType": incoming.chat_type,
                "messageId": incoming.message_id, "fromId": incoming.from_id,
                "updateId": incoming.update_id, "statusMessageId": status_id,
                "sentAt": time.time() if status_id else None}
    try:
        accepted = accept_job(services, uid=incoming.uid, channel="telegram",
                              request=job_request, idempotency_key=key,
                              server={"telegram": telegram})
    except KilnError:
        _undo(services, incoming, status_id, refund=(job_id, day) if place.new else None)
        raise  # 503: Telegram retries the update
    if not accepted.created:  # a concurrent delivery of the same update won the race:
        _undo(services, incoming, status_id, refund=None)  # its job holds place and quota
    return None


def _say_working(services: Services, incoming: Incoming, kind: str, prompt: str) -> int | None:
    """Send "working on it" now (its id is stored for edits); never fails the update."""
    try:
        sent = bot_for(services).send_message(incoming.chat_id, messages.working(kind, prompt),
                                              reply_to=incoming.message_id, max_wait=0)
    except KilnError as exc:
        # A 429 or an outage must not lose the job: the result is sent as a new message.
        log.event(logger, "working message not sent", logging.WARNING, code=exc.code)
        return None
    return int(sent["message_id"]) if sent else None


def _undo(services: Services, incoming: Incoming, status_id: int | None,
          refund: tuple[str, str] | None) -> None:
    """Delete the working message of a job that was not created here; ``refund`` (job id,
    quota day) gives back the place and quota this delivery took."""
    try:
        if refund is not None:
            chat_store(services).refund(incoming.chat_id, job_id=refund[0], day=refund[1])
        if status_id is not None:
            bot_for(services).delete_message(incoming.chat_id, status_id, max_wait=0)
    except KilnError as exc:
        log.event(logger, "undo after a failed accept incomplete", logging.WARNING, code=exc.code)


def show_status(services: Services, incoming: Incoming) -> Reply:
    jobs = newest_first(services.store.find(uid=incoming.uid, limit=200))
    return incoming.reply(messages.status(jobs[:STATUS_JOBS]))


def cancel_running(services: Services, incoming: Incoming) -> Reply:
    """Cancel the chat's newest running job (the API's ``cancel`` transition)."""
    running = running_jobs(services.store, incoming.uid)
    if not running:
        return incoming.reply(messages.NOTHING_TO_CANCEL)
    job = running[0]
    try:
        outcome = actions.cancel(services, job.id, by="chat")
    except TransitionError:
        outcome = None  # it ended meanwhile
    if outcome is None or not outcome.changed:
        return incoming.reply(messages.NOTHING_TO_CANCEL)
    status_id = (job.server.telegram or {}).get("statusMessageId")
    if status_id:
        try:
            bot_for(services).edit_message_text(incoming.chat_id, status_id,
                                                messages.canceled(job), max_wait=0)
        except KilnError as exc:
            log.event(logger, "canceled message not edited", logging.WARNING, code=exc.code)
    return incoming.reply(messages.cancel_reply(job, len(running) - 1))

