"""What a Telegram message asks for: pure parsing, no I/O.

A private chat talks to the bot with every message. In a group the bot acts only when
addressed: a command (``/image`` or ``/image@thisbot``; ``/image@otherbot`` is someone
else's), an ``@thisbot`` mention, or a reply to one of the bot's messages. Plain text
means the configured default kind. Anything else (stickers, photos, service messages)
is not for us.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

JOB_COMMANDS = ("image", "model")
COMMANDS = (*JOB_COMMANDS, "status", "cancel", "help", "start")
GROUP_TYPES = ("group", "supergroup")

_COMMAND = re.compile(
    r"^/(?P<name>[A-Za-z0-9_]{1,64})(?:@(?P<bot>[A-Za-z0-9_]{1,64}))?(?=\s|$)\s*(?P<rest>.*)$",
    re.DOTALL,
)


@dataclass(frozen=True)
class Command:
    """``name`` is one of ``COMMANDS`` or ``"unknown"``; ``argument`` is the rest, trimmed."""

    name: str
    argument: str = ""
    typed: str = ""  # the command word as sent, for "unknown command" replies


def interpret(
    message: Mapping[str, Any],
    *,
    bot_id: int | None,
    bot_username: Callable[[], str],
    default_kind: str,
) -> Command | None:
    """The command ``message`` gives this bot, or None when it is not for us.

    ``bot_username`` is called only when needed (a ``/cmd@name`` or an ``@mention``).
    """
    text = message.get("text")
    chat = message.get("chat") or {}
    chat_type = chat.get("type")
    if not isinstance(text, str) or chat_type not in ("private", *GROUP_TYPES):
        return None
    in_group = chat_type in GROUP_TYPES
    match = _COMMAND.match(text.strip())
    if match is not None:
        name, addressee = match["name"].lower(), match["bot"]
        if addressee is not None and addressee.lower() != bot_username().lower():
            return None  # another bot's command
        if name not in COMMANDS:
            # In a group an unaddressed unknown command is probably another bot's.
            if in_group and addressee is None:
                return None
            return Command("unknown", match["rest"].strip(), typed=f"/{match['name']}")
        return Command(name, match["rest"].strip(), typed=f"/{match['name']}")
    if not in_group:
        return Command(default_kind, text.strip())
    if _replies_to(message, bot_id):
        return Command(default_kind, text.strip())
    if "@" in text:
        stripped = strip_mention(text, bot_username())
        if stripped is not None:
            return Command(default_kind, stripped)
    return None


def _replies_to(message: Mapping[str, Any], bot_id: int | None) -> bool:
    replied = message.get("reply_to_message") or {}
    sender = replied.get("from") or {}
    return bot_id is not None and sender.get("id") == bot_id


def strip_mention(text: str, username: str) -> str | None:
    """``text`` without ``@username`` (any case), or None when it does not mention it."""
    if not username:
        return None
    pattern = re.compile(rf"(?<![A-Za-z0-9_])@{re.escape(username)}(?![A-Za-z0-9_])", re.IGNORECASE)
    if not pattern.search(text):
        return None
    return " ".join(pattern.sub(" ", text).split())


def update_kind(update: Mapping[str, Any]) -> str:
    """The update's type (``message``, ``edited_message``, ``callback_query``, …)."""
    return next((key for key in update if key != "update_id"), "empty")
