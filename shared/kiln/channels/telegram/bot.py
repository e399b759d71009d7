"""The bot client and chat store of a ``Services``, built once per process."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from kiln.channels.telegram.chats import ChatStore
from kiln.channels.telegram.client import BotClient

if TYPE_CHECKING:  # the composition root imports this channel: no run-time import back
    from kiln.compose import Services

_bots: weakref.WeakKeyDictionary[Services, BotClient] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def chat_store(services: Services) -> ChatStore:
    return ChatStore(services.firestore)


def bot_for(services: Services) -> BotClient:
    """The cached Bot API client; a 403 from Telegram marks the chat blocked in Firestore."""
    with _lock:
        bot = _bots.get(services)
        if bot is None:
            settings = services.settings
            bot = BotClient(settings.telegram_bot_token, settings.telegram_api_base,
                            on_blocked=chat_store(services).mark_blocked)
            _bots[services] = bot
        return bot
