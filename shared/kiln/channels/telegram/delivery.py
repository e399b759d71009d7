"""A finished job's result (or reason) in its chat, in the topic it was asked in.

The image goes as a photo (a document when over Telegram's photo limits), the model as a
``.glb`` document, each streamed from Cloud Storage; then the "working" message is deleted
(or, if that fails, edited to say the result is below). A file Telegram refuses, or one
over the upload limit, becomes its download link, with a message that says which of the
two happened. A failure edits the "working" message into the reason and how to retry.

What is *retryable* (Telegram 5xx, timeouts, a 429 longer than we wait) is raised, so the
channel can try the whole delivery again later (``notifier``); with ``final=True`` (the
last attempt) it falls back to the link instead. A permanent refusal of the link message
falls back to the shortest message that still says the truth. How long each Bot API call
may wait is the caller's :class:`Patience`: a worker waits out a 429 of up to 30 s, the
sweeper's redelivery none, and ends each call by its send's deadline.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from kiln import log, paced
from kiln.channels.telegram import messages
from kiln.channels.telegram.bot import bot_for
from kiln.channels.telegram.client import BotBlockedError, BotClient, TelegramApiError
from kiln.core.errors import KilnError, RetryableError
from kiln.core.job import Job

if TYPE_CHECKING:
    from kiln.compose import Services

logger = log.get("telegram.delivery")

MiB = 1024 * 1024
READ_CHUNK = 1 * MiB  # what is held of the result while it streams to Telegram
RESULT_MAX_WAIT = 30.0  # a 429 on the result itself is waited out (once) up to this
#: A last attempt with a time limit keeps this much of it for the link, should the file not
#: go in the rest (one ordinary call: ``client.API_TIMEOUT``).
LINK_SECONDS = 10.0


@dataclass(frozen=True)
class UploadLimits:
    """Telegram's upload limits (Bot API): photos ≤ 10 MB with width + height ≤ 10000."""

    photo_bytes: int = 10 * MiB
    photo_sides: int = 10_000
    document_bytes: int = 50 * MiB


LIMITS = UploadLimits()


@dataclass(frozen=True)
class Patience:
    """How long a delivery's Bot API calls wait on Telegram: a 429 asking for at most
    ``max_wait`` seconds is waited out (once); ``left``, when given, says how many seconds
    the delivery still has, and each call ends within them (``BotClient.call(within=)``;
    past them a ``RetryableError``, ``telegram_timeout``)."""

    max_wait: float = RESULT_MAX_WAIT
    left: Callable[[], float] | None = None

    def call(self, *, max_wait: float | None = None) -> dict[str, Any]:
        """The keyword arguments of the next Bot API call (``max_wait`` lowers ours)."""
        wait = self.max_wait if max_wait is None else min(max_wait, self.max_wait)
        return {"max_wait": wait} | ({} if self.left is None else {"within": self.left()})

    def ending(self) -> contextlib.AbstractContextManager[None]:
        """Bound the work inside (the stored file's reads) by ``left`` as well."""
        if self.left is None:
            return contextlib.nullcontext()
        return paced.ending_by(time.monotonic() + self.left())

    def sooner(self, seconds: float) -> Patience:
        """The same, with its time ending ``seconds`` earlier (kept for what follows)."""
        left = self.left
        if left is None:
            return self
        return Patience(self.max_wait, lambda: left() - seconds)


#: The worker's delivery: a 429 of up to ``RESULT_MAX_WAIT`` is waited out; the client's
#: timeouts per call.
IN_WORKER = Patience()


@dataclass(frozen=True)
class Address:
    """Where a job's messages go: the chat, its topic, the user's message, our status message."""

    chat_id: int
    thread_id: int | None = None
    reply_to: int | None = None
    status_id: int | None = None

    @classmethod
    def of(cls, tg: Mapping[str, Any]) -> Address | None:
        if tg.get("chatId") is None:
            return None
        return cls(int(tg["chatId"]), tg.get("threadId"), tg.get("messageId"),
                   tg.get("statusMessageId"))

    def send(self, bot: BotClient, text: str, **kw: Any) -> dict[str, Any] | None:
        return bot.send_message(self.chat_id, text, reply_to=self.reply_to,
                                thread_id=self.thread_id, **kw)


def telegram_state(job: Job) -> Mapping[str, Any]:
    """The job's Telegram server state: chat, topic, the user's message, the status message."""
    return job.server.telegram or {}


def say_in_place(bot: BotClient, to: Address, text: str,
                 patience: Patience = IN_WORKER) -> bool:
    """Turn the "working" message into ``text``; when it is gone (or was never sent), send
    ``text`` as a reply in the job's topic instead. True when the message was edited."""
    if to.status_id is not None and bot.edit_message_text(to.chat_id, to.status_id, text,
                                                          **patience.call()):
        return True
    to.send(bot, text, **patience.call())
    return False


def deliver_failure(services: Services, job: Job, to: Address, *,
                    patience: Patience = IN_WORKER) -> dict[str, Any]:
    edited = say_in_place(bot_for(services), to, messages.failed(job), patience)
    return {"sent": "failure", "edited": edited}


def deliver_result(services: Services, job: Job, to: Address, *, final: bool = False,
                   limits: UploadLimits = LIMITS,
                   patience: Patience = IN_WORKER) -> dict[str, Any]:
    """Send the result file as Telegram allows; its link when it cannot be sent."""
    bot = bot_for(services)
    size = int((job.result or {}).get("bytes") or 0)
    if size > limits.document_bytes:
        text = messages.too_big_link(job, _url(job), size, limits.document_bytes)
        return _send_link(bot, job, to, text, patience) | {"bytes": size, "why": "too_big"}
    try:
        upload = patience.sooner(LINK_SECONDS) if final else patience
        with upload.ending(), open_result(services, str((job.result or {})["path"])) as reader:
            sent = _send_file(bot, job, to, reader, size, limits, upload)
    except BotBlockedError:
        raise
    except RetryableError as exc:
        if not final:
            raise  # Telegram (or Storage) is down or slow: try the file again later
        why = ("Telegram did not take it in time" if exc.code.startswith("telegram")
               else "the stored file could not be read just now")
        return _not_sent(bot, job, to, size, exc, why, patience)
    except TelegramApiError as exc:
        return _not_sent(bot, job, to, size, exc, f"Telegram refused it: {exc.description}",
                         patience)
    except (KilnError, gexc.GoogleAPIError, OSError) as exc:
        return _not_sent(bot, job, to, size, exc, "the stored file could not be read just now",
                         patience)
    _clear_status(bot, to, patience)
    return {"sent": sent, "bytes": size}


def _not_sent(bot: BotClient, job: Job, to: Address, size: int, exc: Exception,
              why: str, patience: Patience) -> dict[str, Any]:
    code = str(getattr(exc, "code", type(exc).__name__))
    log.event(logger, "result file not sent; sending its link", logging.WARNING, code=code)
    text = messages.not_sent_link(job, _url(job), why)
    return _send_link(bot, job, to, text, patience) | {"bytes": size, "fileError": code}


def _send_link(bot: BotClient, job: Job, to: Address, text: str,
               patience: Patience) -> dict[str, Any]:
    try:
        say_in_place(bot, to, text, patience)
    except TelegramApiError as exc:  # permanent: the shortest truthful message instead
        log.event(logger, "link message refused", logging.WARNING, reason=exc.description)
        say_in_place(bot, to, messages.ready_short(job, _url(job)), patience)
    return {"sent": "link"}


def _clear_status(bot: BotClient, to: Address, patience: Patience) -> None:
    """Delete the "working" message; if that fails, at least make it say "done"."""
    if to.status_id is None:
        return
    with contextlib.suppress(RetryableError, TelegramApiError):
        if bot.delete_message(to.chat_id, to.status_id, **patience.call()):
            return
    with contextlib.suppress(RetryableError, TelegramApiError):
        bot.edit_message_text(to.chat_id, to.status_id, messages.DONE_BELOW,
                              **patience.call(max_wait=0))


def _url(job: Job) -> str:
    return str((job.result or {}).get("downloadUrl") or "")


def _send_file(bot: BotClient, job: Job, to: Address, reader: IO[bytes], size: int,
               limits: UploadLimits, patience: Patience) -> str:
    common: dict[str, Any] = {"caption": messages.caption(job), "reply_to": to.reply_to,
                              "thread_id": to.thread_id}
    if job.kind == "image":
        width, height = png_size(reader.read(24))
        reader.seek(0)
        name = messages.filename(job.id, job.prompt, "png")
        if size <= limits.photo_bytes and width + height <= limits.photo_sides:
            try:
                bot.send_photo(to.chat_id, reader, filename=name, content_type="image/png",
                               **common, **patience.call())
                return "photo"
            except TelegramApiError as exc:  # e.g. an aspect ratio Telegram won't show
                log.event(logger, "photo refused; sending a document", reason=exc.description)
                reader.seek(0)
        bot.send_document(to.chat_id, reader, filename=name, content_type="image/png",
                          **common, **patience.call())
        return "document"
    name = messages.filename(job.id, job.prompt, "glb")
    bot.send_document(to.chat_id, reader, filename=name, content_type="model/gltf-binary",
                      **common, **patience.call())
    return "document"


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
