"""The bot client and chat store of a ``Services``, built once per process.

The chat store is the Firestore adapter unless :func:`use_chat_store` gave ``services``
another (the in-memory fake, in tests).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from kiln import log
from kiln.channels.telegram.chats import ChatStore, chat_uid
from kiln.channels.telegram.client import BotClient
from kiln.core import lifecycle

if TYPE_CHECKING:  # the composition root imports this channel: no run-time import back
    from kiln.compose import Services

logger = log.get("telegram.bot")

_bots: weakref.WeakKeyDictionary[Services, BotClient] = weakref.WeakKeyDictionary()
_chats: weakref.WeakKeyDictionary[Services, ChatStore] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
#: How many of a chat's newest jobs get their reply address moved when it migrates.
MOVED_JOBS = 100


def chat_store(services: Services) -> ChatStore:
    """The chat store of ``services`` (``telegramChats`` in its Firestore, built on first use)."""
    with _lock:
        chats = _chats.get(services)
        if chats is None:
            from kiln.adapters.firestore_chats import FirestoreChatStore

            chats = _chats[services] = FirestoreChatStore(services.firestore)
        return chats


def use_chat_store(services: Services, chats: ChatStore) -> None:
    """Make ``chats`` the chat store of ``services``."""
    with _lock:
        _chats[services] = chats


def bot_for(services: Services) -> BotClient:
    """The cached Bot API client; a 403 from Telegram marks the chat blocked in Firestore,
    a migration moves the chat (``move_chat``)."""
    with _lock:
        bot = _bots.get(services)
        if bot is None:
            settings = services.settings
            bot = BotClient(settings.telegram_bot_token, settings.telegram_api_base,
                            on_blocked=lambda chat_id: chat_store(services).mark_blocked(chat_id),
                            on_migrated=lambda old, new: move_chat(services, old, new))
            _bots[services] = bot
        return bot


def move_chat(services: Services, old: int | str, new: int | str) -> None:
    """Group ``old`` became supergroup ``new``: move the chat's state, and point its jobs'
    reply address (``server.telegram.chatId``) at the new chat, forgetting the old chat's
    message ids. Idempotent."""
    moved = chat_store(services).migrate(old, new)
    jobs = services.store.find(uid=chat_uid(old), limit=MOVED_JOBS)
    for job in jobs:
        if str((job.server.telegram or {}).get("chatId")) == str(old):
            # The group's message ids name other messages in the supergroup (ids are per
            # chat): the working message and the user's are not edited or replied to there.
            services.store.apply(job.id, lifecycle.channel_state(
                "telegram", {"chatId": int(new), "statusMessageId": None, "messageId": None}))
    log.event(logger, "chat migrated to a supergroup", logging.INFO, first=moved, jobs=len(jobs))
