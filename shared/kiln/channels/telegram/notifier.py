"""The chat's side of a running job: progress edits, then the result or the reason.

:class:`TelegramChannel` is registered in the composition root (``kiln.compose``) and
called by ``kiln.runtime.notify`` in the worker. ``on_progress`` follows each coalesced
progress write and edits the "working on it" message — at most every ``EDIT_INTERVAL`` seconds
per job and ``CHAT_GAP`` per chat, only when the progress or stage moved, and never
while Telegram asked us to wait. The last edit is remembered in this process (seeded
from the time the "working" message was sent), not in the job document, so the edits
add no Firestore writes to the job's one-write-a-second budget.

``on_finished`` runs once per finished job: the image as a photo (a document when over
Telegram's photo limits), the model as a ``.glb`` document (a link when over the upload
limit), each streamed from Cloud Storage, then the "working" message is deleted; a
failure edits it into the reason and how to retry.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from kiln import log
from kiln.channels.telegram import messages
from kiln.channels.telegram.bot import bot_for, chat_store
from kiln.channels.telegram.client import BotBlockedError, BotClient, TelegramApiError
from kiln.core.errors import KilnError, RetryableError
from kiln.core.job import Job, JobStatus

if TYPE_CHECKING:  # the composition root imports this module: no run-time import back
    from kiln.compose import Services

logger = log.get("telegram.notifier")

MiB = 1024 * 1024
EDIT_INTERVAL = 3.0  # seconds between two edits of one job's message
CHAT_GAP = 1.0  # seconds between any two edits in one chat (~1 message/s per chat)
EDIT_TIMEOUT = 5.0  # an edit must never hold up generation for long
READ_CHUNK = 1 * MiB  # what is held of the result while it streams to Telegram
RESULT_MAX_WAIT = 30.0  # a 429 on the result itself is waited out (once) up to this


@dataclass(frozen=True)
class UploadLimits:
    """Telegram's upload limits (Bot API): photos ≤ 10 MB with width + height ≤ 10000."""

    photo_bytes: int = 10 * MiB
    photo_sides: int = 10_000
    document_bytes: int = 50 * MiB


LIMITS = UploadLimits()


class _EditThrottle:
    """When this process may edit a chat's progress message (wall-clock seconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[float, tuple[int, str]]] = {}
        self._chats: dict[int, float] = {}
        self._quiet: dict[int, float] = {}

    def permit(self, job_id: str, chat_id: int, state: tuple[int, str], seed: float,
               now: float) -> bool:
        """Take an edit slot if one is due; the caller then edits."""
        with self._lock:
            last, shown = self._jobs.get(job_id, (seed, (0, "queued")))
            if (state == shown or now - last < EDIT_INTERVAL
                    or now - self._chats.get(chat_id, 0.0) < CHAT_GAP
                    or now < self._quiet.get(chat_id, 0.0)):
                return False
            self._jobs[job_id] = (now, state)
            self._chats[chat_id] = now
            if len(self._jobs) > 10_000:  # jobs that ended elsewhere: keep memory bounded
                self._jobs = {k: v for k, v in self._jobs.items() if now - v[0] < 3600}
            return True

    def quiet(self, chat_id: int, seconds: float, now: float) -> None:
        with self._lock:
            self._quiet[chat_id] = now + seconds

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)


_THROTTLE = _EditThrottle()


class TelegramChannel:
    """The Telegram chat as a :class:`kiln.ports.Channel`: told of progress and of the end."""

    def on_progress(self, services: Services, job: Job, progress: int, stage: str) -> None:
        """Edit the "working" message if an edit is due; a refusal only delays the next one."""
        tg = telegram_state(job)
        chat_id, message_id = tg.get("chatId"), tg.get("statusMessageId")
        if chat_id is None or message_id is None:
            return
        now = time.time()
        if not _THROTTLE.permit(job.id, chat_id, (progress, stage), float(tg.get("sentAt") or 0),
                                now):
            return
        text = messages.progress_text(job.kind, job.prompt, progress, stage)
        try:
            bot_for(services).edit_message_text(chat_id, message_id, text, max_wait=0,
                                                timeout=EDIT_TIMEOUT)
        except RetryableError as exc:
            _THROTTLE.quiet(chat_id, exc.retry_after or EDIT_INTERVAL, now)
            log.event(logger, "progress edit skipped", code=exc.code, retryAfter=exc.retry_after)
        except BotBlockedError:
            _THROTTLE.quiet(chat_id, 24 * 3600, now)

    def on_finished(self, services: Services, job: Job) -> dict[str, Any]:
        """Send the result (or the failure) to the chat; return what was sent."""
        _THROTTLE.forget(job.id)
        tg = telegram_state(job)
        chat_id = tg.get("chatId")
        if chat_id is None:
            return {"skipped": "no_chat"}
        if chat_store(services).is_blocked(chat_id):
            return {"skipped": "blocked"}
        try:
            if job.status is JobStatus.COMPLETED:
                return deliver_result(services, job)
            return deliver_failure(services, job)
        except BotBlockedError:
            log.event(logger, "chat blocked the bot; nothing more is sent", logging.WARNING)
            return {"blocked": True}


def telegram_state(job: Job) -> Mapping[str, Any]:
    """The job's Telegram server state: chat, the user's message, the status message."""
    return job.server.telegram or {}


def deliver_failure(services: Services, job: Job) -> dict[str, Any]:
    """Turn the "working" message into the reason (or send it when that is gone)."""
    bot, tg = bot_for(services), telegram_state(job)
    return {"sent": "failure", "edited": _say_in_place(bot, tg, messages.failed(job))}


def _say_in_place(bot: BotClient, tg: Mapping[str, Any], text: str) -> bool:
    """Turn the "working" message into ``text``; when it is gone (or was never sent), send
    ``text`` as a reply to the user's message instead. True when the message was edited."""
    status_id = tg.get("statusMessageId")
    if status_id is not None and bot.edit_message_text(tg["chatId"], status_id, text,
                                                       max_wait=RESULT_MAX_WAIT):
        return True
    bot.send_message(tg["chatId"], text, reply_to=tg.get("messageId"), max_wait=RESULT_MAX_WAIT)
    return False


def deliver_result(services: Services, job: Job, *,
                   limits: UploadLimits = LIMITS) -> dict[str, Any]:
    """Send the result file as Telegram allows; fall back to its link if sending fails."""
    bot, tg = bot_for(services), telegram_state(job)
    result = job.result or {}
    size = int(result.get("bytes") or 0)
    if size > limits.document_bytes:
        return _send_link(bot, job, tg, size)
    try:
        with open_result(services, str(result["path"])) as reader:
            sent = _send_file(bot, job, tg, reader, size, limits)
    except BotBlockedError:
        raise
    except (KilnError, gexc.GoogleAPIError, OSError) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        log.event(logger, "result file not sent; sending its link", logging.WARNING, code=str(code))
        return _send_link(bot, job, tg, size) | {"fileError": str(code)}
    status_id = tg.get("statusMessageId")
    if status_id is not None:
        with contextlib.suppress(RetryableError):
            bot.delete_message(tg["chatId"], status_id, max_wait=RESULT_MAX_WAIT)
    return {"sent": sent, "bytes": size}


def _send_file(bot: BotClient, job: Job, tg: Mapping[str, Any], reader: IO[bytes], size: int,
               limits: UploadLimits) -> str:
    common: dict[str, Any] = {
        "caption": messages.caption(job), "reply_to": tg.get("messageId"),
        "max_wait": RESULT_MAX_WAIT,
    }
    if job.kind == "image":
        width, height = png_size(reader.read(24))
        reader.seek(0)
        name = messages.filename(job.id, job.prompt, "png")
        if size <= limits.photo_bytes and width + height <= limits.photo_sides:
            try:
                bot.send_photo(tg["chatId"], reader, filename=name, content_type="image/png",
                               **common)
                return "photo"
            except TelegramApiError as exc:  # e.g. an aspect ratio Telegram won't show
                log.event(logger, "photo refused; sending a document", reason=exc.description)
                reader.seek(0)
        bot.send_document(tg["chatId"], reader, filename=name, content_type="image/png", **common)
        return "document"
    name = messages.filename(job.id, job.prompt, "glb")
    bot.send_document(tg["chatId"], reader, filename=name, content_type="model/gltf-binary",
                      **common)
    return "document"


def _send_link(bot: BotClient, job: Job, tg: Mapping[str, Any], size: int) -> dict[str, Any]:
    url = str((job.result or {}).get("downloadUrl") or "")
    _say_in_place(bot, tg, messages.too_big_link(job, url, size))
    return {"sent": "link", "bytes": size}


@contextlib.contextmanager
def open_result(services: Services, path: str) -> Iterator[IO[bytes]]:
    """A seekable reader of the stored result that holds one ``READ_CHUNK`` at a time
    (``RetryableError`` ``storage_unavailable`` when it cannot be opened)."""
    reader = services.blobs.open(path, READ_CHUNK)
    try:
        yield reader
    finally:
        reader.close()


def png_size(header: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's first 24 bytes; (0, 0) if it is not a PNG."""
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return 0, 0
    width, height = struct.unpack(">II", header[16:24])
    return int(width), int(height)
